"""After each batch, each writer checks the SCD2 invariants of the keys the batch touched.

A real broker and Spark micro-batches on each writer: a sound run reports no violation; then
the silver table is corrupted between two runs (a second current row for a key) and the next
batch that touches the key counts the violation in its stats and logs it in one warning line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.cli import main
from cdc.config.lake import table_paths
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.queries import run_pipelines
from tests.support.envelopes import change
from tests.support.kafka import produce
from tests.support.local_settings import make_settings
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _second_current_row(spark: Any, uri: str, key: str, donor: str, writer: str) -> None:
    """Append a copy of ``key``'s current row as another current version of it.

    The copy opens at the first version of ``donor``: a real sequence (the writer decodes
    them), later than ``key``'s version and earlier than the changes produced next.
    """
    opens = ["_seq_open", "_seq_last", "valid_from"]
    if writer == "delta-spark":
        from pyspark.sql import functions as F

        table = spark.read.format("delta").load(uri)
        current = table.where(F.col("is_current") & (F.col("contact_id") == key)).collect()
        first = table.where(F.col("contact_id") == donor).orderBy("_seq_open").first()
        copy = [{**row.asDict(), **{c: first[c] for c in opens}} for row in current]
        spark.createDataFrame(copy, table.schema).write.format("delta").mode("append").save(uri)
        return
    from deltalake import write_deltalake

    table = read_table(uri)
    first = table.filter(pl.col("contact_id") == donor).sort("_seq_open").head(1)
    copy = table.filter(pl.col("is_current") & (pl.col("contact_id") == key)).with_columns(
        pl.lit(first[c].item(), dtype=table.schema[c]).alias(c) for c in opens
    )
    write_deltalake(uri, copy.to_arrow(compat_level=pl.CompatLevel.oldest()), mode="append")


@pytest.mark.parametrize("writer", WRITERS)
def test_a_corrupted_key_is_reported_by_the_next_batch_that_touches_it(
    spark: Any,
    fresh_kafka: str,
    tmp_path: Path,
    writer: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(fresh_kafka, tmp_path, f"lake.writer={writer}")
    uri = table_paths(settings, settings.pipeline("crm_contacts"))["silver"]
    produce(
        fresh_kafka,
        "crm.contacts",
        [
            change("c1", "c", 1000, email="ann@acme.io"),
            change("c2", "c", 1100, email="bob@acme.io"),
            change("c2", "u", 2000, email="bob@new.io"),
        ],
        tmp_path,
    )
    first: list[BatchStats] = []
    run_pipelines(
        spark, settings, ["crm_contacts"], True, on_batch=lambda _, stats: first.append(stats)
    )
    assert [s.invariant_violations for s in first if s.invariant_violations is not None] == [{}]

    _second_current_row(spark, uri, "c1", "c2", writer)
    assert read_table(uri).filter(pl.col("is_current") & (pl.col("contact_id") == "c1")).height == 2
    produce(
        fresh_kafka,
        "crm.contacts",
        [
            change("c1", "u", 3000, email="ann@new.io"),
            change("c2", "u", 3100, email="bob@newer.io"),
        ],
        tmp_path,
    )
    second: list[BatchStats] = []
    with caplog.at_level(logging.WARNING, logger="cdc.pipeline.batch_check"):
        run_pipelines(
            spark, settings, ["crm_contacts"], True, on_batch=lambda _, stats: second.append(stats)
        )
    [checked] = [s for s in second if s.invariant_violations is not None]
    assert checked.invariant_violations is not None
    assert checked.invariant_violations["multiple_current"] == 1
    [warning] = [r for r in caplog.records if r.name == "cdc.pipeline.batch_check"]
    message = warning.getMessage()
    assert message.startswith(f"pipeline crm_contacts batch {checked.batch_id}: ")
    assert (
        "SCD2 invariant violation(s) in the keys it touched: multiple_current 1 (contact_id=c1)"
        in message
    )
    assert "contact_id=c2" not in message  # c2 is sound
    assert warning.counts == checked.invariant_violations  # type: ignore[attr-defined]
    assert checked.phases["check"] > 0

    # The whole table, as cdc verify reads it (deletion vectors honoured: no row the MERGEs
    # replaced comes back as a duplicate): the same violations, all of key c1.
    lake = f"lake.root={tmp_path / 'lake'}"
    capsys.readouterr()
    assert main(["verify", "--pipeline", "crm_contacts", "--set", lake]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("silver/dim_contact: 6 rows, 2 keys, ")
    listed = [line.split() for line in out[1:]]
    assert {words[0] for words in listed} == set(checked.invariant_violations)
    assert {words[1].rstrip(":") for words in listed} == {"contact_id=c1"}
