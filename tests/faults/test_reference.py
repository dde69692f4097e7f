"""The clean reference run itself: exactly once, and silver equals an independent SCD2 model.

Every fault test compares its tables with this run, so it must be right on its own terms.
"""

from __future__ import annotations

import pytest

from tests.support.faults import (
    PARTITIONS,
    Reference,
    assert_exactly_once,
    assert_silver_matches_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_reference_run_is_exactly_once_and_matches_the_scd2_model(reference: Reference) -> None:

    for p in range(PARTITIONS):
        offsets = sorted(x.offset for x in reference.sent if x.rec.partition == p)
        assert offsets == list(range(len(offsets))), f"partition {p}: offsets {offsets}"

    assert_exactly_once(reference.tables, reference.sent)
    assert_silver_matches_model(reference.tables.silver, reference.sent)
    bronze = reference.tables.bronze
    assert bronze is not None and bronze.get_column("_batch_id").n_unique() >= 8
