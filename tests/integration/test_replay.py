"""``cdc replay`` end to end: real Kafka broker, real Spark, real Delta tables.

Each test starts from an empty cluster, so topic contents (and offsets) are exactly what it
produced.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.cli import main
from cdc.config.lake import table_paths
from cdc.config.settings import Settings
from cdc.ops.replay import ReplayPosition, replay_pipeline, run_available_now
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.checkpoint import START_FILE, TXN_BASE_FILE, committed_offsets, read_topic_id
from cdc.pipeline.checkpoint_guard import committed_txn_versions
from cdc.pipeline.queries import run_pipelines
from cdc.runtime.locks import LockHolder, lock_path
from tests.support.envelopes import T0, contact_envelope
from tests.support.kafka import high_watermarks
from tests.support.kafka import produce as produce_lines
from tests.support.local_settings import cli_args, make_settings
from tests.support.paths import CONTRACTS_PATH, REGISTRY_PATH, REPO_ROOT
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOPIC = "crm.contacts"
PIPELINE = "crm_contacts"


@pytest.fixture()
def broker(fresh_kafka: str) -> str:
    return fresh_kafka


def produce(bootstrap: str, lines: list[dict[str, Any]], tmp: Path) -> int:
    return produce_lines(bootstrap, TOPIC, lines, tmp)


def change(
    cid: str,
    op: str,
    ts: int,
    email: str = "x@acme.io",
    last: str = "Doe",
    phone: str | None = None,
    partition: int | None = None,
) -> dict[str, Any]:
    row = {
        "contact_id": cid,
        "account_id": "a1",
        "email": email,
        "first_name": "Jo",
        "last_name": last,
        "phone": phone,
        "updated_at": T0 + ts,
    }
    value = contact_envelope(
        op,
        ts,
        {**row, "email": "old@acme.io"} if op in ("u", "d") else None,
        None if op == "d" else row,
    )
    line: dict[str, Any] = {"key": {"contact_id": cid}, "value": value}
    if partition is not None:
        line["partition"] = partition
    return line


POISON = [
    {"key": {"contact_id": "p1"}, "value_b64": "bm90IGF2cm8gYXQgYWxs"},  # not Avro
    change("p3", "c", 6000, email="not-an-email"),  # rule violation
]


def read(uri: str) -> pl.DataFrame:
    return read_table(uri)  # deletion vectors honoured (delta-spark's dimensions)


def tables(settings: Settings) -> dict[str, pl.DataFrame]:
    """Bronze, quarantine and silver, sorted (an empty frame for a table not created)."""
    paths = table_paths(settings, settings.pipeline(PIPELINE))
    order = {"bronze": ["partition", "offset"], "quarantine": ["partition", "offset"]}
    return {
        role: read(uri).sort(order.get(role, ["contact_id", "_seq_open"]))
        if Path(uri, "_delta_log").is_dir()
        else pl.DataFrame()
        for role, uri in paths.items()
    }


def checkpoints_root(root: Path) -> Path:
    return root / "checkpoints"


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", WRITERS)
def test_replay_earliest_after_a_full_run_changes_nothing(
    spark: Any, broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], writer: str
) -> None:
    extra = f"lake.writer={writer}"
    lines = [
        change("c1", "c", 1000, email="ann@acme.io"),
        change("c2", "c", 1100, email="bob@acme.io"),
        change("c1", "u", 2000, email="ann@acme.io", phone="+44 1"),  # untracked only
        change("c1", "u", 3000, email="ann.new@acme.io", phone="+44 1"),
        change("c2", "d", 4000),
        {"key": {"contact_id": "c2"}, "value": None},  # tombstone
        change("c2", "c", 5000, email="bob@acme.io", last="Again"),
        change("c3", "r", 500, email="cy@acme.io"),
        *POISON,
    ]
    assert produce(broker, lines, tmp_path) == 10
    settings = make_settings(broker, tmp_path, extra)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    before = tables(settings)
    assert (before["bronze"].height, before["quarantine"].height) == (8, 2)
    old_versions = committed_txn_versions(settings, PIPELINE)
    ends = high_watermarks(broker)

    # The CLI as a user runs it (in-process: the replayed run reuses this SparkSession).
    code = main(
        ["replay", "--pipeline", PIPELINE, "--earliest", *cli_args(broker, tmp_path, extra)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    root = checkpoints_root(tmp_path)
    (replaced,) = sorted(root.glob(f"{PIPELINE}.replaced-*"))
    assert re.fullmatch(rf"{PIPELINE}\.replaced-\d{{8}}T\d{{6}}Z", replaced.name)
    assert out.strip() == (
        f"replayed {PIPELINE} from --earliest: read 10 records in 1 batch (bronze +0,"
        " quarantine +0; silver 0 inserted, 0 updated, 0 closed); previous checkpoint kept as"
        f" {replaced.name}"
    )

    after = tables(settings)
    assert after["bronze"].equals(before["bronze"])  # landed: not appended again
    assert after["quarantine"].equals(before["quarantine"])
    assert after["silver"].equals(before["silver"])  # re-applying is a no-op

    # The previous checkpoint is kept, untouched; the new one started where it was told to.
    assert committed_offsets(str(replaced)) == (0, {TOPIC: ends})
    checkpoint = root / PIPELINE
    start = json.loads((checkpoint / START_FILE).read_text())
    # What landed, read from the tables: every record of the one produce (its offsets run
    # from 0 on each partition; the transaction's commit marker follows them).
    held = pl.concat([before[t].select("partition", "offset") for t in ("bronze", "quarantine")])
    landed = {
        str(p): [[0, n]] for p, n in held.group_by("partition").len().sort("partition").iter_rows()
    }
    assert held.get_column("offset").max() == max(n for [[_, n]] in landed.values()) - 1
    assert start == {
        "startingOffsets": {TOPIC: dict.fromkeys(ends, 0)},
        "landed_ranges": landed,
        "topic_id": read_topic_id(str(replaced), TOPIC),
        "replayed_from": replaced.name,
        "requested": "--earliest",
    }
    assert start["topic_id"]
    base = 1 + max(v for v in old_versions.values() if v is not None)
    assert json.loads((checkpoint / TXN_BASE_FILE).read_text()) == {"base": base}
    committed = committed_offsets(str(checkpoint))
    assert committed is not None and committed[1] == {TOPIC: ends}
    assert lock_path(root, PIPELINE).read_text() == ""  # released

    # A replay of the replay, prepared only (--no-run), then picked up by a plain run:
    # what landed is read from the tables again, so bronze still does not grow.
    code = main(
        [
            "replay",
            "--pipeline",
            PIPELINE,
            "--offsets",
            json.dumps({TOPIC: {"0": 0}}),
            "--no-run",
            *cli_args(broker, tmp_path, extra),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"prepared {PIPELINE} to restart from --offsets")
    assert len(list(root.glob(f"{PIPELINE}.replaced-*"))) == 2
    start = json.loads((checkpoint / START_FILE).read_text())
    assert start["landed_ranges"] == landed
    # Partitions the offsets do not name resume right after their last landed record.
    resume = {p: landed[p][-1][1] if p in landed else 0 for p in ends}
    assert start["startingOffsets"] == {TOPIC: {**resume, "0": 0}}
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    again = tables(settings)
    for role in ("bronze", "quarantine", "silver"):
        assert again[role].equals(before[role]), role


@pytest.mark.parametrize("writer", WRITERS)
def test_replay_with_corrected_events_produces_the_corrected_history(
    spark: Any, broker: str, tmp_path: Path, writer: str
) -> None:
    extra = f"lake.writer={writer}"
    # Everything on partition 0, so offsets are positions in one log.
    original = [
        change("c1", "c", 1000, email="ann@acme.io", partition=0),  # 0
        change("c2", "c", 1100, email="bob@acme.io", partition=0),  # 1
        change("c1", "u", 2000, email="wrong@acme.io", partition=0),  # 2: wrong from here
        change("c2", "u", 2100, email="bob@acme.io", last="Wrong", partition=0),  # 3
        change("c1", "u", 2600, email="wrong@acme.io", phone="+44 1", partition=0),  # 4
        change("c1", "u", 3000, email="ann.new@acme.io", phone="+44 1", partition=0),  # 5
        change("c2", "u", 4000, email="bob@acme.io", last="Later", partition=0),  # 6
    ]
    produce(broker, original, tmp_path)
    settings = make_settings(broker, tmp_path, extra)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)

    # The source system re-emits corrected changes, timed inside the existing history.
    corrections = [
        change("c1", "u", 2001, email="ann.fixed@acme.io", partition=0),  # 7
        change("c2", "u", 2101, email="bob@acme.io", last="Right", partition=0),  # 8
    ]
    produce(broker, corrections, tmp_path)

    def run(s: Settings, name: str, on_batch: Callable[[str, BatchStats], None]) -> None:
        run_pipelines(spark, s, [name], available_now=True, on_batch=on_batch)

    position = ReplayPosition.from_offsets(json.dumps({TOPIC: {"0": 2}}), TOPIC)
    outcome = replay_pipeline(settings, PIPELINE, position, runner=run)
    assert [
        (p.partition, p.start, p.end, p.re_read, p.already_landed) for p in outcome.plan.partitions
    ] == [
        (0, 2, 11, 9, 5),  # offsets 7 and 10 are the commit markers of the two produces
        (1, 0, 0, 0, 0),
        (2, 0, 0, 0, 0),
    ]
    assert sum(b.input_rows for b in outcome.batches) == 7

    clean = make_settings(broker, tmp_path / "clean", extra)
    run_pipelines(spark, clean, [PIPELINE], available_now=True)
    got, want = tables(settings), tables(clean)
    # Bronze holds every record once, as a clean run over the final topic does.
    audit = ["_ingested_at", "_batch_id", "_topic_id"]
    assert got["bronze"].drop(audit).equals(want["bronze"].drop(audit))
    assert got["bronze"]["offset"].to_list() == [0, 1, 2, 3, 4, 5, 6, 8, 9]

    def history(frame: pl.DataFrame) -> list[tuple[Any, ...]]:
        cols = ["contact_id", "email", "last_name", "phone", "valid_from", "valid_to"]
        return [tuple(r) for r in frame.select(cols).iter_rows()]

    assert history(got["silver"]) == history(want["silver"])
    assert got["silver"].equals(want["silver"])


def test_dry_run_prints_the_plan_and_a_running_pipeline_refuses(
    spark: Any, broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    produce(
        broker,
        [change(f"k{i}", "c", 1000 + i, email=f"k{i}@acme.io", partition=i % 2) for i in range(5)],
        tmp_path,
    )
    settings = make_settings(broker, tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    produce(broker, [change("k9", "c", 2000, email="k9@acme.io", partition=0)] * 2, tmp_path)
    # Partition 0 holds records at 0..2 (landed) and 4..5, partition 1 at 0..1 (landed); each
    # produce's transaction ends with a commit marker (partition 0: 3 and 6, partition 1: 2).
    root = checkpoints_root(tmp_path)

    def folders() -> list[str]:
        return sorted(p.name for p in root.iterdir() if p.is_dir())

    listing = folders()
    assert listing == [PIPELINE]
    common = cli_args(broker, tmp_path)

    def cdc(*args: str) -> tuple[int, str, str]:
        code = main([*args, *common])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cdc(
        "replay", "--pipeline", PIPELINE, "--offsets", '{"crm.contacts": {"0": 1}}', "--dry-run"
    )
    assert code == 0
    assert out.splitlines() == [
        'replay crm_contacts (topic crm.contacts) from --offsets {"crm.contacts": {"0": 1}}:'
        " dry run, nothing changed",
        "topic         partition  from  to  offsets  already landed",
        "crm.contacts          0     1   7        6               2",
        "crm.contacts          1     2   3        1               0",
        "crm.contacts          2     0   0        0               0",
        "total                                    7               2",
    ]
    code, out, _ = cdc("replay", "--pipeline", PIPELINE, "--earliest", "--dry-run")
    assert code == 0
    assert out.splitlines()[2:] == [
        "crm.contacts          0     0   7        7               3",
        "crm.contacts          1     0   3        3               2",
        "crm.contacts          2     0   0        0               0",
        "total                                   10               5",
    ]
    assert folders() == listing  # nothing changed

    # Another process holds the pipeline's lock (as a running `cdc run` does).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from cdc.runtime.locks import PipelineLock\n"
            "PipelineLock(sys.argv[1], sys.argv[2]).acquire()\n"
            "time.sleep(600)\n",
            str(root),
            PIPELINE,
        ],
        cwd=REPO_ROOT,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 30
        info = None
        while time.monotonic() < deadline:
            path = lock_path(root, PIPELINE)
            info = LockHolder.from_text(path.read_text()) if path.exists() else None
            if info is not None and info.pid == holder.pid:
                break
            assert holder.poll() is None, "lock holder exited"
            time.sleep(0.05)
        assert info is not None and info.pid == holder.pid
        running = (
            f"pipeline {PIPELINE} is running (pid {info.pid} on host {info.host}"
            f" since {info.since})"
        )

        code, out, err = cdc("replay", "--pipeline", PIPELINE, "--earliest")
        assert (code, out) == (2, "")
        assert err.splitlines() == [f"cdc: error: {running}; stop it before replaying"]
        code, out, err = cdc("run", "--pipeline", PIPELINE, "--available-now")
        assert (code, out) == (2, "")
        assert err.splitlines() == [f"cdc: error: {running}; stop it before starting it again"]
        code, out, _ = cdc("replay", "--pipeline", PIPELINE, "--earliest", "--dry-run")
        assert code == 0
        assert out.splitlines()[-1] == f"note: {running}; stop it before replaying"
        assert folders() == listing
    finally:
        holder.kill()
        holder.wait(timeout=30)

    # The holder died without releasing: the kernel dropped its flock, a replay proceeds.
    code, out, err = cdc("replay", "--pipeline", PIPELINE, "--earliest", "--no-run")
    assert code == 0, err
    assert "10 offsets to re-read (5 records already in bronze/quarantine)" in out


def test_replay_of_a_pipeline_that_never_ran_starts_from_the_position(
    spark: Any, broker: str, tmp_path: Path
) -> None:
    produce(broker, [change(f"k{i}", "c", 1000 + i, partition=0) for i in range(4)], tmp_path)
    settings = make_settings(broker, tmp_path)

    def run(s: Settings, name: str, on_batch: Callable[[str, BatchStats], None]) -> None:
        run_pipelines(spark, s, [name], available_now=True, on_batch=on_batch)

    position = ReplayPosition.from_offsets(json.dumps({TOPIC: {"0": 1}}), TOPIC)
    outcome = replay_pipeline(settings, PIPELINE, position, runner=run)
    assert outcome.replaced is None and outcome.txn_base == 0
    assert outcome.summary() == (
        f'replayed {PIPELINE} from --offsets {{"crm.contacts": {{"0": 1}}}}: read 3 records'
        " in 1 batch (bronze +3, quarantine +0; silver 3 inserted, 0 updated, 0 closed);"
        " there was no previous checkpoint"
    )
    assert tables(settings)["bronze"]["offset"].to_list() == [1, 2, 3]


def test_replay_from_a_timestamp_mid_topic_uses_the_brokers_time_index(
    spark: Any, broker: str, tmp_path: Path
) -> None:
    """ListOffsets by time on the real broker: each partition restarts at its first record at
    or after the timestamp, in the middle of the topic, and re-applying changes nothing."""
    from confluent_kafka import Producer

    from cdc.runtime.kafka_admin import ensure_topic

    settings = make_settings(broker, tmp_path)
    lines = [change(f"c{i % 5}", "c" if i < 5 else "u", 1000 * i, last=f"L{i}") for i in range(40)]
    # Explicit Kafka timestamps: record i at 08:00:00 + i seconds, in partition i % 3.
    from cdc.ingest.contracts import load_contracts
    from cdc.ingest.produce import parse_lines
    from cdc.ingest.registry import FileRegistry

    contract = load_contracts(CONTRACTS_PATH)[TOPIC]
    records, errors = parse_lines(
        [json.dumps(line) for line in lines], FileRegistry.load(REGISTRY_PATH), contract
    )
    assert errors == []
    ensure_topic(broker, TOPIC, 3)
    producer = Producer({"bootstrap.servers": broker})
    base_ms = 1_767_600_000_000  # 2026-01-05T08:00:00Z
    for i, record in enumerate(records):
        producer.produce(
            TOPIC, value=record.value, key=record.key, partition=i % 3, timestamp=base_ms + 1000 * i
        )
    assert producer.flush(10) == 0
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    before = tables(settings)
    assert before["bronze"].height == 40

    position = ReplayPosition.from_timestamp("2026-01-05T08:00:25Z")
    outcome = replay_pipeline(settings, PIPELINE, position, runner=run_available_now)

    # Records 25..39 are at or after 08:00:25; per partition the first such offset.
    bronze = before["bronze"]
    expected: dict[str, int] = {}
    for p in range(3):
        part = bronze.filter(pl.col("partition") == p).sort("offset")
        stamps = part.get_column("timestamp").dt.epoch("ms").to_list()
        offsets = part.get_column("offset").to_list()
        later = [o for o, t in zip(offsets, stamps, strict=True) if t >= base_ms + 25_000]
        expected[str(p)] = later[0] if later else offsets[-1] + 1
    assert outcome.plan.starting_offsets()[TOPIC] == expected
    assert 0 < outcome.plan.re_read < 40
    assert outcome.plan.re_read == 15
    after = tables(settings)
    assert after["bronze"].equals(before["bronze"])
    assert after["silver"].equals(before["silver"])


def test_replay_diff_reports_what_a_corrective_replay_changes(
    spark: Any, broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = [
        change("c1", "c", 1000, email="ann@acme.io", partition=0),  # 0
        change("c2", "c", 1100, email="bob@acme.io", partition=0),  # 1
        change("c1", "u", 2000, email="wrong@acme.io", partition=0),  # 2
        change("c2", "u", 2100, email="bob@acme.io", last="Wrong", partition=0),  # 3
        change("c1", "u", 2600, email="wrong@acme.io", phone="+44 1", partition=0),  # 4
        change("c1", "u", 3000, email="ann.new@acme.io", phone="+44 1", partition=0),  # 5
        change("c2", "u", 4000, email="bob@acme.io", last="Later", partition=0),  # 6
    ]
    produce(broker, original, tmp_path)
    settings = make_settings(broker, tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    produce(
        broker,
        [
            change("c1", "u", 2001, email="ann.fixed@acme.io", partition=0),
            change("c2", "u", 2101, email="bob@acme.io", last="Right", partition=0),
        ],
        tmp_path,
    )
    before = tables(settings)
    checkpoint = checkpoints_root(tmp_path) / PIPELINE
    offsets_before = committed_offsets(str(checkpoint))
    replay = ["replay", "--pipeline", PIPELINE, "--offsets", json.dumps({TOPIC: {"0": 2}})]

    # c1: the version opened at 2000 now ends at the correction (2001), which opens a version
    # closed by the change at 2600, whose tracked email now differs: 2 added, 1 rewritten.
    # c2: the version at 2100 ends at 2101; the correction opens one: 1 added, 1 rewritten.
    silver_row = re.compile(
        r"^silver/dim_contact\s+6\s+9\s+0\s+3\s+0\s+2\s+0\s+4$", re.MULTILINE
    )
    assert main([*replay, "--dry-run", "--diff", *cli_args(broker, tmp_path)]) == 0
    dry = capsys.readouterr().out
    assert "dry run: replayed into a scratch copy" in dry
    assert silver_row.search(dry), dry
    assert re.search(r"^bronze/crm_contacts\s+7\s+9\s+\+2 rows$", dry, re.MULTILINE), dry
    assert "rewritten contact_id=c2 version from 2026-01-05T08:00:02.100Z" in dry
    assert "valid_to 2026-01-05T08:00:04Z -> 2026-01-05T08:00:02.101Z" in dry
    # Nothing of the pipeline changed: tables, checkpoint.
    after_dry = tables(settings)
    for role in ("bronze", "silver"):
        assert after_dry[role].equals(before[role])
    assert committed_offsets(str(checkpoint)) == offsets_before
    assert not list(checkpoints_root(tmp_path).glob(f"{PIPELINE}.replaced-*"))

    assert main([*replay, "--diff", *cli_args(broker, tmp_path)]) == 0
    real = capsys.readouterr().out
    assert "dry run" not in real
    assert silver_row.search(real), real
    assert tables(settings)["silver"].height == 9

    # A replay that changes nothing says so.
    assert main([*replay, "--diff", *cli_args(broker, tmp_path)]) == 0
    again = capsys.readouterr().out
    assert re.search(r"^silver/dim_contact\s+9\s+9\s+0\s+0\s+0\s+0\s+0\s+9$", again, re.M), again
    assert main([*replay, "--diff", "--no-run", *cli_args(broker, tmp_path)]) == 2
    assert "--diff compares the tables after the replay ran" in capsys.readouterr().err
