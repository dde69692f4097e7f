"""A concurrent writer on the silver Delta table while the pipeline merges into it.

Another process (:mod:`tests.support.concurrent_writer`) keeps committing to silver during the run:
updates of a row the stream never touches and OPTIMIZE compactions that rewrite the files
the pipeline's MERGE reads. The pipeline must detect a lost commit race, recompute its MERGE
against the new table state and commit it (same app transaction), so that in the end:
silver = the clean run's rows + the other writer's row with its last committed value
(no lost update on either side), and bronze/quarantine equal the clean run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cdc.config.lake import table_paths
from tests.support.concurrent_writer import EXT_ID
from tests.support.faults import (
    PIPELINE,
    Reference,
    assert_exactly_once,
    assert_frames_equal,
    assert_same_tables,
    base_stream,
    cdc_run,
    produce,
    read_tables,
    settings,
)
from tests.support.paths import REPO_ROOT
from tests.support.tables import WRITERS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("writer", WRITERS)
def test_concurrent_writer_on_silver_is_retried_without_lost_updates(
    fresh_kafka: str, reference: Reference, tmp_path: Path, writer: str
) -> None:
    sent = produce(fresh_kafka, base_stream())
    extra = (f"lake.writer={writer}",)
    s = settings(fresh_kafka, tmp_path, *extra)
    silver = table_paths(s, s.pipeline(PIPELINE))["silver"]
    stop, result = tmp_path / "stop-writer", tmp_path / "writer.json"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.concurrent_writer",
            silver,
            str(stop),
            str(result),
            writer,
        ],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run = cdc_run(fresh_kafka, tmp_path, *extra, timeout=900)
    finally:
        stop.touch()
        _, writer_err = writer.communicate(timeout=120)
    assert writer.returncode == 0, writer_err[-3000:]
    report = json.loads(result.read_text())
    assert "error" not in report, report

    assert run.returncode == 0, f"writer: {report}\n{run.stderr[-3000:]}"
    got = read_tables(s)
    assert_exactly_once(got, sent)
    assert_same_tables(got, reference.tables, roles=("bronze", "quarantine"))
    assert got.silver is not None
    # The other writer's update survived every pipeline MERGE (and vice versa).
    theirs = got.silver.filter(pl.col("contact_id") == EXT_ID)
    assert theirs.get_column("phone").to_list() == [report["last_phone"]], report
    assert_frames_equal(
        got.silver.filter(pl.col("contact_id") != EXT_ID),
        reference.tables.silver,
        ["contact_id", "_seq_open"],
        "silver",
    )
    # The two writers really interleaved: other commits landed between pipeline merges.
    commits = _commits_with_txn(Path(silver))
    ours = sorted(v for v, txn in commits.items() if txn)
    others = [v for v, txn in commits.items() if not txn]
    assert any(ours[0] < v < ours[-1] for v in others), (ours, others, report)
    retries = run.stderr.count("retrying")
    print(f"pipeline commits {ours}, retries logged {retries}; other writer {report}")
    assert_frames_equal(got.orphans, reference.tables.orphans, ["contact_id"], "orphans")


def _commits_with_txn(table: Path) -> dict[int, bool]:
    """Per commit of the table's log, whether it carries an app transaction (the pipeline's
    writes do, whichever writer made them; the other writer's do not)."""
    commits = {}
    for path in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        commits[int(path.stem)] = any("txn" in action for action in actions)
    return commits
