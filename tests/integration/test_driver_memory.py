"""Nothing of the batch goes through the driver on delta-spark: a micro-batch many times larger
than ``spark.driver.maxResultSize`` is written, where the one-process writer (which collects the
batch) must fail. Both runs are real ``cdc run`` processes with their own Spark driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.envelopes import change
from tests.support.faults import cdc_run
from tests.support.kafka import produce
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORDS = 6000
"""About 4 MB of decoded rows (raw bytes kept beside the decoded structs): 4x the limit."""


@pytest.mark.parametrize(
    ("writer", "fits"),
    [("delta-spark", True), ("delta-rs", False)],
    ids=["delta-spark", "delta-rs"],
)
def test_a_batch_larger_than_max_result_size(
    fresh_kafka: str, tmp_path: Path, writer: str, fits: bool
) -> None:
    lines = [
        change(
            f"c{i % 1500}",
            "c" if i < 1500 else "u",
            1000 + i,
            email=f"user{i}@example.com",
            last="x" * 200,
        )
        for i in range(RECORDS)
    ]
    produce(fresh_kafka, "crm.contacts", lines, tmp_path)
    done = cdc_run(
        fresh_kafka,
        tmp_path,
        f"lake.writer={writer}",
        f"pipelines.crm_contacts.max_records_per_trigger={RECORDS}",
        "spark.conf={spark.driver.maxResultSize: 1m}",
        timeout=600,
    )
    lake = tmp_path / "lake"
    if fits:
        assert done.returncode == 0, done.stderr[-3000:]
        assert read_table(str(lake / "bronze" / "crm_contacts")).height == RECORDS
        silver = read_table(str(lake / "silver" / "dim_contact"))
        assert silver.filter(silver.get_column("is_current")).height == 1500
    else:
        assert done.returncode == 2
        error = [line for line in done.stderr.splitlines() if line.startswith("cdc: error: ")]
        assert len(error) == 1 and "bigger than spark.driver.maxResultSize" in error[0], error
