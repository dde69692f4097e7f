"""``cdc maintain optimize`` while a pipeline streams into the same tables loses nothing; on
the delta-spark lake it also purges the deletion vectors the MERGEs leave, and the scheduled
all-tables job works on every kind of table, gold included."""

from __future__ import annotations

import runpy
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.companions.maintenance import file_stats, maintenance_tables, optimize, vacuum
from cdc.config.settings import Settings
from cdc.pipeline.queries import run_pipelines, start_query
from cdc.store import store_for
from cdc.store.delta_spark import RETENTION_CHECK_CONF, USER_METADATA_CONF
from cdc.store.plan import read_commit_info
from tests.support.envelopes import change
from tests.support.kafka import produce
from tests.support.lake import (
    existing_tables,
    optimized_tables,
    scheduled_arguments,
    table_contents,
    write_small_lake,
)
from tests.support.local_settings import make_settings, overrides
from tests.support.paths import REPO_ROOT
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PIPELINE = "crm_contacts"
AUDIT = ["_ingested_at", "_batch_id", "_topic_id"]


def _round(r: int) -> list[dict[str, Any]]:
    """Creates, then updates of the same keys: MERGEs that close versions."""
    return [
        change(f"c{i}", "c" if r == 0 else "u", 1000 * (10 * r + i + 1), email=f"c{i}.{r}@x.io")
        for i in range(8)
    ]


def _tables(settings: Settings) -> dict[str, pl.DataFrame]:
    out = {}
    for ref in maintenance_tables(settings, PIPELINE):
        if ref.role in ("bronze", "silver") and Path(ref.uri, "_delta_log").is_dir():
            frame = read_table(ref.uri)
            frame = frame.drop([c for c in AUDIT if c in frame.columns])
            keys = ["contact_id", "valid_from"] if ref.role == "silver" else ["partition", "offset"]
            out[ref.role] = frame.sort(keys)
    return out


