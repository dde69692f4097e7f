"""What must hold of every SCD2 dimension and facts table, checked as pure Polars functions.

An SCD2 dimension holds versions of keys; a version's identity is ``(keys, _seq_open)``. Read
in sequence order, each key's versions must form one history:

* ``multiple_current``: at most one current version per key;
* ``current_flag``: ``is_current`` says what ``valid_to`` and ``_seq_close`` say (null while
  current);
* ``inverted``: a version does not end before it starts (``valid_to < valid_from``, or
  ``_seq_close`` not after ``_seq_open``);
* ``overlap``: a version ends no later than the next one starts, in time and in sequence;
* ``gap``: a version closed by the next version (``_seq_close == next._seq_open``) ends
  exactly when it starts (``valid_to == next.valid_from``); a version closed by a delete
  (its ``_seq_close`` is no version's opener) may leave a gap before a re-insert, but a
  version whose events all precede its ``_seq_close`` (``_seq_max < _seq_close``) was closed
  by a version, and that version must exist;
* ``duplicate_identity``: no two rows share ``(keys, _seq_open)``;
* ``valid_time_out_of_range`` (when the check is given the accepted source times): a
  version's ``valid_from`` and ``valid_to`` lie within them (a time the decoder would now
  quarantine, written before it did, or by another writer).

Facts tables: ``duplicate_event_id``, no two rows share the event id (facts are inserted once
per event).

Sequences are compared as strings (they sort in sequence order), never decoded. The checks
are vectorised: rows sorted by ``(keys, _seq_open)``, each version compared with the next of
its key by a shift. They return one row per violation (kind, key, the version concerned, a
short detail); :func:`summarize` counts them per kind and keeps a few examples of each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

__all__ = [
    "FACT_KINDS",
    "SCD2_KINDS",
    "CheckReport",
    "Violation",
    "check_facts",
    "check_scd2",
    "format_key",
    "summarize",
    "violation_schema",
]

SCD2_KINDS = (
    "multiple_current",
    "current_flag",
    "inverted",
    "overlap",
    "gap",
    "duplicate_identity",
    "valid_time_out_of_range",
)
"""The invariants of an SCD2 dimension, as the ``kind`` of a violation."""

FACT_KINDS = ("duplicate_event_id",)
"""The invariants of a facts table."""

_SCD2_COLUMNS = ("valid_from", "valid_to", "is_current", "_seq_open", "_seq_close")
_EXAMPLES = 3
"""Versions named in the detail of a ``multiple_current`` violation."""


def violation_schema(key_schema: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    """The columns of a violations frame for keys of ``key_schema``.

    ``kind``; ``key`` (a struct of the key columns); ``seq_open``: the version concerned (null
    when the violation is the key's, e.g. ``multiple_current``); ``detail``.
    """
    return {
        "kind": pl.String(),
        "key": pl.Struct(dict(key_schema)),
        "seq_open": pl.String(),
        "detail": pl.String(),
    }


def _text(expr: pl.Expr) -> pl.Expr:
    """A value as text in a detail (``null`` for a missing value)."""
    return expr.cast(pl.String).fill_null("null")


def _same_key(keys: Sequence[str], step: int) -> pl.Expr:
    """Whether the row ``step`` rows away (1: previous, -1: next) has the same key."""
    idx = pl.int_range(pl.len())
    inside = idx > 0 if step > 0 else idx < pl.len() - 1
    same = pl.all_horizontal([pl.col(k).eq_missing(pl.col(k).shift(step)) for k in keys])
    return same & inside


def _violations(
    frame: pl.DataFrame, keys: Sequence[str], kind: str, seq_open: pl.Expr, detail: pl.Expr
) -> pl.DataFrame:
    return frame.select(
        pl.lit(kind).alias("kind"),
        pl.struct(list(keys)).alias("key"),
        seq_open.cast(pl.String).alias("seq_open"),
        detail.alias("detail"),
    )


def check_scd2(
    rows: pl.DataFrame, keys: Sequence[str], valid_times: tuple[int, int] | None = None
) -> pl.DataFrame:
    """Every invariant violation in ``rows`` (all rows of the keys checked).

    Args:
        rows: dimension rows: the keys, ``valid_from``, ``valid_to``, ``is_current``,
            ``_seq_open``, ``_seq_close`` and, when the table has it, ``_seq_max``; other
            columns are ignored. A key's rows must all be there (a key's history is judged
            whole).
        keys: the key columns.
        valid_times: the accepted source times, ``(earliest, latest)`` in epoch ms (see
            :meth:`cdc.core.sequence.TimeWindow.bounds`); None: ``valid_time_out_of_range`` is
            not checked.

    Returns:
        One row per violation (see :func:`violation_schema`), ordered by kind (in
        :data:`SCD2_KINDS` order), key and version; empty when the rows are sound.

    Raises:
        ValueError: ``rows`` lacks a column the checks need, or ``keys`` is empty.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("an SCD2 check needs the key columns")
    missing = [c for c in (*keys, *_SCD2_COLUMNS) if c not in rows.columns]
    if missing:
        raise ValueError(f"not an SCD2 dimension: no column {', '.join(missing)}")
    seq_max = pl.col("_seq_max") if "_seq_max" in rows.columns else pl.lit(None, pl.String)
    ordered = rows.select(*keys, *_SCD2_COLUMNS, seq_max.cast(pl.String).alias("_seq_max")).sort(
        [*keys, "_seq_open"], nulls_last=False
    )

    repeated = _same_key(keys, 1) & pl.col("_seq_open").eq_missing(pl.col("_seq_open").shift(1))
    flagged = ordered.with_columns(_repeated=repeated)
    copies = (
        flagged.filter(pl.col("_repeated"))
        .group_by([*keys, "_seq_open"], maintain_order=True)
        .agg(pl.len().alias("_copies"))
    )
    duplicate = _violations(
        copies,
        keys,
        "duplicate_identity",
        pl.col("_seq_open"),
        pl.format("{} rows share this identity (keys, _seq_open)", pl.col("_copies") + 1),
    )
    # One row per identity from here on: a copied row is reported once, as a duplicate.
    versions = flagged.filter(~pl.col("_repeated")).drop("_repeated")

    current = (
        versions.filter(pl.col("is_current").fill_null(False))
        .group_by(keys, maintain_order=True)
        .agg(pl.len().alias("_n"), pl.col("_seq_open").head(_EXAMPLES).alias("_opens"))
        .filter(pl.col("_n") > 1)
    )
    multiple = _violations(
        current,
        keys,
        "multiple_current",
        pl.lit(None, pl.String),
        pl.format(
            "{} current versions (opened {}{})",
            pl.col("_n"),
            pl.col("_opens").list.join(", "),
            pl.when(pl.col("_n") > _EXAMPLES).then(pl.lit(", ...")).otherwise(pl.lit("")),
        ),
    )

    open_ended = pl.col("valid_to").is_null()
    flag = pl.col("is_current")
    flag_wrong = (
        flag.is_null() | (flag != open_ended) | (flag != pl.col("_seq_close").is_null())
    ).fill_null(True)
    current_flag = _violations(
        versions.filter(flag_wrong),
        keys,
        "current_flag",
        pl.col("_seq_open"),
        pl.format(
            "is_current {} but valid_to {} and _seq_close {}",
            _text(flag),
            _text(pl.col("valid_to")),
            _text(pl.col("_seq_close")),
        ),
    )

    backwards_time = (pl.col("valid_to") < pl.col("valid_from")).fill_null(False)
    backwards_seq = (pl.col("_seq_close") <= pl.col("_seq_open")).fill_null(False)
    inverted = _violations(
        versions.filter(backwards_time | backwards_seq),
        keys,
        "inverted",
        pl.col("_seq_open"),
        pl.when(backwards_time)
        .then(
            pl.format(
                "valid_to {} before valid_from {}",
                _text(pl.col("valid_to")),
                _text(pl.col("valid_from")),
            )
        )
        .otherwise(
            pl.format(
                "_seq_close {} not after _seq_open {}",
                _text(pl.col("_seq_close")),
                _text(pl.col("_seq_open")),
            )
        ),
    )

    paired = versions.with_columns(
        _has_next=_same_key(keys, -1),
        _next_open=pl.col("_seq_open").shift(-1),
        _next_from=pl.col("valid_from").shift(-1),
        _next_current=pl.col("is_current").shift(-1).fill_null(False),
    )
    has_next = pl.col("_has_next")
    # An open-ended version followed by a current one is already a multiple_current.
    both_current = open_ended & flag.fill_null(False) & pl.col("_next_current")
    overlaps = has_next & (
        (open_ended & ~both_current)
        | (pl.col("valid_to") > pl.col("_next_from")).fill_null(False)
        | (pl.col("_seq_close") > pl.col("_next_open")).fill_null(False)
    )
    overlap = _violations(
        paired.filter(overlaps),
        keys,
        "overlap",
        pl.col("_seq_open"),
        pl.format(
            "[{}, {}) closed by {} overlaps the next version, opened {} at {}",
            _text(pl.col("valid_from")),
            _text(pl.col("valid_to")),
            _text(pl.col("_seq_close")),
            _text(pl.col("_next_open")),
            _text(pl.col("_next_from")),
        ),
    )

    closed = pl.col("valid_to").is_not_null() & pl.col("_seq_close").is_not_null()
    by_next = has_next & (pl.col("_seq_close") == pl.col("_next_open")).fill_null(False)
    short = closed & by_next & (pl.col("valid_to") < pl.col("_next_from")).fill_null(False)
    # Every event of a version sorts before its closer; a delete is one of them. Nothing at
    # or after the closer means a version closed it, and that version must be the next one.
    by_version = (pl.col("_seq_max") < pl.col("_seq_close")).fill_null(False)
    after_next = has_next & (pl.col("_seq_close") >= pl.col("_next_open")).fill_null(False)
    lost = closed & by_version & ~after_next
    gap = _violations(
        paired.filter(short | lost),
        keys,
        "gap",
        pl.col("_seq_open"),
        pl.when(short)
        .then(
            pl.format(
                "valid_to {} but the next version, which closed it, opens at {}",
                _text(pl.col("valid_to")),
                _text(pl.col("_next_from")),
            )
        )
        .otherwise(
            pl.format(
                "closed at {} by a version opened {} that the table does not hold",
                _text(pl.col("valid_to")),
                _text(pl.col("_seq_close")),
            )
        ),
    )

    by_kind = {
        "multiple_current": multiple,
        "current_flag": current_flag,
        "inverted": inverted,
        "overlap": overlap,
        "gap": gap,
        "duplicate_identity": duplicate,
        "valid_time_out_of_range": _out_of_range(versions, keys, valid_times),
    }
    schema = violation_schema(rows.select(keys).schema)
    return pl.concat(
        [by_kind[kind].cast(schema) for kind in SCD2_KINDS],  # type: ignore[arg-type]
        how="vertical",
    )


def _out_of_range(
    versions: pl.DataFrame, keys: Sequence[str], valid_times: tuple[int, int] | None
) -> pl.DataFrame:
    """Versions whose ``valid_from`` (else ``valid_to``) lies outside ``valid_times``."""
    if valid_times is None:
        return versions.clear().pipe(
            _violations, keys, "valid_time_out_of_range", pl.col("_seq_open"), pl.lit("")
        )
    lo, hi = valid_times

    def outside(column: str) -> pl.Expr:
        ms = pl.col(column).dt.epoch("ms")
        return ((ms < lo) | (ms > hi)).fill_null(False)

    accepted = f"the accepted source times (source_time_window), {_iso(lo)} to {_iso(hi)}"
    return _violations(
        versions.filter(outside("valid_from") | outside("valid_to")),
        keys,
        "valid_time_out_of_range",
        pl.col("_seq_open"),
        pl.when(outside("valid_from"))
        .then(pl.format(f"valid_from {{}} is outside {accepted}", _text(pl.col("valid_from"))))
        .otherwise(pl.format(f"valid_to {{}} is outside {accepted}", _text(pl.col("valid_to")))),
    )


def _iso(ms: int) -> str:
    """An epoch-ms bound as ``2026-01-05 08:00:00+00:00`` (how details show valid times)."""
    return str(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms))


def check_facts(rows: pl.DataFrame, event_id: str) -> pl.DataFrame:
    """Event ids that more than one row of a facts table holds.

    Args:
        rows: the facts (at least the ``event_id`` column).
        event_id: the column that identifies an event.

    Returns:
        One ``duplicate_event_id`` violation per repeated id (see :func:`violation_schema`).

    Raises:
        ValueError: ``rows`` has no ``event_id`` column.
    """
    if event_id not in rows.columns:
        raise ValueError(f"not a facts table of event_id {event_id!r}: no such column")
    repeated = (
        rows.group_by(event_id)
        .agg(pl.len().alias("_n"))
        .filter(pl.col("_n") > 1)
        .sort(event_id, nulls_last=False)
    )
    found = _violations(
        repeated,
        [event_id],
        "duplicate_event_id",
        pl.lit(None, pl.String),
        pl.format("{} rows hold this event", pl.col("_n")),
    )
    return found.cast(violation_schema(rows.select(event_id).schema))  # type: ignore[arg-type]


def format_key(key: Mapping[str, Any]) -> str:
    """``contact_id=c1`` (key columns in order, comma-separated)."""
    return ", ".join(f"{name}={value}" for name, value in key.items())


@dataclass(frozen=True)
class Violation:
    """One broken invariant: its kind, the key, the version concerned and what is wrong."""

    kind: str
    key: dict[str, Any]
    seq_open: str | None
    detail: str

    def line(self) -> str:
        """``gap contact_id=c1 (version <seq>): <detail>``."""
        version = f" (version {self.seq_open})" if self.seq_open is not None else ""
        return f"{self.kind} {format_key(self.key)}{version}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        """The violation as a JSON object (key values as text when not JSON types)."""
        key = {
            k: v if isinstance(v, str | int | float | bool) or v is None else str(v)
            for k, v in self.key.items()
        }
        return {"kind": self.kind, "key": key, "seq_open": self.seq_open, "detail": self.detail}


@dataclass(frozen=True)
class CheckReport:
    """A check's outcome: violations counted per kind, and the first few of each.

    Attributes:
        counts: violations per kind (kinds without any are absent).
        examples: per kind, at most the cap :func:`summarize` was given, in key order.
        rows: rows checked (None when the check did not count them).
        keys: distinct keys (or event ids) checked (None when not counted).
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[Violation]] = field(default_factory=dict)
    rows: int | None = None
    keys: int | None = None

    @property
    def total(self) -> int:
        """Violations of every kind."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """``multiple_current 1 (contact_id=c1), gap 2 (contact_id=c4, contact_id=c7)``."""
        parts = []
        for kind, count in self.counts.items():
            named = ", ".join(format_key(v.key) for v in self.examples.get(kind, []))
            more = ", ..." if count > len(self.examples.get(kind, [])) else ""
            parts.append(f"{kind} {count} ({named}{more})" if named else f"{kind} {count}")
        return ", ".join(parts)


def summarize(
    violations: pl.DataFrame,
    cap: int,
    rows: int | None = None,
    keys: int | None = None,
) -> CheckReport:
    """Count ``violations`` (a :func:`check_scd2` or :func:`check_facts` frame) per kind.

    Args:
        violations: the violations.
        cap: examples kept per kind.
        rows: rows the check read, for the report.
        keys: distinct keys the check read, for the report.
    """
    order = {kind: i for i, kind in enumerate((*SCD2_KINDS, *FACT_KINDS))}
    counts = {
        str(kind): int(n)
        for kind, n in sorted(
            violations.group_by("kind").len().iter_rows(), key=lambda r: order.get(r[0], 99)
        )
    }
    examples: dict[str, list[Violation]] = {}
    for kind in counts:
        first = violations.filter(pl.col("kind") == kind).head(cap)
        examples[kind] = [
            Violation(kind, dict(r["key"]), r["seq_open"], r["detail"])
            for r in first.iter_rows(named=True)
        ]
    return CheckReport(counts=counts, examples=examples, rows=rows, keys=keys)
