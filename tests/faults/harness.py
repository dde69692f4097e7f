"""Harness of the fault suite: a deterministic CRM contact stream, a real ``cdc run`` process,
table snapshots and the comparisons every fault test ends with.

The stream is produced record by record with explicit partitions and Kafka timestamps (equal
to the change's source commit time), so the same stream lands at the same partition/offset
with the same timestamp on any fresh broker: one clean reference run serves every test.

What "0 lost, 0 duplicated" means here (:func:`assert_exactly_once`): every produced record
is in exactly one of bronze (valid) or quarantine (with its expected reason), with its raw
bytes, and no Kafka record appears twice in either table.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

import polars as pl
from polars.testing import assert_frame_equal

from cdc.config import Settings, load_settings
from cdc.faults import FAULT_ENV
from cdc.lake import orphans_path, table_paths, txn_app_id
from cdc.produce import encode_datum
from cdc.registry import FileRegistry, RegisteredSchema
from tests.conftest import REGISTRY_PATH, REPO_ROOT
from tests.support.envelopes import T0, contact_envelope
from tests.support.tables import read_table

__all__ = [
    "BATCH",
    "BUSINESS",
    "PARTITIONS",
    "PIPELINE",
    "T0",
    "TOPIC",
    "VALUE_SUBJECT",
    "Event",
    "Rec",
    "Sent",
    "StreamBuilder",
    "Tables",
    "assert_exactly_once",
    "assert_frames_equal",
    "assert_same_tables",
    "assert_silver_matches_model",
    "base_builder",
    "base_stream",
    "batch_records",
    "cdc_replay",
    "cdc_run",
    "checkpoint_batches",
    "committed_position",
    "committed_versions",
    "coordinate_map",
    "create_topic",
    "end_offsets",
    "envelope",
    "key_bytes",
    "model_silver",
    "partition_of",
    "produce",
    "read_tables",
    "reencode",
    "register",
    "registry",
    "remap_rows",
    "remap_silver",
    "settings",
    "start_cdc_run",
    "value_bytes",
    "wait_until",
    "writer_schema",
]

TOPIC = "crm.contacts"
PIPELINE = "crm_contacts"
PARTITIONS = 3
BATCH = 4
"""``maxRecordsPerTrigger`` of the reference run and the faulted runs: several batches."""
KEY_SUBJECT = "crm.contacts-key"
VALUE_SUBJECT = "crm.contacts-value"
BUSINESS = (
    "account_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "updated_at",
    "marketing_opt_in",
    "job_title",
)
"""Non-key columns of ``after`` in the reader schema (crm.contacts-value latest)."""
UNTRACKED = ("updated_at", "phone")  # config/local.yaml: track_history_except
AUDIT = ("_ingested_at", "_quarantined_at", "_batch_id", "_topic_id")
BRONZE_ORDER = ["partition", "offset"]
SILVER_ORDER = ["contact_id", "_seq_open"]


# --------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class Event:
    """What a valid record means for silver: an upsert (U), a delete (D) or a tombstone (T)."""

    cid: str
    op: Literal["U", "D", "T"]
    row: dict[str, Any] | None = None


@dataclass(frozen=True)
class Rec:
    """One Kafka record to produce.

    Attributes:
        rid: stable identity across streams (a re-encoded record keeps it).
        partition: explicit partition (a key always goes to the same one).
        ts: Kafka timestamp, epoch ms; equal to the source commit time of an envelope.
        key: raw key bytes (None: no key).
        value: raw value bytes (None: tombstone).
        reason: the expected quarantine reason code, or None for a valid record.
        event: for a valid record, its meaning for silver.
        datum: the envelope it encodes (to re-encode it with another writer schema).
    """

    rid: str
    partition: int
    ts: int
    key: bytes | None
    value: bytes | None
    reason: str | None = None
    event: Event | None = None
    datum: dict[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Sent:
    """A produced record and the offset the broker gave it."""

    rec: Rec
    offset: int

    @property
    def coords(self) -> tuple[int, int]:
        return (self.rec.partition, self.offset)

    @property
    def identity(self) -> tuple[int, int, int]:
        """(partition, offset, timestamp): unique even across a broker that lost its data."""
        return (self.rec.partition, self.offset, self.rec.ts)


@cache
def registry() -> FileRegistry:
    return FileRegistry.load(REGISTRY_PATH)


def key_bytes(cid: str) -> bytes:
    return encode_datum(registry().latest(KEY_SUBJECT), {"contact_id": cid}, root="key")


def value_bytes(datum: dict[str, Any], schema: RegisteredSchema | None = None) -> bytes:
    return encode_datum(schema or registry().latest(VALUE_SUBJECT), datum)


def partition_of(cid: str) -> int:
    return int(cid[1:]) % PARTITIONS


def envelope(
    op: str, ts: int, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> dict[str, Any]:
    """:func:`contact_envelope` at source time ``ts`` (epoch ms); a read (``r``) is a snapshot."""
    return contact_envelope(op, ts - T0, before, after, snapshot=op == "r")


class StreamBuilder:
    """Builds a contact change stream in time order; keeps each key's current row."""

    def __init__(self, start_ts: int = T0, prefix: str = "e") -> None:
        self.recs: list[Rec] = []
        self.state: dict[str, dict[str, Any]] = {}
        self._ts = start_ts
        self._prefix = prefix

    def continue_as(self, prefix: str) -> StreamBuilder:
        """Start a new batch of records (ids ``<prefix>NNN``) after this one, same key states."""
        follow = StreamBuilder(self._ts, prefix)
        follow.state = copy.deepcopy(self.state)
        return follow

    def _next(self) -> tuple[str, int]:
        self._ts += 10
        return f"{self._prefix}{len(self.recs):03d}", self._ts

    def _add_envelope(self, rid: str, ts: int, cid: str, datum: dict[str, Any], **rec: Any) -> Rec:
        """Append the record of a contact envelope (``rec``: its event or reason)."""
        made = Rec(
            rid, partition_of(cid), ts, key_bytes(cid), value_bytes(datum), datum=datum, **rec
        )
        self.recs.append(made)
        return made

    def upsert(self, cid: str, op: Literal["c", "u", "r"] = "u", **changes: Any) -> Rec:
        """A create/update/snapshot read; ``changes`` are ``after`` columns."""
        rid, ts = self._next()
        previous = self.state.get(cid)
        base = previous or {
            "contact_id": cid,
            "account_id": "a1",
            "email": f"{cid}@acme.io",
            "first_name": "Jo",
            "last_name": "Doe",
            "phone": None,
            "marketing_opt_in": False,
            "job_title": None,
        }
        after = {**base, **changes, "updated_at": ts}
        datum = envelope(op, ts, previous if op == "u" else None, after)
        self.state[cid] = after
        return self._add_envelope(rid, ts, cid, datum, event=Event(cid, "U", after))

    def delete(self, cid: str) -> Rec:
        rid, ts = self._next()
        datum = envelope("d", ts, self.state.pop(cid), None)
        return self._add_envelope(rid, ts, cid, datum, event=Event(cid, "D"))

    def tombstone(self, cid: str) -> Rec:
        rid, ts = self._next()
        self.state.pop(cid, None)
        rec = Rec(rid, partition_of(cid), ts, key_bytes(cid), None, event=Event(cid, "T"))
        self.recs.append(rec)
        return rec

    def rule_violation(self, cid: str, email: str) -> Rec:
        """A well-formed create whose email breaks the contract (never reaches silver)."""
        rid, ts = self._next()
        after = {**(self.state.get(cid) or {}), "contact_id": cid, "account_id": "a9"}
        after.update(email=email, first_name="Bad", last_name="Row", updated_at=ts)
        after.setdefault("phone", None)
        datum = envelope("c", ts, None, after)
        return self._add_envelope(rid, ts, cid, datum, reason="rule_violation")

    def raw(
        self, cid: str, key: bytes | None, value: bytes | None, reason: str, name: str = "raw"
    ) -> Rec:
        """A record with exact bytes that must be quarantined with ``reason``."""
        _, ts = self._next()
        rec = Rec(f"{name}-{len(self.recs):03d}", partition_of(cid), ts, key, value, reason)
        self.recs.append(rec)
        return rec


def base_stream() -> list[Rec]:
    """The clean CRM contact stream: :func:`base_builder`'s records."""
    return base_builder().recs


def base_builder() -> StreamBuilder:
    """The builder after the clean CRM contact stream (37 records over 3 partitions).

    Inserts and snapshot reads of 12 contacts, untracked updates (phone), tracked updates
    (email, last name), deletes each followed by its tombstone, re-inserts after a delete, a
    delete by tombstone alone, and three records that belong in quarantine (two contract
    violations, one non-Avro payload).
    """
    b = StreamBuilder()
    for i in range(12):
        cid = f"c{i:02d}"
        b.upsert(
            cid,
            "r" if i < 3 else "c",
            email=f"user{i}@acme.io",
            account_id=f"a{i % 4}",
            marketing_opt_in=i % 5 == 0,
            job_title="CTO" if i == 4 else None,
        )
        if i == 3:
            b.rule_violation("x90", "not-an-email")
        if i == 7:
            b.raw("x91", key_bytes("x91"), b"\x7bnot avro\x7d", "not_framed", name="garbage")
    for i in (0, 2, 4, 6, 8, 10):
        b.upsert(f"c{i:02d}", phone=f"+44 20 7946 00{i:02d}")  # untracked: in place
    for i in (0, 3, 6, 9):
        b.upsert(f"c{i:02d}", email=f"user{i}.new@acme.io")  # tracked: new version
    for i in (1, 5, 9):
        b.delete(f"c{i:02d}")
        b.tombstone(f"c{i:02d}")
    b.upsert("c01", "c", email="user1@acme.io", last_name="Again")  # re-insert
    b.upsert("c09", "c", email="user9.back@acme.io", last_name="Back")
    b.tombstone("c10")  # a delete by tombstone alone (log compaction style)
    b.upsert("c00", last_name="Smith")  # tracked
    b.rule_violation("c04", "")  # an existing key: must not touch its silver rows
    return b


# --------------------------------------------------------------------------- producing


def create_topic(bootstrap: str) -> None:
    """Create :data:`TOPIC` unless it exists, and keep its records whatever their age.

    The stream's timestamps (source commit times from :data:`T0` on) lie months before the
    broker's clock; under Kafka's default time retention (7 days) the broker's periodic
    retention check would delete them mid-test (the partitions' earliest offset jumping to
    their end), so the topic gets ``retention.ms=-1``.
    """
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    from cdc.kafka_admin import ensure_topic

    ensure_topic(bootstrap, TOPIC, PARTITIONS)
    keep = ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, TOPIC, incremental_configs=[keep])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def produce(bootstrap: str, recs: Sequence[Rec]) -> list[Sent]:
    """Send records in order, each with its partition and timestamp; return their offsets.

    The idempotent producer keeps each partition's records in the order given (even across
    retries), so a stream lands at the same offsets on any empty topic.
    """
    from confluent_kafka import Producer

    create_topic(bootstrap)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    reports: list[dict[str, Any]] = []
    for rec in recs:
        report: dict[str, Any] = {}

        def delivered(err: Any, msg: Any, report: dict[str, Any] = report) -> None:
            report["error"], report["offset"] = err, msg.offset()

        producer.produce(
            TOPIC,
            key=rec.key,
            value=rec.value,
            partition=rec.partition,
            timestamp=rec.ts,
            on_delivery=delivered,
        )
        reports.append(report)
    assert producer.flush(30) == 0, "records not delivered within 30 s"
    sent: list[Sent] = []
    for rec, report in zip(recs, reports, strict=True):
        assert report["error"] is None, f"{rec.rid}: {report['error']}"
        sent.append(Sent(rec, int(report["offset"])))
    return sent


# --------------------------------------------------------------------------- running


def overrides(bootstrap: str, root: Path, *extra: str) -> list[str]:
    return [
        f"kafka.bootstrap_servers={bootstrap}",
        f"lake.root={root / 'lake'}",
        f"checkpoints.root={root / 'checkpoints'}",
        f"pipelines.{PIPELINE}.max_records_per_trigger={BATCH}",
        *extra,
    ]


def settings(bootstrap: str, root: Path, *extra: str) -> Settings:
    """The settings a ``cdc run`` with :func:`overrides` uses (for in-process runs, paths)."""
    return load_settings(
        "local",
        overrides=overrides(bootstrap, root, *extra),
        config_dir=REPO_ROOT / "config",
        environ=_hermetic_env(),
    )


def _hermetic_env() -> dict[str, str]:
    """The environment without CDC_* overrides leaking in from the shell running the tests."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}


def _cdc(command: Sequence[str], bootstrap: str, root: Path, extra: Sequence[str]) -> list[str]:
    """``python -m cdc.cli <command> --pipeline crm_contacts ... --set ...``."""
    args = [sys.executable, "-m", "cdc.cli", *command, "--pipeline", PIPELINE]
    for item in overrides(bootstrap, root, *extra):
        args += ["--set", item]
    return args


def _run_env(fault: str | None) -> dict[str, str]:
    env = _hermetic_env()
    if fault is not None:
        env[FAULT_ENV] = fault
    return env


def cdc_run(
    bootstrap: str,
    root: Path,
    *extra: str,
    fault: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``python -m cdc.cli run --pipeline crm_contacts --available-now --set ...``.

    Args:
        bootstrap: the broker.
        root: lake and checkpoints go under it.
        *extra: more ``--set`` overrides.
        fault: ``$CDC_FAULT_INJECT`` (``<stage>:<batch>``), or None.
        timeout: seconds before the run is killed (a hang is a failure).
    """
    return subprocess.run(
        _cdc(["run", "--available-now"], bootstrap, root, extra),
        capture_output=True,
        text=True,
        env=_run_env(fault),
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def start_cdc_run(bootstrap: str, root: Path, output: Path, *extra: str) -> subprocess.Popen[str]:
    """:func:`cdc_run` in the background; stdout and stderr go to the file ``output``.

    The caller waits for it (``wait(timeout=...)``) and reads ``output`` afterwards.
    """
    with output.open("w") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            _cdc(["run", "--available-now"], bootstrap, root, extra),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=_run_env(None),
            cwd=REPO_ROOT,
        )


def cdc_replay(
    bootstrap: str, root: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m cdc.cli replay --pipeline crm_contacts <args> --set ...`` (same overrides)."""
    return subprocess.run(
        [*_cdc(["replay"], bootstrap, root, ()), *args],
        capture_output=True,
        text=True,
        env=_run_env(None),
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def assert_one_error(run: subprocess.CompletedProcess[str]) -> str:
    """Exit code 2, exactly one ``cdc: error:`` line on stderr and no Python or Java trace;
    returns the line."""
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert not re.search(r"^\s+at [\w$.]+\(", run.stderr, re.M), "a Java stack trace"
    return errors[0]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.05)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Tables:
    """A snapshot of a pipeline's three tables (None: the table does not exist)."""

    bronze: pl.DataFrame | None
    quarantine: pl.DataFrame | None
    silver: pl.DataFrame | None
    orphans: pl.DataFrame | None = None
    """Side table of SCD2: keys without rows whose deletes were seen (out-of-order deletes)."""
    versions: dict[str, int | None] = field(default_factory=dict)

    def get(self, role: str) -> pl.DataFrame | None:
        frame: pl.DataFrame | None = getattr(self, role)
        return frame


def read_tables(s: Settings) -> Tables:
    """The pipeline's tables as they are now, whichever writer wrote them."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    frames: dict[str, pl.DataFrame | None] = {}
    versions: dict[str, int | None] = {}
    pipeline = s.pipeline(PIPELINE)
    uris = {**table_paths(s, pipeline), "orphans": orphans_path(s, pipeline)}
    for role, uri in uris.items():
        try:
            version = DeltaTable(uri).version()
        except TableNotFoundError:
            frames[role], versions[role] = None, None
            continue
        # Through a query: delta-spark's dimensions carry deletion vectors.
        frames[role], versions[role] = read_table(uri), version
    return Tables(
        frames["bronze"], frames["quarantine"], frames["silver"], frames["orphans"], versions
    )


def committed_versions(s: Settings) -> dict[str, int | None]:
    """Per table, the last app-transaction version (batch id) the pipeline committed."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    found: dict[str, int | None] = {}
    for role, uri in table_paths(s, s.pipeline(PIPELINE)).items():
        try:
            table = DeltaTable(uri)
        except TableNotFoundError:
            found[role] = None
            continue
        found[role] = table.transaction_version(txn_app_id(PIPELINE, role, uri))
    return found


def checkpoint_batches(s: Settings, log: Literal["offsets", "commits"]) -> set[int]:
    folder = Path(s.checkpoint_path(PIPELINE)) / log
    if not folder.is_dir():
        return set()
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}


def committed_position(s: Settings) -> dict[int, int]:
    """Per partition, the next offset after the last committed batch ({} before any)."""
    from cdc.checkpoint import committed_offsets

    committed = committed_offsets(s.checkpoint_path(PIPELINE))
    if committed is None:
        return {}
    return {int(p): int(o) for p, o in committed[1].get(TOPIC, {}).items()}


def end_offsets(sent: Sequence[Sent]) -> dict[int, int]:
    """Per partition, the next offset after the records produced."""
    end: dict[int, int] = {}
    for x in sent:
        end[x.rec.partition] = max(end.get(x.rec.partition, 0), x.offset + 1)
    return end


def _batch_end(s: Settings, batch: int) -> dict[int, int]:
    text = (Path(s.checkpoint_path(PIPELINE)) / "offsets" / str(batch)).read_text()
    offsets = json.loads(text.strip().splitlines()[-1])[TOPIC]
    return {int(p): int(o) for p, o in offsets.items()}


def batch_records(s: Settings, batch: int, sent: Sequence[Sent]) -> list[Sent]:
    """The records of micro-batch ``batch``, from Spark's offsets log (fresh topic: from 0)."""
    start = _batch_end(s, batch - 1) if batch > 0 else {}
    end = _batch_end(s, batch)
    return [
        x for x in sent if start.get(x.rec.partition, 0) <= x.offset < end.get(x.rec.partition, 0)
    ]


# --------------------------------------------------------------------------- checks


def _epoch_ms(frame: pl.DataFrame) -> list[int]:
    return frame.get_column("timestamp").dt.epoch("ms").to_list()


def assert_exactly_once(tables: Tables, sent: Sequence[Sent], single_epoch: bool = True) -> None:
    """0 lost, 0 duplicated: each record once in bronze xor quarantine, reason and bytes right.

    Args:
        tables: the pipeline's tables.
        sent: every record produced (in every broker epoch).
        single_epoch: the broker kept its data, so (partition, offset) identifies a record;
            after a broker lost its data offsets restart and (partition, offset, timestamp)
            does.
    """
    found: dict[str, dict[tuple[int, int, int], dict[str, Any]]] = {}
    for role in ("bronze", "quarantine"):
        frame = tables.get(role)
        rows: dict[tuple[int, int, int], dict[str, Any]] = {}
        if frame is not None:
            assert set(frame.get_column("topic").unique().to_list()) <= {TOPIC}
            coords = list(
                zip(
                    frame.get_column("partition").to_list(),
                    frame.get_column("offset").to_list(),
                    _epoch_ms(frame),
                    strict=True,
                )
            )
            twice = sorted({c for c in coords if coords.count(c) > 1})
            assert not twice, f"{role}: records appear more than once: {twice}"
            if single_epoch:
                pairs = [c[:2] for c in coords]
                assert len(set(pairs)) == len(pairs), f"{role}: a (partition, offset) repeats"
            for c, row in zip(coords, frame.iter_rows(named=True), strict=True):
                rows[c] = row
        found[role] = rows
    both = sorted(set(found["bronze"]) & set(found["quarantine"]))
    assert not both, f"records in both bronze and quarantine: {both}"
    expected_valid = {x.identity: x for x in sent if x.rec.reason is None}
    expected_bad = {x.identity: x for x in sent if x.rec.reason is not None}
    lost = sorted(set(expected_valid) - set(found["bronze"]))
    lost_bad = sorted(set(expected_bad) - set(found["quarantine"]))
    assert not lost, f"valid records missing from bronze: {lost}"
    assert not lost_bad, f"bad records missing from quarantine: {lost_bad}"
    extra = sorted((set(found["bronze"]) | set(found["quarantine"])) - {x.identity for x in sent})
    assert not extra, f"rows for records never produced: {extra}"
    wrong_side = sorted(set(found["bronze"]) - set(expected_valid))
    assert not wrong_side, "bad records in bronze: " + "; ".join(
        f"{c} ({expected_bad[c].rec.rid}, expected {expected_bad[c].rec.reason})"
        for c in wrong_side
    )
    for role, expected in (("bronze", expected_valid), ("quarantine", expected_bad)):
        for ident, x in expected.items():
            row = found[role][ident]
            assert (row["key_raw"], row["value_raw"]) == (x.rec.key, x.rec.value), (
                f"{role} {ident} ({x.rec.rid}): raw bytes differ from what was produced"
            )
            if role == "quarantine":
                assert row["error_code"] == x.rec.reason, (
                    f"{x.rec.rid} at {ident}: quarantined as {row['error_code']!r} "
                    f"({row['error']}), expected {x.rec.reason!r}"
                )


def assert_frames_equal(
    got: pl.DataFrame | None, want: pl.DataFrame | None, order: list[str], what: str
) -> None:
    """Equal after sorting by ``order`` (exact types and values, columns in any order)."""
    if want is None or got is None:
        assert got is None and want is None, f"{what}: one table is missing"
        return
    assert sorted(got.columns) == sorted(want.columns), f"{what}: columns differ"
    got = got.select(want.columns).sort(order)
    want = want.sort(order)
    assert got.height == want.height, f"{what}: {got.height} rows, expected {want.height}"
    assert_frame_equal(got, want, check_exact=True)


def _drop_audit(frame: pl.DataFrame | None) -> pl.DataFrame | None:
    return None if frame is None else frame.drop([c for c in AUDIT if c in frame.columns])


def assert_same_tables(got: Tables, want: Tables, roles: Iterable[str] = ()) -> None:
    """Bronze (by partition/offset), quarantine (likewise), silver (by key + _seq_open) and
    the orphan-delete table equal, every column except ingestion time and batch id."""
    for role in roles or ("bronze", "quarantine", "silver", "orphans"):
        order = {"silver": SILVER_ORDER, "orphans": ["contact_id"]}.get(role, BRONZE_ORDER)
        assert_frames_equal(_drop_audit(got.get(role)), _drop_audit(want.get(role)), order, role)


Coords = tuple[int, int]


def coordinate_map(run: Sequence[Sent], ref: Sequence[Sent]) -> dict[Coords, Coords]:
    """Where each record of ``run`` sits in ``ref`` (matched by record id)."""
    where = {x.rec.rid: x.coords for x in ref}
    return {x.coords: where[x.rec.rid] for x in run if x.rec.rid in where}


def remap_rows(frame: pl.DataFrame, mapping: dict[Coords, Coords]) -> pl.DataFrame:
    """Rows of bronze/quarantine whose record is in ``mapping``, moved to the mapped offsets."""
    table = pl.DataFrame(
        {
            "partition": [k[0] for k in mapping],
            "offset": [k[1] for k in mapping],
            "__p": [v[0] for v in mapping.values()],
            "__o": [v[1] for v in mapping.values()],
        },
        schema_overrides={"partition": frame.schema["partition"], "offset": pl.Int64},
    )
    joined = frame.join(table, on=["partition", "offset"], how="inner")
    return joined.with_columns(
        pl.col("__p").cast(frame.schema["partition"]).alias("partition"),
        pl.col("__o").cast(frame.schema["offset"]).alias("offset"),
    ).select(frame.columns)


Position = tuple[int | None, int | None, int | None]
"""A PostgreSQL change's source position as the pipelines order it: ``(lsn, txId, -)``."""
NO_POSITION: Position = (None, None, None)


def _seq(t: int, coords: Coords, position: Position = NO_POSITION) -> str:
    """The sequence string of docs/scd2.md: position fields (numbers with the sign bit
    flipped, 20 digits; null as zeros), then time, partition and offset."""
    fields = "".join(("0" * 20 if v is None else f"{v + 2**63:020d}") + "." for v in position)
    return f"{fields}{t:015d}.{coords[0]:06d}.{coords[1]:019d}"


def _sort_position(position: Position) -> tuple[float, ...]:
    return tuple(float("-inf") if v is None else v for v in position)


def remap_silver(frame: pl.DataFrame, mapping: dict[Coords, Coords]) -> pl.DataFrame:
    """Silver with every Kafka position (sequences, lineage) moved to the mapped offsets."""

    def where(row: dict[str, Any], coords: Coords) -> Coords:
        if coords not in mapping:
            raise AssertionError(
                f"silver row {row['contact_id']} {row['_seq_open']} refers to the record at "
                f"partition/offset {coords}, which the clean run has no counterpart of "
                f"(a duplicate delivery or a record that belongs in quarantine)"
            )
        return mapping[coords]

    sequences = [c for c in frame.columns if c.startswith("_seq_")]
    rows = frame.to_dicts()
    for row in rows:
        moved = {}
        for col in sequences:
            if row[col] is not None:
                *fields, t, p, o = row[col].split(".")
                to = where(row, (int(p), int(o)))
                moved[col] = ".".join([*fields, f"{int(t):015d}", f"{to[0]:06d}", f"{to[1]:019d}"])
        p, o = where(row, (row["_source_partition"], row["_source_offset"]))
        row.update(moved, _source_partition=p, _source_offset=o)
    return pl.DataFrame(rows, schema=frame.schema)


