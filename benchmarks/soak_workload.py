"""What the soak benchmark produces, one seeded workload per pipeline, and its facts model.

* ``crm_contacts`` (:class:`ContactWorkload`): Debezium contact envelopes over K keys, built
  with the fault suite's :class:`~tests.support.contact_stream.StreamBuilder` (so silver can
  be checked against its independent SCD2 model, :func:`model_silver`): creates and snapshot
  reads, untracked and tracked updates, deletes with and without their tombstone, tombstones
  alone, late updates (committed up to 3 s of source time before the stream's clock),
  redeliveries of a key's recent records (same bytes), and records that belong in quarantine
  (a contract rule broken, a non-Avro payload).
* ``orders`` (:class:`OrderWorkload`): order events (created → paid → shipped → delivered,
  or cancelled), a fresh event id each, some without a contact (a ``warn`` expectation),
  redeliveries of recent events (same event id: silver keeps the first), and records that
  belong in quarantine (a currency breaking the contract's pattern, an amount the ``drop``
  expectation rejects, a non-Avro payload). :func:`facts_differences` compares the fact
  table with :func:`model_facts`: each event id once, from its first record.

Every draw comes from one ``random.Random``: the same seed gives the same records in the same
order (where they land, and which transactions a broker restart aborts, depends on timing).
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import polars as pl
from tests.support.contact_stream import (
    PARTITIONS,
    T0,
    Rec,
    Sent,
    StreamBuilder,
    key_bytes,
    registry,
)

from cdc.ingest.produce import encode_datum

__all__ = [
    "FACT_COLUMNS",
    "ORDERS_TOPIC",
    "ContactWorkload",
    "OrderWorkload",
    "Workload",
    "facts_differences",
    "model_facts",
]

ORDERS_TOPIC = "events.orders"
GARBAGE = b"\x7bnot avro\x7d"
"""A payload without the Confluent framing: quarantined as ``not_framed``."""
_RECENT = 4
"""Recent records kept per key (contacts) or in all (orders, x12) for redeliveries."""


class Workload(Protocol):
    """A pipeline's endless, seeded record stream."""

    pipeline: str
    topic: str

    def take(self, n: int) -> list[Rec]:
        """The next ``n`` records (one more when a change is a delete and its tombstone)."""
        ...


class ContactWorkload:
    """Seeded contact changes over ``keys`` contacts (``c0000``...), 3 partitions by key."""

    pipeline = "crm_contacts"
    topic = "crm.contacts"

    def __init__(self, rng: random.Random, keys: int = 200) -> None:
        self.rng = rng
        self.keys = keys
        self.builder = StreamBuilder(prefix="s")
        self._taken = 0
        self._recent: dict[str, deque[Rec]] = {}

    def take(self, n: int) -> list[Rec]:
        recs = self.builder.recs
        while len(recs) - self._taken < n:
            before = len(recs)
            self._step()
            for rec in recs[before:]:
                if rec.event is not None:
                    self._recent.setdefault(rec.event.cid, deque(maxlen=_RECENT)).append(rec)
        out = recs[self._taken :]
        self._taken = len(recs)
        return out

    def _step(self) -> None:
        b, rng = self.builder, self.rng
        cid = f"c{rng.randrange(self.keys):04d}"
        roll = rng.random()
        if roll < 0.01:
            b.rule_violation(cid, "not-an-email")
        elif roll < 0.015:
            b.raw(cid, key_bytes(cid), GARBAGE, "not_framed", name="garbage")
        elif cid not in b.state:
            if roll < 0.05 and cid in self._recent:
                b.tombstone(cid)  # of a deleted contact: changes nothing
            else:
                n = int(cid[1:])
                b.upsert(
                    cid,
                    "r" if roll < 0.15 else "c",
                    email=f"{cid}.{rng.randrange(1000)}@acme.io",
                    account_id=f"a{n % 17}",
                    first_name=rng.choice(("Ana", "Ben", "Chloé", "Dev", "Eli")),
                    marketing_opt_in=n % 3 == 0,
                )
        elif roll < 0.35:
            b.upsert(cid, phone=f"+44 20 7946 {rng.randrange(10_000):04d}")  # untracked
        elif roll < 0.60:
            b.upsert(cid, **self._tracked_change(cid))
        elif roll < 0.64:
            b.upsert(cid, "r")  # a snapshot read of the same row: in place
        elif roll < 0.71:
            b.delete(cid)
            b.tombstone(cid)
        elif roll < 0.73:
            b.delete(cid)
        elif roll < 0.75:
            b.tombstone(cid)  # a delete by tombstone alone
        elif roll < 0.84:
            b.resend(rng.choice(self._recent[cid]))
        elif roll < 0.90:
            b.late_upsert(cid, 10 * rng.randrange(1, 300) + 5, **self._tracked_change(cid))
        else:
            b.upsert(cid)  # only updated_at moves: in place

    def _tracked_change(self, cid: str) -> dict[str, Any]:
        rng = self.rng
        column = rng.choice(("email", "last_name", "job_title", "account_id", "marketing_opt_in"))
        value: Any = {
            "email": f"{cid}.{rng.randrange(1000)}@acme.io",
            "last_name": rng.choice(("Doe", "Roe", "Poe", "Low", "Shaw")),
            "job_title": rng.choice((None, "CTO", "VP Sales", "Engineer")),
            "account_id": f"a{rng.randrange(17)}",
            "marketing_opt_in": rng.random() < 0.5,
        }[column]
        return {column: value}


