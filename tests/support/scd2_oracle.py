"""An SCD2 reference written from docs/scd2.md alone, record by record, in plain Python.

It shares no code with :mod:`cdc.core.scd2` or :mod:`cdc.ingest.changes` (no sequence strings, no
Polars, no frames): records are dictionaries, sequences are Python tuples, the fold is a loop over
one key's events with a "current version" variable. The property tests compare the service's
incremental MERGE path with it, so that a wrong fold cannot pass by agreeing with itself.

The rules, as docs/scd2.md states them:

1. A record's sequence is ``(position, time, partition, offset)``: ``position`` the
   connector's source position (a tuple; missing fields sort before any value), ``time`` the
   source time (``source.ts_ms``).
2. A tombstone (null value) is placed right after the key's previous record in its
   partition: that record's position, the later of its time and the tombstone's Kafka time
   (just its time when it is a delete), the tombstone's own partition and offset. With no
   previous record: no position, its Kafka time.
3. The same Kafka record delivered twice counts once. A record equal to the key's previous
   one in sequence order in position, time, operation and (for upserts) values is a resend
   and is ignored.
4. In sequence order, per key: an upsert opens a version when there is no current version
   or a tracked column differs from it, closing the current one; otherwise it updates the
   current version in place. A delete closes the current version; with none it does nothing.
5. Valid times never go back: an event's valid time is the greatest time among the key's
   events up to it. ``valid_from`` is the opener's, ``valid_to`` the closer's (the next
   version's opener, or the delete).
6. A version's lineage is its last upsert's partition and offset.
7. Unchanged values: a column of an upsert holding a placeholder takes the value it had just
   before, in sequence order (none after a delete or with nothing before). Records arrive in
   batches; a placeholder upsert is quarantined (never received) when its key has no upsert
   received in an earlier batch and no upsert without placeholders sequenced before it in its
   own batch (:func:`unavailable_rejects`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Record", "Version", "scd2_oracle", "unavailable_rejects"]

_MISSING = float("-inf")


@dataclass(frozen=True)
class Record:
    """One Kafka record of a key: ``op`` in ``c u r d`` or None for a tombstone."""

    key: str
    op: str | None
    values: tuple[tuple[str, Any], ...]
    position: tuple[int | None, ...]
    time: int
    partition: int
    offset: int
    kafka_time: int = 0


@dataclass
class Version:
    key: str
    values: dict[str, Any]
    valid_from: int
    valid_to: int | None = None
    partition: int = 0
    offset: int = 0

    @property
    def is_current(self) -> bool:
        return self.valid_to is None


@dataclass(order=True)
class _Event:
    sort: tuple[Any, ...]
    is_delete: bool = field(compare=False)
    record: Record = field(compare=False)


def _position(record: Record) -> tuple[float, ...]:
    return tuple(_MISSING if p is None else p for p in record.position)


def _events(records: list[Record]) -> list[_Event]:
    unique = {(r.partition, r.offset): r for r in records}  # a re-delivery is one record
    events: list[_Event] = []
    for r in unique.values():
        if r.op is not None:
            events.append(_Event((_position(r), r.time, r.partition, r.offset), r.op == "d", r))
            continue
        earlier = [
            p
            for p in unique.values()
            if p.key == r.key
            and p.partition == r.partition
            and p.offset < r.offset
            and p.op is not None
        ]
        if not earlier:
            width = len(r.position)
            events.append(
                _Event(((_MISSING,) * width, r.kafka_time, r.partition, r.offset), True, r)
            )
            continue
        pred = max(earlier, key=lambda p: p.offset)
        time = pred.time if pred.op == "d" else max(pred.time, r.kafka_time)
        events.append(_Event((_position(pred), time, r.partition, r.offset), True, r))
    return sorted(events)


def _sequence(r: Record) -> tuple[Any, ...]:
    return (_position(r), r.time, r.partition, r.offset)


def unavailable_rejects(
    batches: list[list[Record]], unavailable: tuple[str, ...]
) -> list[set[tuple[int, int]]]:
    """Per batch, the ``(partition, offset)`` of the deliveries quarantined by rule 7."""

    def holds(r: Record) -> bool:
        return any(v in unavailable for _, v in r.values)

    def upsert(r: Record) -> bool:
        return r.op in ("c", "u", "r")

    received: set[str] = set()  # keys with an upsert received in an earlier batch
    found: list[set[tuple[int, int]]] = []
    for batch in batches:
        rejected = set()
        for r in batch:
            if not (upsert(r) and holds(r)) or r.key in received:
                continue
            clean_before = any(
                upsert(q) and not holds(q) and q.key == r.key and _sequence(q) < _sequence(r)
                for q in batch
            )
            if not clean_before:
                rejected.add((r.partition, r.offset))
        received |= {r.key for r in batch if upsert(r) and (r.partition, r.offset) not in rejected}
        found.append(rejected)
    return found


def scd2_oracle(
    records: list[Record], tracked: set[str], unavailable: tuple[str, ...] = ()
) -> list[Version]:
    """Every version of every key, from all the records ever received, in any order."""
    by_key: dict[str, list[_Event]] = {}
    for e in _events(records):
        by_key.setdefault(e.record.key, []).append(e)
    versions: list[Version] = []
    for key in sorted(by_key):
        current: Version | None = None
        clock = None
        previous: _Event | None = None
        state: dict[str, Any] = {}  # the key's values just before the event
        for e in by_key[key]:
            r = e.record
            resend = (
                previous is not None
                and previous.sort[:2] == e.sort[:2]
                and previous.is_delete == e.is_delete
                and (e.is_delete or previous.record.values == r.values)
            )
            previous = e
            if resend:
                continue
            clock = e.sort[1] if clock is None else max(clock, e.sort[1])
            if e.is_delete:
                state = {}
                if current is not None:
                    current.valid_to = clock
                    current = None
                continue
            values = {c: state.get(c) if v in unavailable else v for c, v in r.values}
            state = values
            if current is not None and all(current.values[c] == values[c] for c in tracked):
                current.values = values
                current.partition, current.offset = r.partition, r.offset
                continue
            if current is not None:
                current.valid_to = clock
            current = Version(key, values, clock, None, r.partition, r.offset)
            versions.append(current)
    return versions
