"""The CRM contact stream of the fault suite and the soak benchmark, and an independent SCD2
model of it.

The stream is built record by record (:class:`StreamBuilder`) with explicit partitions and
Kafka timestamps (equal to the change's source commit time), so the same stream lands at
the same partition/offset with the same timestamp on any fresh broker. :func:`model_silver`
computes, from the records as produced (:class:`Sent`), the dimension a one-pass SCD2 gives,
sharing no code with the product's fold; :func:`silver_model_differences` compares a silver
table with it.

Plain helpers (no pytest): the fault suite (``tests/support/faults.py``) and the soak
benchmark (``benchmarks/soak.py``) both use them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal

import polars as pl

from cdc.ingest.produce import encode_datum
from cdc.ingest.registry import FileRegistry, RegisteredSchema
from tests.support.envelopes import T0, contact_envelope
from tests.support.paths import REGISTRY_PATH

__all__ = [
    "BUSINESS",
    "KEY_SUBJECT",
    "PARTITIONS",
    "SILVER_ORDER",
    "T0",
    "TOPIC",
    "UNTRACKED",
    "VALUE_SUBJECT",
    "Coords",
    "Event",
    "Rec",
    "Sent",
    "StreamBuilder",
    "create_topic",
    "envelope",
    "key_bytes",
    "model_silver",
    "partition_of",
    "registry",
    "send",
    "silver_model_differences",
    "value_bytes",
]

TOPIC = "crm.contacts"
PARTITIONS = 3
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

    def late_upsert(self, cid: str, back_ms: int, **changes: Any) -> Rec:
        """An update of an existing ``cid`` committed ``back_ms`` before the stream's clock
        (a late event: its sequence is older than the key's latest); the key's current row
        stays as it was."""
        rid, now = self._next()
        ts = max(now - back_ms, T0 + 1)
        current = self.state[cid]
        after = {**current, **changes, "updated_at": ts}
        datum = envelope("u", ts, current, after)
        return self._add_envelope(rid, ts, cid, datum, event=Event(cid, "U", after))

    def resend(self, rec: Rec) -> Rec:
        """``rec`` once more: the same bytes and timestamp (a source's redelivery)."""
        again = replace(rec, rid=f"{rec.rid}+{len(self.recs):03d}")
        self.recs.append(again)
        return again

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


def create_topic(bootstrap: str, topic: str = TOPIC, partitions: int = PARTITIONS) -> None:
    """Create ``topic`` unless it exists, and keep its records whatever their age.

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

    from cdc.runtime.kafka_admin import ensure_topic

    ensure_topic(bootstrap, topic, partitions)
    keep = ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[keep])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def send(producer: Any, topic: str, rec: Rec) -> dict[str, Any]:
    """Produce ``rec`` with its partition and timestamp (waiting while the local queue is
    full); the dictionary returned gets ``error`` and ``offset`` from its delivery report."""
    report: dict[str, Any] = {}

    def delivered(err: Any, msg: Any) -> None:
        report["error"], report["offset"] = err, msg.offset()

    while True:
        try:
            producer.produce(
                topic,
                key=rec.key,
                value=rec.value,
                partition=rec.partition,
                timestamp=rec.ts,
                on_delivery=delivered,
            )
            return report
        except BufferError:
            producer.poll(0.05)


# --------------------------------------------------------------------------- the SCD2 model


Coords = tuple[int, int]
"""(partition, offset) of a Kafka record."""

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
    no-op deletes included (on the latest version: the greatest the key has seen), and
    ``_valid_max`` the valid time there.
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
                    "_valid_max": _ts(seq_max[4]),
                }
            )
    return rows


def silver_model_differences(
    silver: pl.DataFrame | None, sent: Sequence[Sent], added: Sequence[str] = ()
) -> list[str]:
    """How ``silver`` differs from :func:`model_silver` of ``sent``: one line per version
    (key and ``_seq_open``) missing, extra, repeated or with other values ([] when equal).

    ``sent`` must be in log order per partition (sorted by partition and offset will do).
    """
    want = sorted(model_silver(sent, added), key=lambda r: (r["contact_id"], r["_seq_open"]))
    if silver is None:
        return ["no silver table"] if want else []
    if not want:
        return [f"{silver.height} silver rows, the model has none"] if silver.height else []
    columns = list(want[0])
    if sorted(silver.columns) != sorted(columns):
        return [f"silver has other columns than the model: {sorted(silver.columns)}"]
    got = silver.select(columns).sort(SILVER_ORDER).to_dicts()
    if got == want:
        return []
    got_keys: dict[tuple[str, str], dict[str, Any]] = {}
    lines = []
    for r in got:
        k = (r["contact_id"], r["_seq_open"])
        if k in got_keys:
            lines.append(f"{k}: more than one silver row")
        got_keys[k] = r
    want_keys = {(r["contact_id"], r["_seq_open"]): r for r in want}
    for k in sorted(set(got_keys) | set(want_keys)):
        g, w = got_keys.get(k), want_keys.get(k)
        if g != w:
            if g is None or w is None:
                lines.append(f"{k}: got {g}, expected {w}")
            else:
                d = {c: (g[c], w[c]) for c in columns if g[c] != w[c]}
                lines.append(f"{k}: (got, expected) {d}")
    return lines