def test_optimize_while_the_stream_writes_loses_nothing(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(fresh_kafka, tmp_path, "spark.trigger_interval=200 ms")
    bronze = next(r.uri for r in maintenance_tables(settings, PIPELINE) if r.role == "bronze")
    produce(fresh_kafka, "crm.contacts", _round(0), tmp_path)
    query = start_query(spark, settings, PIPELINE, available_now=False)
    command = [sys.executable, "-m", "cdc.cli", "maintain", "optimize", "--table", PIPELINE]
    for item in overrides(fresh_kafka, tmp_path):
        command += ["--set", item]
    optimized = 0
    try:
        deadline = time.monotonic() + 300
        while not Path(bronze, "_delta_log").is_dir():  # the query's first batch committed
            assert query.isActive, query.exception()
            assert time.monotonic() < deadline, "the stream wrote nothing"
            time.sleep(0.3)
        for r in range(1, 6):
            produce(fresh_kafka, "crm.contacts", _round(r), tmp_path)
            # A separate process, as the scheduled job runs, while batches commit.
            done = subprocess.run(
                command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
            )
            assert done.returncode == 0, done.stderr
            optimized += done.stdout.count(" -> ")
        deadline = time.monotonic() + 300
        while not (Path(bronze, "_delta_log").is_dir() and read_table(bronze).height == 48):
            assert query.isActive, query.exception()
            assert time.monotonic() < deadline, "the stream did not land every record"
            time.sleep(0.3)
        query.processAllAvailable()
    finally:
        query.stop()
    assert optimized >= 5  # OPTIMIZE really ran against the live tables
    clean = make_settings(fresh_kafka, tmp_path / "clean")
    run_pipelines(spark, clean, [PIPELINE], available_now=True)
    got, want = _tables(settings), _tables(clean)
    assert got["bronze"].height == 48
    assert got["bronze"].equals(want["bronze"])
    assert (
        got["silver"]
        .drop("_batch_id", strict=False)
        .equals(want["silver"].drop("_batch_id", strict=False))
    )


def test_optimize_on_delta_spark_purges_deletion_vectors(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(fresh_kafka, tmp_path, "lake.writer=delta-spark")
    for r in range(2):
        # Round 0 creates eight keys; round 1 updates half of them: the MERGE marks those
        # rows deleted in the current file (a deletion vector) instead of rewriting it.
        lines = _round(r) if r == 0 else _round(r)[:4]
        produce(fresh_kafka, "crm.contacts", lines, tmp_path)
        run_pipelines(spark, settings, [PIPELINE], available_now=True)
    store = store_for("delta-spark")
    silver = next(r for r in maintenance_tables(settings, PIPELINE) if r.role == "silver")
    before = file_stats(store, silver.uri, settings.maintenance.small_file_bytes)
    assert before is not None and before.deletion_vectors > 0
    # Rows hidden by the deletion vectors are not live: counted by a query, not the stats.
    with_vectors = store.snapshot(silver.uri)
    info = store.info(silver.uri)
    assert with_vectors is not None and info is not None
    assert with_vectors.rows() == info.rows == 12
    assert sum(f.rows or 0 for f in with_vectors.files().files) > 12
    rows = _tables(settings)
    outcomes = optimize(settings, maintenance_tables(settings, PIPELINE), spark)
    assert {o.table.role for o in outcomes} >= {"bronze", "silver"}
    after = file_stats(store, silver.uri, settings.maintenance.small_file_bytes)
    assert after is not None and after.deletion_vectors == 0
    assert after.files < before.files
    assert _tables(settings)["silver"].equals(rows["silver"])
    assert _tables(settings)["bronze"].equals(rows["bronze"])
    # Maintenance commits carry the service's one commit-metadata shape too.
    since = [c for c in store.history(silver.uri) if c["version"] > with_vectors.version]
    assert {c["operation"] for c in since} <= {"OPTIMIZE", "REORG"} and since
    tagged = {"operation": "optimize", "writer": "delta-spark"}
    assert [read_commit_info(c) for c in since] == [tagged] * len(since)
    # VACUUM through Spark: a dry run counts, the real one deletes as many and says so.
    would = vacuum(settings, [silver], 0, dry_run=True, force=True, spark=spark)
    assert would[0].error is None and would[0].files > 0
    done = vacuum(settings, [silver], 0, dry_run=False, force=True, spark=spark)
    assert done[0].error is None and done[0].files == would[0].files
    ended = store.history(silver.uri, 1)[0]
    assert ended["operation"] == "VACUUM END"
    assert read_commit_info(ended) == {"operation": "vacuum", "writer": "delta-spark"}
    assert _tables(settings)["silver"].equals(rows["silver"])
    for conf in (USER_METADATA_CONF, RETENTION_CHECK_CONF):
        assert spark.conf.get(conf, None) is None  # put back as they were


def test_the_scheduled_optimize_on_a_delta_spark_lake_with_every_kind_of_table(
    spark: Any, fresh_kafka: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nightly job (``batch/maintain.py`` with the schedule's arguments, no ``--table``) on
    the delta-spark lake: bronze, quarantine, dimensions and their orphans, facts written by
    the delta-spark writer, gold by ``cdc gold build``. It used to fail on every run once gold
    existed (Z-ORDER on the partition column ``as_of_date`` of ``gold/customer_features``)."""
    extra = ("lake.writer=delta-spark",)
    settings = make_settings(fresh_kafka, tmp_path, *extra)
    write_small_lake(settings, spark)
    sets = [
        item for setting in overrides(fresh_kafka, tmp_path, *extra) for item in ("--set", setting)
    ]
    built = subprocess.run(
        [sys.executable, "batch/gold_build.py", *sets],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    refs = existing_tables(settings)
    assert {r.role for r in refs} == {"bronze", "quarantine", "silver", "orphans", "gold"}
    assert len([r for r in refs if r.role == "gold"]) == 4
    store = store_for("delta-spark")
    small = settings.maintenance.small_file_bytes
    dimension = next(r for r in refs if r.name == "silver/dim_contact")
    before_files = file_stats(store, dimension.uri, small)
    assert before_files is not None
    before = table_contents(settings)

    # The entry point as the ScheduledSparkApplication runs it (in this process: its
    # session is the one spark-submit would give it).
    argv = ["batch/maintain.py", *scheduled_arguments("optimize"), *sets]
    with pytest.raises(SystemExit) as done, _argv(argv):
        runpy.run_path(str(REPO_ROOT / "batch" / "maintain.py"), run_name="__main__")
    captured = capsys.readouterr()
    assert done.value.code == 0, captured.err
    by_table = optimized_tables(captured.out, refs)
    assert "ZORDER BY (account_id) in " in by_table["gold/customer_features"]
    assert "ZORDER BY (contact_id) in " in by_table["silver/dim_contact"]
    assert "ZORDER" not in by_table["silver/_orphans_dim_contact"]
    after = table_contents(settings)
    for name, rows in before.items():
        assert after[name].equals(rows), name
    after_files = file_stats(store, dimension.uri, small)
    assert after_files is not None and after_files.deletion_vectors == 0


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved
