"""Where each produced record landed: the "0 lost, 0 duplicated" account of one topic.

Every produced record must be in exactly one of bronze (valid) or quarantine (with its
expected reason), with its raw bytes, and no Kafka record may appear twice in either table.
:func:`landing_ledger` lists every departure from that; the fault suite asserts the lists are
empty (``tests/support/faults.py``), the soak benchmark counts them (``benchmarks/soak.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from tests.support.contact_stream import Sent

__all__ = ["Identity", "Ledger", "landing_ledger"]

Identity = tuple[int, int, int]
"""``(partition, offset, timestamp ms)`` of a Kafka record (see :attr:`Sent.identity`)."""


@dataclass
class Ledger:
    """The departures from "each record once, in the right table, unchanged".

    Attributes:
        other_topics: topics in the tables other than the one accounted for.
        repeated: ``(table, record)`` for each record a table holds more than once (with
            ``single_epoch``, a repeated partition/offset counts even with another timestamp).
        in_both: records in bronze and in quarantine.
        missing_valid: valid records in neither table.
        missing_bad: records that belong in quarantine, in neither table.
        valid_in_quarantine: valid records found (only) in quarantine.
        bad_in_bronze: records that belong in quarantine found (only) in bronze, each with
            its record id and expected reason.
        extra: rows of records never produced (or whose transaction was aborted).
        wrong_bytes: ``(table, record, record id)`` whose raw key or value differ.
        wrong_reason: ``(record, record id, quarantined as, error, expected)``.
    """

    other_topics: list[str] = field(default_factory=list)
    repeated: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    in_both: list[Identity] = field(default_factory=list)
    missing_valid: list[Identity] = field(default_factory=list)
    missing_bad: list[Identity] = field(default_factory=list)
    valid_in_quarantine: list[Identity] = field(default_factory=list)
    bad_in_bronze: list[tuple[Identity, str, str | None]] = field(default_factory=list)
    extra: list[Identity] = field(default_factory=list)
    wrong_bytes: list[tuple[str, Identity, str]] = field(default_factory=list)
    wrong_reason: list[tuple[Identity, str, Any, Any, str | None]] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Produced records in neither bronze nor quarantine."""
        return len(self.missing_valid) + len(self.missing_bad)

    @property
    def duplicated(self) -> int:
        """Records a table holds more than once, or both tables hold."""
        return len(self.repeated) + len(self.in_both)

    @property
    def misplaced(self) -> int:
        """Records in the wrong table, with the wrong reason or other bytes, or never produced."""
        return (
            len(self.valid_in_quarantine)
            + len(self.bad_in_bronze)
            + len(self.extra)
            + len(self.wrong_bytes)
            + len(self.wrong_reason)
        )


def _epoch_ms(frame: pl.DataFrame) -> list[int]:
    return frame.get_column("timestamp").dt.epoch("ms").to_list()


def _rows(frame: pl.DataFrame | None) -> list[tuple[Identity, dict[str, Any]]]:
    if frame is None:
        return []
    coords = zip(
        frame.get_column("partition").to_list(),
        frame.get_column("offset").to_list(),
        _epoch_ms(frame),
        strict=True,
    )
    return list(zip(coords, frame.iter_rows(named=True), strict=True))


def landing_ledger(
    bronze: pl.DataFrame | None,
    quarantine: pl.DataFrame | None,
    sent: Sequence[Sent],
    topic: str,
    single_epoch: bool = True,
) -> Ledger:
    """Account for every record of ``sent`` in one topic's bronze and quarantine tables.

    Args:
        bronze: the topic's bronze table (None: it does not exist).
        quarantine: its quarantine table (None: it does not exist).
        sent: every record produced to ``topic`` and committed (in every broker epoch).
        topic: the topic accounted for.
        single_epoch: the broker kept its data, so (partition, offset) identifies a record;
            after a broker lost its data offsets restart and (partition, offset, timestamp)
            does.

    Returns:
        The departures found (all lists empty: each record once, in its table, unchanged).
    """
    ledger = Ledger()
    found: dict[str, dict[Identity, dict[str, Any]]] = {}
    for role, frame in (("bronze", bronze), ("quarantine", quarantine)):
        rows = _rows(frame)
        if frame is not None:
            ledger.other_topics += sorted(set(frame.get_column("topic").unique()) - {topic})
        seen = Counter(c[:2] if single_epoch else c for c, _ in rows)
        ledger.repeated += [(role, c) for c, n in sorted(seen.items()) if n > 1]
        found[role] = dict(rows)
    bronze_ids, quarantine_ids = set(found["bronze"]), set(found["quarantine"])
    ledger.in_both = sorted(bronze_ids & quarantine_ids)
    valid = {x.identity: x for x in sent if x.rec.reason is None}
    bad = {x.identity: x for x in sent if x.rec.reason is not None}
    ledger.missing_valid = sorted(set(valid) - bronze_ids - quarantine_ids)
    ledger.missing_bad = sorted(set(bad) - bronze_ids - quarantine_ids)
    ledger.valid_in_quarantine = sorted((set(valid) & quarantine_ids) - bronze_ids)
    ledger.bad_in_bronze = [
        (c, bad[c].rec.rid, bad[c].rec.reason) for c in sorted(set(bad) & bronze_ids)
    ]
    ledger.extra = sorted((bronze_ids | quarantine_ids) - set(valid) - set(bad))
    for role, expected in (("bronze", valid), ("quarantine", bad)):
        for ident, x in sorted(expected.items()):
            row = found[role].get(ident)
            if row is None:
                continue
            if (row["key_raw"], row["value_raw"]) != (x.rec.key, x.rec.value):
                ledger.wrong_bytes.append((role, ident, x.rec.rid))
            if role == "quarantine" and row["error_code"] != x.rec.reason:
                ledger.wrong_reason.append(
                    (ident, x.rec.rid, row["error_code"], row["error"], x.rec.reason)
                )
    return ledger
