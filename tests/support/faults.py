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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import polars as pl
from polars.testing import assert_frame_equal

from cdc.config.lake import orphans_path, table_paths, txn_app_id
from cdc.config.settings import Settings, load_settings
from cdc.ingest.registry import RegisteredSchema
from cdc.runtime.faults import FAULT_ENV
from tests.support.contact_stream import (
    BUSINESS,
    PARTITIONS,
    T0,
    TOPIC,
    VALUE_SUBJECT,
    Coords,
    Event,
    Rec,
    Sent,
    StreamBuilder,
    create_topic,
    envelope,
    key_bytes,
    model_silver,
    partition_of,
    registry,
    send,
    silver_model_differences,
    value_bytes,
)
from tests.support.ledger import landing_ledger
from tests.support.paths import REPO_ROOT
from tests.support.polling import wait_until
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
    "Reference",
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
    "cdc_command",
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
    "run_env",
    "settings",
    "start_cdc_run",
    "value_bytes",
    "wait_until",
    "writer_schema",
]

PIPELINE = "crm_contacts"
BATCH = 4
"""``maxRecordsPerTrigger`` of the reference run and the faulted runs: several batches."""
AUDIT = ("_ingested_at", "_quarantined_at", "_batch_id", "_topic_id")
BRONZE_ORDER = ["partition", "offset"]
SILVER_ORDER = ["contact_id", "_seq_open"]


# --------------------------------------------------------------------------- the stream


def base_stream() -> list[Rec]:
    """The clean CRM contact stream: :func:`base_builder`'s records."""
    return base_builder().recs


def base_builder() -> StreamBuilder:
    """The builder after the clean CRM contact stream (35 records over 3 partitions).

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


def produce(bootstrap: str, recs: Sequence[Rec]) -> list[Sent]:
    """Send records in order, each with its partition and timestamp; return their offsets.

    The idempotent producer keeps each partition's records in the order given (even across
    retries), so a stream lands at the same offsets on any empty topic.
    """
    from confluent_kafka import Producer

    create_topic(bootstrap)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    reports = [send(producer, TOPIC, rec) for rec in recs]
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


def cdc_command(
    command: Sequence[str], bootstrap: str, root: Path, extra: Sequence[str]
) -> list[str]:
    """``python -m cdc.cli <command> --pipeline crm_contacts ... --set ...``."""
    args = [sys.executable, "-m", "cdc.cli", *command, "--pipeline", PIPELINE]
    for item in overrides(bootstrap, root, *extra):
        args += ["--set", item]
    return args


def run_env(fault: str | None) -> dict[str, str]:
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
        cdc_command(["run", "--available-now"], bootstrap, root, extra),
        capture_output=True,
        text=True,
        env=run_env(fault),
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def start_cdc_run(bootstrap: str, root: Path, output: Path, *extra: str) -> subprocess.Popen[str]:
    """:func:`cdc_run` in the background; stdout and stderr go to the file ``output``.

    The caller waits for it (``wait(timeout=...)``) and reads ``output`` afterwards.
    """
    with output.open("w") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            cdc_command(["run", "--available-now"], bootstrap, root, extra),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=run_env(None),
            cwd=REPO_ROOT,
        )


def cdc_replay(
    bootstrap: str, root: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m cdc.cli replay --pipeline crm_contacts <args> --set ...`` (same overrides)."""
    return subprocess.run(
        [*cdc_command(["replay"], bootstrap, root, ()), *args],
        capture_output=True,
        text=True,
        env=run_env(None),
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
    from cdc.pipeline.checkpoint import committed_offsets

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


def assert_exactly_once(tables: Tables, sent: Sequence[Sent], single_epoch: bool = True) -> None:
    """0 lost, 0 duplicated: each record once in bronze xor quarantine, reason and bytes right
    (:func:`tests.support.ledger.landing_ledger` finds none of its departures).

    Args:
        tables: the pipeline's tables.
        sent: every record produced (in every broker epoch).
        single_epoch: the broker kept its data, so (partition, offset) identifies a record;
            after a broker lost its data offsets restart and (partition, offset, timestamp)
            does.
    """
    ledger = landing_ledger(tables.bronze, tables.quarantine, sent, TOPIC, single_epoch)
    assert not ledger.other_topics, f"rows of other topics: {ledger.other_topics}"
    assert not ledger.repeated, f"records appear more than once: {ledger.repeated}"
    assert not ledger.in_both, f"records in both bronze and quarantine: {ledger.in_both}"
    assert not ledger.missing_valid, f"valid records missing from bronze: {ledger.missing_valid}"
    assert not ledger.valid_in_quarantine, (
        f"valid records quarantined instead of landing in bronze: {ledger.valid_in_quarantine}"
    )
    assert not ledger.missing_bad, f"bad records missing from quarantine: {ledger.missing_bad}"
    assert not ledger.extra, f"rows for records never produced: {ledger.extra}"
    assert not ledger.bad_in_bronze, "bad records in bronze: " + "; ".join(
        f"{c} ({rid}, expected {reason})" for c, rid, reason in ledger.bad_in_bronze
    )
    assert not ledger.wrong_bytes, "; ".join(
        f"{role} {ident} ({rid}): raw bytes differ from what was produced"
        for role, ident, rid in ledger.wrong_bytes
    )
    assert not ledger.wrong_reason, "; ".join(
        f"{rid} at {ident}: quarantined as {got!r} ({error}), expected {want!r}"
        for ident, rid, got, error, want in ledger.wrong_reason
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


def assert_silver_matches_model(
    silver: pl.DataFrame | None, sent: Sequence[Sent], added: Sequence[str] = ()
) -> None:
    """Silver equals :func:`model_silver` of ``sent`` (the one-pass SCD2 of the valid records)."""
    lines = silver_model_differences(silver, sent, added)
    if lines:
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


@dataclass(frozen=True)
class Reference:
    """The base stream as produced on an empty cluster and the tables of a clean run over it
    (the fault suite's session fixture ``reference``)."""

    sent: list[Sent]
    tables: Tables
