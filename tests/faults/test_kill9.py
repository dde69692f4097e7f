"""kill -9 of a real ``cdc run`` before, during and after the Delta commits of a batch.

The fault hook (``CDC_FAULT_INJECT=<stage>:<batch>``) SIGKILLs the driver at ``before-commit``
(nothing of the batch written), ``mid-commit`` (bronze and quarantine committed, silver not)
or ``after-commit`` (every table committed, Spark's commit log not).

The reference run is delta-rs's; both writers must end equal to it. On delta-rs one
checkpoint is killed six times in a row, then allowed to finish:

* batch 0: before-commit, then mid-commit (the re-run writes bronze/quarantine fresh), then
  after-commit (the re-run skips bronze/quarantine and writes silver);
* a middle batch: after-commit first (all three tables written fresh in one attempt), then
  mid-commit and before-commit while re-running a batch every table already holds.

After each kill the tables hold exactly the commits the stage promises; after the final run
they equal the clean reference run (a Spark process start costs ~10 s, so the kills share
one chain instead of one test each).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from cdc.config.settings import Settings
from tests.support.faults import (
    PIPELINE,
    Reference,
    Sent,
    assert_exactly_once,
    assert_same_tables,
    base_stream,
    batch_records,
    cdc_run,
    checkpoint_batches,
    committed_versions,
    produce,
    read_tables,
    settings,
)
from tests.support.tables import WRITERS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIDDLE_BATCH = 3
"""The base stream makes ten batches of BATCH records."""

WRITES = {
    "before-commit": (),
    "mid-commit": ("bronze", "quarantine"),
    "after-commit": ("bronze", "quarantine", "silver"),
}
KILLS = [
    ("before-commit", 0),
    ("mid-commit", 0),
    ("after-commit", 0),
    ("after-commit", MIDDLE_BATCH),
    ("mid-commit", MIDDLE_BATCH),
    ("before-commit", MIDDLE_BATCH),
]
KILLS_BY_WRITER = {
    "delta-rs": KILLS,
    # A delta-spark batch costs seconds: each stage once (during at batch 0, after and then
    # before while re-running a batch every table already holds).
    "delta-spark": [
        ("mid-commit", 0),
        ("after-commit", MIDDLE_BATCH),
        ("before-commit", MIDDLE_BATCH),
    ],
}


def assert_killed_at(
    stage: str, batch: int, written: set[str], s: Settings, sent: list[Sent]
) -> None:
    """The process died where the hook says: exactly ``written`` tables hold the batch."""
    assert batch in checkpoint_batches(s, "offsets"), f"batch {batch} was never planned"
    assert max(checkpoint_batches(s, "commits"), default=-1) == batch - 1, (
        f"{stage}:{batch}: Spark's commit log is not at batch {batch - 1}"
    )
    records = batch_records(s, batch, sent)
    has_rows = {
        "bronze": any(x.rec.reason is None for x in records),
        "quarantine": any(x.rec.reason is not None for x in records),
        # Only a tombstone right after its delete leaves silver unchanged.
        "silver": any(
            x.rec.reason is None and x.rec.event is not None and x.rec.event.op != "T"
            for x in records
        ),
    }
    for role, version in committed_versions(s).items():
        if role in written and has_rows[role]:
            assert version == batch, f"{stage}:{batch}: {role} at txn version {version}"
        else:
            assert version is None or version < batch, (
                f"{stage}:{batch}: {role} already committed txn version {version}"
            )


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("writer", WRITERS)
def test_kill_9s_before_during_after_commit_then_restart_equals_clean_run(
    fresh_kafka: str, reference: Reference, tmp_path: Path, writer: str
) -> None:
    sent = produce(fresh_kafka, base_stream())
    assert [x.coords for x in sent] == [x.coords for x in reference.sent]
    extra = (f"lake.writer={writer}",)
    s = settings(fresh_kafka, tmp_path, *extra)
    written: dict[int, set[str]] = {}
    for stage, batch in KILLS_BY_WRITER[writer]:
        crashed = cdc_run(fresh_kafka, tmp_path, *extra, fault=f"{stage}:{batch}")
        assert crashed.returncode == -signal.SIGKILL, (
            f"{stage}:{batch}: exit {crashed.returncode}\n{crashed.stderr[-3000:]}"
        )
        written.setdefault(batch, set()).update(WRITES[stage])
        assert_killed_at(stage, batch, written[batch], s, sent)

    # The rest of the stream in larger batches on delta-spark (seconds per batch): the kills
    # are behind us, and the tables do not depend on batch sizes.
    rest = (f"pipelines.{PIPELINE}.max_records_per_trigger=40",) if writer == "delta-spark" else ()
    resumed = cdc_run(fresh_kafka, tmp_path, *extra, *rest)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = read_tables(s)
    assert_exactly_once(got, sent)
    assert_same_tables(got, reference.tables)
    assert checkpoint_batches(s, "commits") == checkpoint_batches(s, "offsets")
