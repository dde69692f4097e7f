"""`cdc demo` end to end: every count it prints equals what the generated data set implies."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

from cdc.config.lake import table_paths
from cdc.config.settings import load_settings
from cdc.gold import GOLD_TABLES, gold_path
from cdc_demo.data import generate
from cdc_demo.run import DEMO_QUERY, run_demo
from tests.support.paths import REPO_ROOT

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

    # It ends with gold built and published, in full, to the DuckDB file beside the lake.
    path = tmp_path / "demo" / "warehouse.duckdb"
    assert f"Published to duckdb {path} (schema gold)" in text
    with duckdb.connect(str(path), read_only=True) as con:
        control = dict(
            con.execute("SELECT table_name, delta_version FROM gold._cdc_publish_state").fetchall()
        )
        answer = con.execute(DEMO_QUERY.format(schema="gold")).fetchall()
    for name in GOLD_TABLES:
        version = DeltaTable(gold_path(settings, name)).version()
        assert control[name] == version, name
        assert counts[f"warehouse/{name}"] == counts[f"gold/{name}"] > 0, name
        assert (
            f"  {name}: published version {version} in full (nothing published yet):"
            f" {counts[f'gold/{name}']} rows upserted, 0 deleted in "
        ) in text
    # The example query's answer, computed again from the gold Delta table, is printed.
    c360 = pl.from_arrow(DeltaTable(gold_path(settings, "customer_360")).to_pyarrow_table())
    top = c360.sort(["revenue_90d", "account_id"], descending=[True, False], nulls_last=True)
    expected_top = top.head(5).select("name", "region", "revenue_90d").rows()
    assert [row[:3] for row in answer] == expected_top
    printed = text.split("Top 5 accounts by revenue over the last 90 days", 1)[1]
    cells = [
        [cell.strip(" │") for cell in line.split("┆")]
        for line in printed.splitlines()
        if line.startswith("│")
    ]
    assert [(name, region) for name, region, *_ in cells[1:]] == [r[:2] for r in expected_top]
