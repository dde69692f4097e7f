"""`cdc demo` end to end: every count it prints equals what the generated data set implies."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import DeltaTable

from cdc.config import load_settings
from cdc.demo import run_demo
from cdc.demo_data import generate
from cdc.lake import table_paths
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_matches_the_data_set(spark: Any, tmp_path: Path) -> None:
    out = io.StringIO()
    counts = run_demo(tmp_path / "demo", seed=7, out=out)
    expected = generate(seed=7).expected
    settings = load_settings(
        "local",
        [f"lake.root={tmp_path / 'demo' / 'lake'}"],
        config_dir=REPO_ROOT / "config",
    )
    by_topic = {p.topic: p for p in settings.pipelines.values()}
    for topic, summary in expected.items():
        pipeline = by_topic[topic]
        paths = table_paths(settings, pipeline)
        bronze, quarantine, silver = (
            Path(paths[r]).name for r in ("bronze", "quarantine", "silver")
        )
        assert counts[f"bronze/{bronze}"] == summary.lines, topic
        assert counts[f"quarantine/{quarantine}"] == summary.invalid, topic
        reasons = (
            pl.from_arrow(DeltaTable(paths["quarantine"]).to_pyarrow_table())
            .group_by("error_code")
            .len()
        )
        assert dict(reasons.iter_rows()) == summary.quarantine_reasons, topic
        if pipeline.kind == "scd2":
            dim = pl.from_arrow(DeltaTable(paths["silver"]).to_pyarrow_table())
            assert counts[f"silver/{silver}"] == summary.versions, topic
            assert dim.filter(pl.col("is_current")).height == summary.current_rows, topic
            keys = list(pipeline.keys)
            # At most one current version per key, and versions of a key never overlap.
            assert dim.filter(pl.col("is_current")).select(keys).is_unique().all(), topic
            ordered = dim.sort([*keys, "_seq_open"]).with_columns(
                next_from=pl.col("valid_from").shift(-1).over(keys)
            )
            overlaps = ordered.filter(pl.col("next_from") < pl.col("valid_to"))
            assert overlaps.height == 0, topic
            assert ordered.filter(pl.col("valid_to").is_null() != pl.col("is_current")).height == 0
        else:
            assert counts[f"silver/{silver}"] == summary.distinct_event_ids, topic
    text = out.getvalue()
    assert "Rows per table" in text and "SCD2 history of contact" in text
    assert f"Quarantined: {sum(s.invalid for s in expected.values())} records" in text