_NEXT_STATUS = {"created": "paid", "paid": "shipped", "shipped": "delivered"}


@dataclass(frozen=True)
class _Order:
    order_id: str
    account_id: str
    contact_id: str | None
    amount: Decimal
    currency: str
    ordered_at: int
    status: str


class OrderWorkload:
    """Seeded order events, about ``keys`` orders open at a time, 3 partitions by order."""

    pipeline = "orders"
    topic = ORDERS_TOPIC

    def __init__(self, rng: random.Random, keys: int = 200, start_ts: int = T0) -> None:
        self.rng = rng
        self.keys = keys
        self.recs: list[Rec] = []
        self._ts = start_ts
        self._orders = 0
        self._open: dict[str, _Order] = {}
        self._recent: deque[Rec] = deque(maxlen=_RECENT * 12)
        self._taken = 0
        registered = registry()
        self._key_schema = registered.latest(f"{ORDERS_TOPIC}-key")
        self._value_schema = registered.latest(f"{ORDERS_TOPIC}-value")

    def take(self, n: int) -> list[Rec]:
        while len(self.recs) - self._taken < n:
            self._step()
        out = self.recs[self._taken :]
        self._taken = len(self.recs)
        return out

    def _new_order(self, **changes: Any) -> _Order:
        rng = self.rng
        self._orders += 1
        order = _Order(
            order_id=f"o{self._orders:07d}",
            account_id=f"a{rng.randrange(17)}",
            contact_id=None if rng.random() < 0.03 else f"c{rng.randrange(200):04d}",
            amount=Decimal(rng.randrange(1, 100_000)) / 100,
            currency=rng.choice(("EUR", "USD", "GBP")),
            ordered_at=self._ts + 10,
            status="created",
        )
        return replace(order, **changes)

    def _step(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.05 and self._recent:
            rec = rng.choice(self._recent)
            self.recs.append(replace(rec, rid=f"{rec.rid}+{len(self.recs)}"))
        elif roll < 0.06:
            self._event(self._new_order(currency="eur"), "rule_violation")  # pattern [A-Z]{3}
        elif roll < 0.07:
            self._event(self._new_order(amount=Decimal("0.00")), "expectation")  # drop rule
        elif roll < 0.075:
            self._ts += 10
            order_id = f"o{self._orders:07d}"
            key = encode_datum(self._key_schema, {"order_id": order_id}, root="key")
            partition = self._partition(order_id)
            rid = f"garbage{len(self.recs)}"
            self.recs.append(Rec(rid, partition, self._ts, key, GARBAGE, "not_framed"))
        elif roll < 0.45 or len(self._open) < 5:
            order = self._new_order()
            if len(self._open) < self.keys:
                self._open[order.order_id] = order
            self._recent.append(self._event(order, None))
        else:
            order = self._open[rng.choice(sorted(self._open))]
            cancel = order.status != "shipped" and rng.random() < 0.1
            status = "cancelled" if cancel else _NEXT_STATUS[order.status]
            order = replace(order, status=status)
            if status in ("delivered", "cancelled"):
                del self._open[order.order_id]
            else:
                self._open[order.order_id] = order
            self._recent.append(self._event(order, None))

    @staticmethod
    def _partition(order_id: str) -> int:
        return int(order_id[1:]) % PARTITIONS

    def _event(self, order: _Order, reason: str | None) -> Rec:
        self._ts += 10
        datum = {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "order_id": order.order_id,
            "account_id": order.account_id,
            "contact_id": order.contact_id,
            "status": order.status,
            "amount": order.amount,
            "currency": order.currency,
            "ordered_at": order.ordered_at,
            "event_ts": self._ts,  # never before ordered_at: the `fail` expectation holds
        }
        rec = Rec(
            f"order{len(self.recs)}",
            self._partition(order.order_id),
            self._ts,
            encode_datum(self._key_schema, {"order_id": order.order_id}, root="key"),
            encode_datum(self._value_schema, datum),
            reason,
            datum=datum,
        )
        self.recs.append(rec)
        return rec


# --------------------------------------------------------------------------- facts model

FACT_COLUMNS = (
    "event_id",
    "order_id",
    "account_id",
    "contact_id",
    "status",
    "amount",
    "currency",
    "ordered_at",
    "event_ts",
    "_source_topic",
    "_source_partition",
    "_source_offset",
    "_kafka_timestamp",
)
"""The fact table's columns the model predicts (the table may have audit columns too)."""
_TIMES = ("ordered_at", "event_ts", "_kafka_timestamp")


def model_facts(sent: Sequence[Sent], topic: str = ORDERS_TOPIC) -> dict[str, dict[str, Any]]:
    """The fact table an uninterrupted run gives: each valid event id once, from its first
    record (lowest partition/offset; an event's records share a partition), times in epoch
    ms.

    Independent of the product's code: a dictionary filled in log order.
    """
    rows: dict[str, dict[str, Any]] = {}
    for x in sorted(sent, key=lambda x: x.coords):
        datum = x.rec.datum
        if x.rec.reason is not None or datum is None or datum["event_id"] in rows:
            continue
        rows[datum["event_id"]] = {
            **datum,
            "_source_topic": topic,
            "_source_partition": x.rec.partition,
            "_source_offset": x.offset,
            "_kafka_timestamp": x.rec.ts,
        }
    return rows


def _epoch_ms(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # Delta timestamps are UTC
            return round((value - datetime(1970, 1, 1)).total_seconds() * 1000)
        return round(value.timestamp() * 1000)
    return value


def facts_differences(
    silver: pl.DataFrame | None, sent: Sequence[Sent], topic: str = ORDERS_TOPIC
) -> tuple[list[str], int]:
    """How the fact table differs from :func:`model_facts` of ``sent``.

    Returns:
        ``(lines, repeated)``: one line per event id missing, extra, repeated or with other
        values; ``repeated`` counts the event ids the table holds more than once.
    """
    want = model_facts(sent, topic)
    if silver is None:
        return (["no fact table"] if want else []), 0
    absent = sorted(set(FACT_COLUMNS) - set(silver.columns))
    if absent:
        return [f"the fact table lacks columns {absent}"], 0
    got: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    repeated = 0
    for row in silver.select(FACT_COLUMNS).iter_rows(named=True):
        row = {c: _epoch_ms(v) if c in _TIMES else v for c, v in row.items()}
        if row["event_id"] in got:
            repeated += 1
            lines.append(f"{row['event_id']}: more than one row")
        got[row["event_id"]] = row
    for event_id in sorted(set(got) | set(want)):
        g, w = got.get(event_id), want.get(event_id)
        if g is None or w is None:
            lines.append(f"{event_id}: got {g}, expected {w}")
        elif g != w:
            diff = {c: (g[c], w[c]) for c in FACT_COLUMNS if g[c] != w[c]}
            lines.append(f"{event_id}: (got, expected) {diff}")
    return lines, repeated