# --------------------------------------------------------------------------- the SCD2 model


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def model_silver(sent: Sequence[Sent], added: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The dimension an uninterrupted, one-pass SCD2 over the valid records gives.

    Independent of the product's code: events of a key in (source position, source time,
    partition, offset) order, the position a PostgreSQL change's ``(lsn, txId)``; a tombstone
    takes its predecessor's position and time in the log (a delete's time, or the later of
    the predecessor's and its own); valid times never go back (each is the greatest time up
    to it); a copy (the same position, time, op and row as the key's preceding
    change; any two deletes at one time are alike) is a no-op; an upsert opens a version
    after nothing or a delete or when a tracked column changes, else updates the version in
    place; a delete closes it. ``_seq_max`` of a version is the greatest sequence of the
    key's changes that are not copies from its opening up to the next version's opening,
    no-op deletes included (on the latest version: the greatest the key has seen).
    ``added``: tracked columns a newer reader schema adds (null where a change lacks them).
    """
    business = (*BUSINESS, *added)
    per_key: dict[str, list[tuple[Position, int, int, int, str, dict[str, Any] | None]]] = {}
    previous: dict[tuple[str, int], tuple[int, str, Position]] = {}
    for x in sent:  # log order
        event = x.rec.event
        if x.rec.reason is not None or event is None:
            continue
        p, o = x.coords
        t = x.rec.ts
        op: str = event.op
        position: Position = (t - T0, None, None)  # envelope(): lsn = ts - T0, no txId
        if op == "T":
            position = NO_POSITION
            before = previous.get((event.cid, p))
            if before is not None:
                t = before[0] if before[1] == "D" else max(before[0], t)
                position = before[2]
            op = "D"
        else:
            previous[(event.cid, p)] = (t, op, position)
        per_key.setdefault(event.cid, []).append((position, t, p, o, op, event.row))
    tracked = [c for c in business if c not in UNTRACKED]
    rows: list[dict[str, Any]] = []
    for cid, events in sorted(per_key.items()):
        preceding: tuple[Any, ...] | None = None
        versions: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        clock: int | None = None
        ordered = sorted(events, key=lambda e: (_sort_position(e[0]), *e[1:4]))
        for position, t, p, o, op, row in ordered:
            signature = (position, t, op, None if op == "D" else json.dumps(row, sort_keys=True))
            if signature == preceding:
                continue
            preceding = signature
            clock = t if clock is None else max(clock, t)
            seq = (t, p, o, position, clock)
            if op == "U":
                assert row is not None
                changed = current is None or any(
                    row.get(c) != current["row"].get(c) for c in tracked
                )
                if changed:
                    if current is not None:
                        current["close"] = seq
                    current = {"row": row, "open": seq, "last": seq, "close": None}
                    versions.append(current)
                else:
                    assert current is not None
                    current["row"], current["last"] = row, seq
            elif current is not None:
                current["close"] = seq
                current = None
            if versions:
                versions[-1]["max"] = seq
        for v in versions:
            opened, last, closed, seq_max = v["open"], v["last"], v["close"], v["max"]
            rows.append(
                {
                    "contact_id": cid,
                    **{c: v["row"].get(c) for c in business},
                    "updated_at": _ts(v["row"]["updated_at"]),
                    "valid_from": _ts(opened[4]),
                    "valid_to": None if closed is None else _ts(closed[4]),
                    "is_current": closed is None,
                    "_source_topic": TOPIC,
                    "_source_partition": last[1],
                    "_source_offset": last[2],
                    "_seq_open": _seq(opened[0], opened[1:3], opened[3]),
                    "_seq_last": _seq(last[0], last[1:3], last[3]),
                    "_seq_close": None
                    if closed is None
                    else _seq(closed[0], closed[1:3], closed[3]),
                    "_seq_max": _seq(seq_max[0], seq_max[1:3], seq_max[3]),
                }
            )
    return rows


def assert_silver_matches_model(
    silver: pl.DataFrame | None, sent: Sequence[Sent], added: Sequence[str] = ()
) -> None:
    want = model_silver(sent, added)
    assert silver is not None, "no silver table"
    columns = list(want[0])
    assert sorted(silver.columns) == sorted(columns), "silver has other columns than the model"
    got = silver.select(columns).sort(SILVER_ORDER).to_dicts()
    want = sorted(want, key=lambda r: (r["contact_id"], r["_seq_open"]))
    if got != want:
        got_keys = {(r["contact_id"], r["_seq_open"]): r for r in got}
        want_keys = {(r["contact_id"], r["_seq_open"]): r for r in want}
        lines = []
        for k in sorted(set(got_keys) | set(want_keys)):
            g, w = got_keys.get(k), want_keys.get(k)
            if g != w:
                if g is None or w is None:
                    lines.append(f"{k}: got {g}, expected {w}")
                else:
                    diff = {c: (g[c], w[c]) for c in columns if g[c] != w[c]}
                    lines.append(f"{k}: (got, expected) {diff}")
        raise AssertionError("silver differs from the one-pass SCD2 model:\n" + "\n".join(lines))


# --------------------------------------------------------------------------- schema drift


def writer_schema(
    schema_id: int, subject: str, change: Callable[[list[dict[str, Any]]], None]
) -> RegisteredSchema:
    """The reader schema (crm.contacts-value latest) with its ``Value`` record's fields edited."""
    doc = copy.deepcopy(registry().latest(VALUE_SUBJECT).schema)
    value_record = doc["fields"][0]["type"][1]
    assert value_record["name"] == "Value"
    change(value_record["fields"])
    return RegisteredSchema(subject, 1, schema_id, doc)


def register(root: Path, schemas: Sequence[RegisteredSchema]) -> None:
    """Add each schema as version 1 of its own subject in a registry folder (a copy)."""
    index_path = root / "index.json"
    index = json.loads(index_path.read_text())
    for schema in schemas:
        folder = root / schema.subject
        folder.mkdir()
        (folder / "v1.avsc").write_text(json.dumps(schema.schema, indent=2))
        index["subjects"][schema.subject] = [{"version": 1, "id": schema.schema_id}]
    index_path.write_text(json.dumps(index, indent=2))


def reencode(rec: Rec, schema: RegisteredSchema, edit: Callable[[dict[str, Any]], None]) -> Rec:
    """The same change written with another writer schema (``edit`` adapts the datum)."""
    assert rec.datum is not None
    datum = copy.deepcopy(rec.datum)
    edit(datum)
    return replace(rec, value=value_bytes(datum, schema), datum=datum)
