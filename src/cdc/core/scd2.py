"""SCD Type 2 as a pure function on Polars frames. No Spark, no Delta, no I/O.

Model
-----
A *change* is one event for one key: ``_op`` ``"U"`` (upsert: insert/update/snapshot read) or
``"D"`` (delete/tombstone), the business column values, a *sequence* and lineage. The sequence
``_seq`` is a fixed-width string that sorts like the tuple ``(ts_ms, partition, offset)``:
the source commit time, tie-broken by the Kafka position (see :func:`encode_sequence`).

A dimension row is one *version* of a key: business columns, ``valid_from``/``valid_to``/
``is_current``, lineage (``_source_topic/_partition/_offset`` of the last event applied) and
the sequence columns ``_seq_open`` (the event that opened the version, part of the row's
identity), ``_seq_last`` (the last event folded into it), ``_seq_close`` (the event that
closed it: the next version's opener, or a delete; null while current) and ``_seq_max`` (the
greatest event of the version's span, from its opening to the next version's), with
``_valid_max``, the valid time at ``_seq_max``: the key's clock, which an update in place or
a delete that found nothing may have moved past every valid time the rows show.

Algorithm
---------
For the affected keys, existing rows are turned back into events (the opener, the last
update, and — when no version follows — the closing delete), unioned with the new changes,
de-duplicated on ``(keys, _seq)`` (re-delivery is a no-op) and folded in sequence order:
an upsert whose tracked values differ from the previous state (or that follows a delete or
nothing) opens a version; other upserts update the version in place (untracked columns);
a delete closes the open version. The new row set is then diffed against the existing rows
by ``(keys, _seq_open)`` into upserts and deletes for one Delta MERGE.

Because the fold runs over the key's events in sequence order, an event that arrives late is
placed where it belongs, splitting the interval it falls in, within a batch or across batches.
Given only a key's *current* row (the in-order case), the result equals the one-pass result.
Given its full history, the result equals it except where information the table does not
keep is needed (untracked values as of a version's opening; deletes that found nothing to
delete) — see docs/scd2.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from cdc.core import sequence

__all__ = [
    "ACTION_COLUMN",
    "DIM_SYSTEM_COLUMNS",
    "LINEAGE_COLUMNS",
    "ORPHAN_COLUMNS",
    "UNAVAILABLE_VALUE",
    "WAS_CURRENT_COLUMN",
    "FoldPass",
    "Scd2Result",
    "Scd2Spec",
    "apply_scd2",
    "empty_dimension",
    "empty_orphans",
    "encode_sequence",
    "fold_pass",
    "late_keys",
    "merge_source",
    "post_merge_rows",
    "touches_history",
    "unavailable_counts",
    "unavailable_error",
    "unavailable_marker",
    "unresolvable_unavailable",
]

UNAVAILABLE_VALUE = "__debezium_unavailable_value"
"""Debezium's default ``unavailable.value.placeholder``: a PostgreSQL TOASTed column that an
update did not change (``REPLICA IDENTITY DEFAULT``), sent instead of its value."""

LINEAGE_COLUMNS = ("_source_topic", "_source_partition", "_source_offset")
DIM_SYSTEM_COLUMNS = (
    "valid_from",
    "valid_to",
    "is_current",
    *LINEAGE_COLUMNS,
    "_seq_open",
    "_seq_last",
    "_seq_close",
    "_seq_max",
    "_valid_max",
)
ORPHAN_COLUMNS = ("_seq_max", "_valid_max")
"""Columns of an orphan marker besides the keys (:attr:`Scd2Result.orphans`): the greatest
sequence a key without rows has seen, and its clock then (the valid time at it)."""
ACTION_COLUMN = "_cdc_action"
"""Column of a MERGE source (:func:`merge_source`): ``U`` upserts the version, ``D`` deletes it."""
WAS_CURRENT_COLUMN = "_cdc_was_current"
"""Column of a MERGE source: ``is_current`` of the row a source row rewrites (the partition it
lives in); a new row says ``true``: it matches nothing, and keeps the MERGE to the current
partition when no history row is rewritten."""
_TS_TYPE = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class Scd2Spec:
    """What makes a version: the keys, the business columns and which of them are tracked.

    Attributes:
        keys: key columns, in order.
        columns: business columns (excluding keys), in table order.
        tracked: columns whose change opens a new version; the rest update in place.
    """

    keys: tuple[str, ...]
    columns: tuple[str, ...]
    tracked: tuple[str, ...]
    unavailable: tuple[str, ...] = ()
    """Values that stand for "unchanged, not sent" (Debezium's TOAST placeholder): an upsert
    whose column holds one keeps the value the key had before it (:func:`unavailable_marker`)."""

    def __post_init__(self) -> None:
        unknown = set(self.tracked) - set(self.columns)
        if unknown:
            raise ValueError(f"tracked columns not in columns: {sorted(unknown)}")
        if set(self.keys) & set(self.columns):
            raise ValueError("key columns must not be business columns")

    @classmethod
    def build(
        cls,
        keys: Sequence[str],
        columns: Sequence[str],
        track_history: Sequence[str] | None = None,
        track_history_except: Sequence[str] = (),
        unavailable: Sequence[str] = (),
    ) -> Scd2Spec:
        """Build a spec: tracked = ``track_history`` or all columns minus the exceptions."""
        business = tuple(c for c in columns if c not in keys)
        if track_history is not None:
            missing = sorted(set(track_history) - set(business))
            if missing:
                raise ValueError(f"track_history names unknown columns: {missing}")
            tracked = tuple(c for c in business if c in set(track_history))
        else:
            missing = sorted(set(track_history_except) - set(business))
            if missing:
                raise ValueError(f"track_history_except names unknown columns: {missing}")
            tracked = tuple(c for c in business if c not in set(track_history_except))
        return cls(tuple(keys), business, tracked, tuple(unavailable))

    @property
    def row_columns(self) -> tuple[str, ...]:
        return (*self.keys, *self.columns, *DIM_SYSTEM_COLUMNS)


@dataclass(frozen=True)
class Scd2Result:
    """Rows to write for the affected keys, and what happened to them.

    Attributes:
        upserts: full rows to insert, or to update where ``(keys, _seq_open)`` exists.
        deletes: ``(keys, _seq_open)`` of rows that no longer exist (a late event merged them),
            with their ``is_current``.
        was_current: per upsert, ``is_current`` of the row it rewrites (null for a new row):
            the row's partition when the table is partitioned by ``is_current``.
        inserted: versions created.
        updated: existing versions rewritten (closed, or updated in place).
        closed: versions that stopped being current (superseded or deleted).
        duplicate_events: input events already applied, or repeated within the input.
        affected_keys: distinct keys in the input.
    """

    upserts: pl.DataFrame
    deletes: pl.DataFrame
    was_current: pl.Series
    inserted: int = 0
    updated: int = 0
    closed: int = 0
    duplicate_events: int = 0
    affected_keys: int = 0
    orphans: pl.DataFrame | None = None
    """Keys left with no row although events were seen (only deletes so far), with the
    greatest sequence seen and the key's clock (:data:`ORPHAN_COLUMNS`): the table cannot hold
    them, so the caller keeps them (``seen``)."""


def encode_sequence(
    ts_ms: pl.Expr, partition: pl.Expr, offset: pl.Expr, position: pl.Expr | None = None
) -> pl.Expr:
    """Fixed-width string that sorts like ``(position..., ts_ms, partition, offset)``.

    See :mod:`cdc.core.sequence` for the layouts.

    Args:
        ts_ms: sequence time in epoch milliseconds (non-negative).
        partition: Kafka partition (tie-break).
        offset: Kafka offset (tie-break).
        position: the source position, encoded (:func:`cdc.core.sequence.sequence_position`).
    """
    return sequence.encode(ts_ms, partition, offset, position)


def _ms_to_ts(ms: pl.Expr) -> pl.Expr:
    return (ms * 1000).cast(_TS_TYPE)


def _event_columns(spec: Scd2Spec) -> list[str]:
    return [*spec.keys, *spec.columns, "_op", "_seq", "_source_topic", "_tombstone", "_floor"]


def _with_tombstone_flag(events: pl.DataFrame) -> pl.DataFrame:
    """Events with the optional columns filled: ``_tombstone`` (false) and ``_floor`` (null).

    ``_floor`` (epoch ms) is set only on events rebuilt from rows: the valid time the row
    already holds, which the event's own sequence time may be below (see :func:`_fold`).
    """
    if "_floor" not in events.columns:
        events = events.with_columns(pl.lit(None, dtype=pl.Int64).alias("_floor"))
    if "_tombstone" in events.columns:
        return events.with_columns(pl.col("_tombstone").fill_null(False))
    return events.with_columns(pl.lit(False).alias("_tombstone"))


def _place_tombstones(events: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Sequence each tombstone right after the key's previous record in the log.

    A tombstone (null Kafka value) carries no source commit time, and its Kafka timestamp is
    another clock. Kafka keeps a key's records in order within its partition, so the
    tombstone's place is just after its predecessor there: it takes the predecessor's sequence
    time (or its own Kafka time if later, when the predecessor is not a delete — a delete
    followed by a tombstone is the usual Debezium pair, and the tombstone is then a no-op),
    tie-broken by its own position; it takes the predecessor's source position too. With no
    known predecessor it keeps its own sequence: its Kafka time and, in a positioned layout,
    the zero position (before every change of the key: a delete of nothing).
    """
    if not events.get_column("_tombstone").any():
        return events
    keys = list(spec.keys)
    located = events.with_columns(
        _p=sequence.decode_partition(pl.col("_seq")),
        _o=sequence.decode_offset(pl.col("_seq")),
        _t=sequence.decode_time_ms(pl.col("_seq")),
        _pos=sequence.position_prefix(pl.col("_seq")),
    )
    tombs = located.filter(pl.col("_tombstone")).sort("_o")
    others = located.filter(~pl.col("_tombstone")).sort("_o")
    placed = (
        tombs.join_asof(
            others.select(
                *keys,
                "_p",
                "_o",
                pl.col("_t").alias("_pred_t"),
                pl.col("_op").alias("_pred_op"),
                pl.col("_pos").alias("_pred_pos"),
            ),
            on="_o",
            by=[*keys, "_p"],
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,  # sorted on _o globally, hence within every group
        )
        .with_columns(
            _t=pl.when(pl.col("_pred_t").is_null())
            .then(pl.col("_t"))
            .when(pl.col("_pred_op") == "D")
            .then(pl.col("_pred_t"))
            .otherwise(pl.max_horizontal("_pred_t", "_t"))
        )
        .with_columns(
            _seq=encode_sequence(
                pl.col("_t"),
                pl.col("_p"),
                pl.col("_o"),
                pl.coalesce("_pred_pos", "_pos"),
            )
        )
    )
    return pl.concat([others.select(events.columns), placed.select(events.columns)], how="vertical")


def empty_dimension(spec: Scd2Spec, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty dimension frame with the row layout for ``spec``.

    Args:
        spec: the dimension's spec.
        schema: dtypes of the key and business columns.
    """
    system: dict[str, pl.DataType] = {
        "valid_from": _TS_TYPE,
        "valid_to": _TS_TYPE,
        "is_current": pl.Boolean(),
        "_source_topic": pl.String(),
        "_source_partition": pl.Int32(),
        "_source_offset": pl.Int64(),
        "_seq_open": pl.String(),
        "_seq_last": pl.String(),
        "_seq_close": pl.String(),
        "_seq_max": pl.String(),
        "_valid_max": _TS_TYPE,
    }
    cols = {c: schema[c] for c in (*spec.keys, *spec.columns)}
    return pl.DataFrame(schema={**cols, **system})


def empty_orphans(spec: Scd2Spec, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame of orphan markers (:attr:`Scd2Result.orphans`) for ``spec``.

    Args:
        spec: the dimension's spec.
        schema: dtypes of the key columns (more are ignored).
    """
    markers: dict[str, pl.DataType] = {"_seq_max": pl.String(), "_valid_max": _TS_TYPE}
    return pl.DataFrame(schema={**{k: schema[k] for k in spec.keys}, **markers})


def _as_rows(rows: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Dimension rows in the layout of :attr:`Scd2Spec.row_columns` (see :func:`_with_clock`)."""
    return _with_clock(rows).select(spec.row_columns)


def _as_seen(seen: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Orphan markers, one per key: the keys and :data:`ORPHAN_COLUMNS`.

    Markers are appended, batch after batch: a key may have several, and a later one may
    hold a later clock at the same sequence (a late change, e.g. a tombstone with no
    predecessor, seen since). A clock only grows as changes arrive, and at a greater sequence
    it is no smaller, so the key's marker is the greatest of each. Markers written before
    they kept the clock have none (see :func:`_with_clock`).
    """
    return (
        _with_clock(seen)
        .group_by(spec.keys, maintain_order=True)
        .agg(pl.col(c).max() for c in ORPHAN_COLUMNS)
    )


def _with_clock(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows or orphan markers with ``_valid_max``: null where they were written before the
    table kept it, which :func:`late_keys` reads as a key whose clock they cannot tell."""
    if "_valid_max" in frame.columns:
        return frame
    return frame.with_columns(pl.lit(None, dtype=_TS_TYPE).alias("_valid_max"))


def _events_from_rows(rows: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Rebuild the events a set of dimension rows stands for (opener, last update, delete)."""
    base = [*spec.keys, *spec.columns]
    flag = pl.lit(False).alias("_tombstone")
    pseudo, genuine = pl.lit(True).alias("_pseudo"), pl.lit(True).alias("_content_ok")
    valid_from = pl.col("valid_from").dt.epoch("ms")

    def floor(seq: str, held: pl.Expr | None) -> pl.Expr:
        # The valid time the rows hold for the event at ``seq`` (its own sequence time may be
        # below it): ``held``, and at ``_seq_max`` the key's clock then, which changes the
        # rows do not show (an update in place, a delete of nothing) may have moved further.
        clock = pl.when(pl.col(seq) == pl.col("_seq_max")).then(pl.col("_valid_max").dt.epoch("ms"))
        return (clock if held is None else pl.max_horizontal(held, clock)).alias("_floor")

    opener = rows.select(
        *base,
        pl.lit("U").alias("_op"),
        pl.col("_seq_open").alias("_seq"),
        "_source_topic",
        flag,
        floor("_seq_open", valid_from),
        pseudo,
        (pl.col("_seq_last") == pl.col("_seq_open")).alias("_content_ok"),
    )
    last = rows.filter(pl.col("_seq_last") != pl.col("_seq_open")).select(
        *base,
        pl.lit("U").alias("_op"),
        pl.col("_seq_last").alias("_seq"),
        "_source_topic",
        flag,
        floor("_seq_last", valid_from),
        pseudo,
        genuine,
    )
    opened = rows.select(*spec.keys, pl.col("_seq_open").alias("_seq_close"))
    deleted = (
        rows.filter(pl.col("_seq_close").is_not_null())
        .join(opened, on=[*spec.keys, "_seq_close"], how="anti", nulls_equal=True)
        .pipe(
            _rebuilt_deletes,
            spec,
            "_seq_close",
            rows.schema,
            pl.col("_source_topic"),
            floor("_seq_close", pl.col("valid_to").dt.epoch("ms")),
        )
    )
    # Deletes that found no current version leave no row; the latest row remembers the last.
    noop_delete = rows.filter(
        pl.col("_seq_close").is_not_null() & (pl.col("_seq_max") > pl.col("_seq_close"))
    ).pipe(
        _rebuilt_deletes,
        spec,
        "_seq_max",
        rows.schema,
        pl.col("_source_topic"),
        floor("_seq_max", None),
    )
    return pl.concat([opener, last, deleted, noop_delete], how="vertical")


def _rebuilt_deletes(
    rows: pl.DataFrame,
    spec: Scd2Spec,
    seq: str,
    dtypes: pl.Schema,
    source_topic: pl.Expr,
    floor: pl.Expr | None = None,
) -> pl.DataFrame:
    """The delete event each of ``rows`` stands for: its keys at sequence ``seq``, no values.

    Args:
        rows: one row per rebuilt delete, with the key columns and ``seq``.
        spec: keys and business columns.
        seq: the column holding the delete's sequence.
        dtypes: dtypes of the business columns (null in a delete).
        source_topic: the events' ``_source_topic``.
        floor: the delete's valid time as the rows hold it (epoch ms), if they do.

    Returns:
        Events in the layout of :func:`_event_columns`, marked rebuilt (``_pseudo``) with
        content that counts (``_content_ok``).
    """
    return rows.select(
        *spec.keys,
        *[pl.lit(None, dtype=dtypes[c]).alias(c) for c in spec.columns],
        pl.lit("D").alias("_op"),
        pl.col(seq).alias("_seq"),
        source_topic,
        pl.lit(False).alias("_tombstone"),
        (floor if floor is not None else pl.lit(None, dtype=pl.Int64)).alias("_floor"),
        pl.lit(True).alias("_pseudo"),
        pl.lit(True).alias("_content_ok"),
    )


def _dedupe(events: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Drop duplicate deliveries, keeping the first (known events come first).

    The same Kafka record twice has the same sequence. A producer that re-sends a change (an
    at-least-once connector after a restart) writes a new record with the same source
    position and time, operation and values at a later offset: it sorts right after the
    original, and is dropped as a copy of the key's preceding event, so it moves neither
    lineage nor ``_seq_max``. (A change equal to its predecessor at the same source time
    changes nothing visible either way.) Whether a record is a copy depends on its
    predecessor: a change that arrives later and sorts between the two makes it count again,
    which is why such a change is late (:func:`late_keys`). A rebuilt opener carries its row's
    final values, not the opening change's, so it is never taken as the original of a copy;
    rebuilt events (the table's own state) are never dropped.
    """
    keys = list(spec.keys)
    if "_pseudo" not in events.columns:
        events = events.with_columns(_pseudo=pl.lit(False), _content_ok=pl.lit(True))
    exact = events.unique(subset=[*keys, "_seq"], keep="first", maintain_order=True)
    ordered = exact.sort([*keys, "_seq"], maintain_order=True).with_columns(
        sequence.position_and_time(pl.col("_seq")).alias("_seq_ts")
    )
    is_delete = pl.col("_op") == "D"

    def value(c: str) -> pl.Expr:  # a delete's values say nothing: compare deletes as equal
        return pl.when(is_delete).then(None).otherwise(pl.col(c))

    same_as_previous = pl.all_horizontal(
        [pl.col(c).eq_missing(pl.col(c).shift(1)) for c in (*keys, "_seq_ts", "_op")]
        + [value(c).eq_missing(value(c).shift(1)) for c in spec.columns]
    ).fill_null(False)
    copies = ~pl.col("_pseudo") & pl.col("_content_ok").shift(1).fill_null(False) & same_as_previous
    return ordered.filter(~copies).drop("_seq_ts", "_pseudo", "_content_ok")


def _latest_rows(rows: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Each key's latest version (greatest ``_seq_open``)."""
    return rows.sort([*keys, "_seq_open"]).unique(subset=keys, keep="last", maintain_order=True)


def late_keys(
    existing: pl.DataFrame,
    changes: pl.DataFrame,
    spec: Scd2Spec,
    seen: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Keys whose changes cannot be folded onto their latest row alone.

    A change folds onto the latest row when it follows everything the table has seen for its
    key in position and time, not only in sequence: a change at the position and time of the
    greatest sequence seen (``_seq_max``) may sort before a resend of it that was dropped as a
    copy (:func:`_dedupe`) and the table does not keep, and which the change makes count
    again. So a key is late when one of its changes has a position and time at or before
    ``_seq_max``'s (an out-of-order event, a re-delivery, or a change in one position and
    time with the latest), when one comes before ``_seq_max``'s record in its partition's log
    (a record quarantined at first and accepted on a replay: a tombstone later in the log,
    already applied, is placed after it now), when it has a tombstone (placed by its log
    predecessor, which may be anywhere in the key's history), or when the rows cannot tell
    the key's clock (a row, or orphan markers, written before they kept ``_valid_max``).
    Such keys are rebuilt from their full event history.

    Args:
        existing: rows of the affected keys.
        changes: the batch's change events.
        spec: the dimension's spec.
        seen: orphan markers of keys without rows (:data:`ORPHAN_COLUMNS`; see
            :attr:`Scd2Result.orphans`).

    Returns:
        The late keys (key columns only, unique).
    """
    keys = list(spec.keys)
    changes = _with_tombstone_flag(changes)
    known = _latest_rows(_as_rows(existing, spec), keys).select(
        *keys,
        pl.coalesce("_seq_max", pl.max_horizontal("_seq_last", "_seq_close")).alias("_seen"),
        pl.col("_valid_max").is_null().alias("_no_clock"),
    )
    if seen is not None and seen.height:
        with_rows = known.select(*keys, pl.lit(True).alias("_has_rows"))
        marks = (
            _as_seen(seen, spec)
            .select(
                *keys,
                pl.col("_seq_max").alias("_seen"),
                pl.col("_valid_max").is_null().alias("_no_clock"),
            )
            # A key's rows tell its clock; markers only for a key without rows.
            .join(with_rows, on=keys, how="left", nulls_equal=True)
            .select(
                *keys,
                "_seen",
                (pl.col("_no_clock") & pl.col("_has_rows").is_null()).alias("_no_clock"),
            )
        )
        known = (
            pl.concat([known, marks], how="vertical_relaxed")
            .group_by(keys)
            .agg(pl.col("_seen").max(), pl.col("_no_clock").any())
        )
    flagged = changes.select(*keys, "_seq", "_tombstone").join(
        known, on=keys, how="left", nulls_equal=True
    )
    source_order = sequence.position_and_time
    partition, offset = sequence.decode_partition, sequence.decode_offset
    late = flagged.filter(
        pl.col("_tombstone")
        | (source_order(pl.col("_seq")) <= source_order(pl.col("_seen")))
        # Behind the latest seen record in its partition's log (a replayed record, quarantined
        # at first): a tombstone after it in the log is placed after it now.
        | (
            (partition(pl.col("_seq")) == partition(pl.col("_seen")))
            & (offset(pl.col("_seq")) < offset(pl.col("_seen")))
        )
        | pl.col("_no_clock")
    )
    return late.select(keys).unique()


def _fold(events: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Fold events (any order, de-duplicated) into dimension rows."""
    keys = list(spec.keys)
    df = _resolve_unavailable(events.sort([*keys, "_seq"]), spec)
    n = df.height
    idx = pl.int_range(pl.len())
    new_key = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys]) | (
        idx == 0
    )
    last_in_key = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(-1)) for k in keys]) | (
        idx == n - 1
    )
    tracked_changed = (
        pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in spec.tracked])
        if spec.tracked
        else pl.lit(False)
    )
    # Valid times never go back along the sequence: a source clock that steps back (or a
    # position that orders differently from time) must not invert an interval. Rows rebuilt
    # into events carry the valid time they already hold (``_floor``).
    df = df.with_columns(
        _vt=_event_time_ms().cum_max().over(keys),
        _new_key=new_key,
        _last_in_key=last_in_key,
        _prev_op=pl.col("_op").shift(1),
        _tracked_changed=tracked_changed,
    ).with_columns(
        _is_open=(pl.col("_op") == "U")
        & (pl.col("_new_key") | (pl.col("_prev_op") == "D") | pl.col("_tracked_changed"))
    )
    df = df.with_columns(
        _next_op=pl.when(pl.col("_last_in_key")).then(None).otherwise(pl.col("_op").shift(-1)),
        _next_is_open=pl.when(pl.col("_last_in_key"))
        .then(None)
        .otherwise(pl.col("_is_open").shift(-1)),
        _next_seq=pl.when(pl.col("_last_in_key")).then(None).otherwise(pl.col("_seq").shift(-1)),
        _next_vt=pl.when(pl.col("_last_in_key")).then(None).otherwise(pl.col("_vt").shift(-1)),
    )
    upserts = df.filter(pl.col("_op") == "U")
    openers = upserts.filter(pl.col("_is_open")).select(
        pl.col("_seq").alias("_seq_open"), pl.col("_vt").alias("_open_vt")
    )
    lasts = upserts.filter(
        pl.col("_next_op").is_null() | (pl.col("_next_op") == "D") | pl.col("_next_is_open")
    )
    if openers.height != lasts.height:  # an invariant of the fold, not a data condition
        raise AssertionError(f"scd2 fold: {openers.height} openers vs {lasts.height} closers")
    rows = pl.concat([lasts, openers], how="horizontal").select(
        *keys,
        *spec.columns,
        _ms_to_ts(pl.col("_open_vt")).alias("valid_from"),
        _ms_to_ts(pl.col("_next_vt")).alias("valid_to"),
        pl.col("_next_seq").is_null().alias("is_current"),
        pl.col("_source_topic"),
        sequence.decode_partition(pl.col("_seq")).alias("_source_partition"),
        sequence.decode_offset(pl.col("_seq")).alias("_source_offset"),
        pl.col("_seq_open"),
        pl.col("_seq").alias("_seq_last"),
        pl.col("_next_seq").alias("_seq_close"),
    )
    # Each version keeps the greatest sequence seen from its opening up to the next version's
    # (no-op deletes included) and the valid time there, the key's clock: on a key's latest
    # row, the greatest sequence the key has seen and the time its next change starts from.
    # A closed version's values never change when later, in-order events arrive, so they
    # leave its row (and, with the table partitioned by is_current, its history file) alone.
    interval = (
        df.with_columns(
            _seq_open=pl.when(pl.col("_is_open"))
            .then(pl.col("_seq"))
            .otherwise(None)
            .forward_fill()
            .over(keys)
        )
        .filter(pl.col("_seq_open").is_not_null())
        .group_by([*keys, "_seq_open"])
        .agg(
            pl.col("_seq").max().alias("_seq_max"),
            _ms_to_ts(pl.col("_vt").max()).alias("_valid_max"),
        )
    )
    return rows.join(interval, on=[*keys, "_seq_open"], how="left", nulls_equal=True)


def unavailable_marker(
    column: str, dtype: pl.DataType, placeholders: Sequence[str]
) -> pl.Expr | None:
    """True where ``column`` holds one of ``placeholders`` (never null): the value was not
    sent, not set to null. Only a type a placeholder fits can hold one: a string, bytes (its
    UTF-8 bytes) or a list of either (the placeholder as its one element), as Debezium sends
    it for ``text``/``varchar``/``json``/``bytea`` and arrays. None: ``column`` cannot."""
    if not placeholders:
        return None
    texts = list(placeholders)
    raw = [t.encode() for t in texts]
    col = pl.col(column)
    if dtype == pl.String:
        return col.is_in(texts).fill_null(False)
    if dtype == pl.Binary:
        return col.is_in(raw).fill_null(False)
    if isinstance(dtype, pl.List) and dtype.inner in (pl.String, pl.Binary):
        inner = texts if dtype.inner == pl.String else raw
        return ((col.list.len() == 1) & col.list.first().is_in(inner)).fill_null(False)
    return None


def _markers(frame: pl.DataFrame, spec: Scd2Spec) -> dict[str, pl.Expr]:
    return {
        c: m
        for c in spec.columns
        if (m := unavailable_marker(c, frame.schema[c], spec.unavailable)) is not None
    }


def _resolve_unavailable(df: pl.DataFrame, spec: Scd2Spec) -> pl.DataFrame:
    """Each placeholder (sorted events) replaced by the value its column had before it: the
    key's previous event's, in sequence order, placeholders passed over (a delete before it
    leaves null: a deleted key has no values). With no earlier event the value is unknown:
    null (the writers quarantine such a record before it lands, see
    :func:`unresolvable_unavailable`)."""
    marks = _markers(df, spec)
    if marks:  # only the columns that hold one (usually none: one pass to know)
        held = df.select(m.any().alias(c) for c, m in marks.items()).row(0, named=True)
        marks = {c: m for c, m in marks.items() if held[c]}
    if not marks:
        return df
    keys = list(spec.keys)
    flags = {c: f"_ua_{i}" for i, c in enumerate(marks)}
    groups = {c: f"_ug_{i}" for i, c in enumerate(marks)}
    df = df.with_columns(marks[c].alias(flags[c]) for c in marks)
    # A column's group: the events since its last real value (group 0: none before).
    df = df.with_columns(
        (~pl.col(flags[c])).cast(pl.Int64).cum_sum().over(keys).alias(groups[c]) for c in marks
    )
    return df.with_columns(
        pl.when(pl.col(flags[c]) & (pl.col(groups[c]) == 0))
        .then(None)
        .when(pl.col(flags[c]))
        .then(pl.col(c).first().over([*keys, groups[c]]))
        .otherwise(pl.col(c))
        .alias(c)
        for c in marks
    ).drop(*flags.values(), *groups.values())


def unavailable_counts(changes: pl.DataFrame, spec: Scd2Spec) -> dict[str, int]:
    """How many of the change events hold a placeholder, per column (columns with none left
    out): the ``cdc_unavailable_values_total`` metric."""
    marks = _markers(changes, spec)
    if not marks or changes.height == 0:
        return {}
    upsert = pl.col("_op") == "U"
    row = changes.select((m & upsert).sum().alias(c) for c, m in marks.items()).row(0, named=True)
    return {c: int(n) for c, n in row.items() if n}


def unavailable_error(columns: str) -> str:
    """The quarantine ``error`` of a record :func:`unresolvable_unavailable` found."""
    return (
        f"{columns}: the placeholder for an unchanged (TOASTed) value, and the key has no"
        " earlier version to take the value from"
    )


def unresolvable_unavailable(
    changes: pl.DataFrame, with_rows: pl.DataFrame, spec: Scd2Spec
) -> pl.DataFrame:
    """The batch's upserts holding a placeholder that no value can stand for: their key has no
    row in the dimension (``with_rows``: keys that have one, current or not) and no upsert
    without placeholders before them in the batch (sequence order). They are quarantined
    before anything lands (docs/scd2.md, "Unchanged values").

    Returns:
        ``_source_partition``, ``_source_offset`` and ``_columns`` (the placeholders' columns,
        comma-separated) of each such record.
    """
    marks = _markers(changes, spec)
    if not marks or changes.height == 0:
        return pl.DataFrame(
            schema={
                "_source_partition": pl.Int32,
                "_source_offset": pl.Int64,
                "_columns": pl.String,
            }
        )
    keys = list(spec.keys)
    upsert = pl.col("_op") == "U"
    held = pl.any_horizontal(list(marks.values())) & upsert
    clean = (upsert & ~pl.col("_held")).cast(pl.Int64)
    ordered = changes.sort([*keys, "_seq"]).with_columns(_held=held)
    candidates = ordered.with_columns(_clean_before=clean.cum_sum().over(keys) - clean).filter(
        pl.col("_held") & (pl.col("_clean_before") == 0)
    )
    if with_rows.height:
        candidates = candidates.join(
            with_rows.select(keys).unique(), on=keys, how="anti", nulls_equal=True
        )
    named = [pl.when(m).then(pl.lit(c)) for c, m in marks.items()]
    return candidates.select(
        sequence.decode_partition(pl.col("_seq")).alias("_source_partition"),
        sequence.decode_offset(pl.col("_seq")).alias("_source_offset"),
        pl.concat_str(named, separator=",", ignore_nulls=True).alias("_columns"),
    )


def _event_time_ms() -> pl.Expr:
    """An event's own time (epoch ms): its sequence time, or the valid time a row rebuilt into
    it already holds (``_floor``), whichever is later. A key's clock is their running max."""
    return pl.max_horizontal(sequence.decode_time_ms(pl.col("_seq")), pl.col("_floor"))


def apply_scd2(
    existing: pl.DataFrame,
    changes: pl.DataFrame,
    spec: Scd2Spec,
    history: pl.DataFrame | None = None,
    seen: pl.DataFrame | None = None,
    late: pl.DataFrame | None = None,
) -> Scd2Result:
    """Apply change events to the existing rows of the keys they touch.

    Keys whose changes all follow everything the table has seen for them fold onto their
    latest row only (the common, in-order case: older versions are not touched). Keys in
    :func:`late_keys` are rebuilt from ``history`` — every event ever received for them —
    so the result equals the one-pass fold over all events in sequence order, whatever the
    arrival order and batch boundaries. Without ``history`` they are rebuilt from their rows,
    which is exact except for information the table does not keep (docs/scd2.md).

    Args:
        existing: dimension rows (layout of :attr:`Scd2Spec.row_columns`) of the keys in
            ``changes``: all of a key's rows. Rows of other keys are ignored.
        changes: events with the key and business columns, ``_op`` (``U``/``D``), ``_seq``
            (see :func:`encode_sequence`), ``_source_topic`` and optionally ``_tombstone``
            (a null Kafka value; placed after the key's previous record, see
            :func:`_place_tombstones`).
        spec: keys, business columns and tracked columns.
        history: events (same layout as ``changes``) of at least the late keys: everything
            received for them so far; may include ``changes`` themselves.
        seen: orphan markers (keys and :data:`ORPHAN_COLUMNS`) kept for keys that have no
            row (previous results' :attr:`Scd2Result.orphans`).
        late: :func:`late_keys` of these ``existing``, ``changes`` and ``seen``, when the
            caller already computed it (None: computed here).

    Returns:
        The rows to upsert and the row identities to delete, plus counts.
    """
    keys = list(spec.keys)
    ev_cols = _event_columns(spec)
    changes = _with_tombstone_flag(changes).select(ev_cols)
    affected = changes.select(keys).unique()
    existing = _as_rows(existing, spec).join(affected, on=keys, how="semi", nulls_equal=True)
    if seen is not None:
        seen = _as_seen(seen, spec).join(affected, on=keys, how="semi", nulls_equal=True)
    if late is None:
        late = late_keys(existing, changes, spec, seen)
    in_order = affected.join(late, on=keys, how="anti", nulls_equal=True)
    latest = _latest_rows(existing.join(in_order, on=keys, how="semi", nulls_equal=True), keys)
    late_rows = existing.join(late, on=keys, how="semi", nulls_equal=True)
    # In-order keys: the latest row stands for the key's past. Late keys: their full history.
    if history is not None:
        past = _with_tombstone_flag(history).select(ev_cols)
        covered = late.join(past.select(keys).unique(), on=keys, how="semi", nulls_equal=True)
        past = past.join(covered, on=keys, how="semi", nulls_equal=True)
        uncovered = late_rows.join(covered, on=keys, how="anti", nulls_equal=True)
    else:
        past = changes.clear()
        uncovered = late_rows
    existing = pl.concat([latest, late_rows], how="vertical_relaxed")
    # A key without rows whose deletes were seen: those deletes, as the no-op events they were.
    orphan_deletes = (
        seen.join(existing.select(keys).unique(), on=keys, how="anti", nulls_equal=True)
        .join(
            covered if history is not None else late.clear(), on=keys, how="anti", nulls_equal=True
        )
        .pipe(
            _rebuilt_deletes,
            spec,
            "_seq_max",
            changes.schema,
            pl.lit(None, dtype=pl.String).alias("_source_topic"),
            pl.col("_valid_max").dt.epoch("ms"),  # the key's clock then
        )
        if seen is not None
        else changes.clear()
    )
    real = {"_pseudo": pl.lit(False), "_content_ok": pl.lit(True)}
    marks = ["_pseudo", "_content_ok"]
    old_events = pl.concat(
        [
            _events_from_rows(pl.concat([latest, uncovered]), spec).select(*ev_cols, *marks),
            past.with_columns(**real),
            orphan_deletes.select(ev_cols).with_columns(
                _pseudo=pl.lit(True), _content_ok=pl.lit(True)
            ),
        ],
        how="vertical_relaxed",
    )
    # Known events first: an event already applied is a no-op when re-delivered.
    all_events = _place_tombstones(
        pl.concat([old_events, changes.with_columns(**real)], how="vertical_relaxed"), spec
    )
    all_events = _dedupe(all_events, spec)
    rebuilt = _fold(all_events, spec)

    identity = [*keys, "_seq_open"]
    old = existing.rename({c: f"{c}__old" for c in existing.columns if c not in identity})
    joined = rebuilt.join(old, on=identity, how="left", nulls_equal=True)
    compare = [c for c in rebuilt.columns if c not in identity]
    exists = pl.col("_seq_last__old").is_not_null()
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}__old")) for c in compare])
    flagged = joined.with_columns(_exists=exists, _differs=differs)
    changed = flagged.filter(~pl.col("_exists") | pl.col("_differs"))
    upserts = changed.select(rebuilt.columns)
    deletes = existing.join(rebuilt, on=identity, how="anti", nulls_equal=True).select(
        *identity, "is_current"
    )

    inserted = int(changed.filter(~pl.col("_exists")).height)
    updated = int(changed.height - inserted)
    closed = int(
        changed.filter(
            ~pl.col("is_current")
            & (~pl.col("_exists") | pl.col("is_current__old").fill_null(False))
        ).height
    )
    # Events already known, or repeated within the batch, change nothing.
    known = old_events.select(*keys, "_seq").unique()
    duplicates = (
        changes.height
        - changes.unique(subset=[*keys, "_seq"])
        .join(known, on=[*keys, "_seq"], how="anti", nulls_equal=True)
        .height
    )
    orphans = (
        all_events.join(rebuilt.select(keys).unique(), on=keys, how="anti", nulls_equal=True)
        .group_by(keys)
        .agg(
            pl.col("_seq").max().alias("_seq_max"),
            _ms_to_ts(_event_time_ms().max()).alias("_valid_max"),
        )
    )
    return Scd2Result(
        orphans=orphans,
        upserts=upserts,
        was_current=changed.get_column("is_current__old"),
        deletes=deletes,
        inserted=inserted,
        updated=updated,
        closed=closed,
        duplicate_events=duplicates,
        affected_keys=affected.height,
    )


@dataclass(frozen=True)
class FoldPass:
    """One pass of a batch's fold: what could be folded with the rows given, and what not.

    A writer folds a batch in up to three passes, each reading more for fewer keys (see
    :func:`fold_pass`): the current rows of every key of the batch; then every row of the keys
    that had no current row or were late; then, for late keys, their event history too.

    Attributes:
        result: the rows to write for the keys folded in this pass.
        existing: the rows of those keys the pass was given (the MERGE's targets and their
            neighbours: with :attr:`result`, what the keys hold after the MERGE).
        need_rows: keys to fold again with every row they have (no current row was given:
            deleted before, or new).
        need_history: keys to fold again with every row and every event received for them
            (late: see :func:`late_keys`).
        late: late keys folded in this pass.
    """

    result: Scd2Result
    existing: pl.DataFrame
    need_rows: pl.DataFrame
    need_history: pl.DataFrame
    late: int

    @property
    def pending(self) -> pl.DataFrame:
        """Keys another pass must fold (:attr:`need_rows` and :attr:`need_history`)."""
        return pl.concat([self.need_rows, self.need_history]).unique()


def fold_pass(
    existing: pl.DataFrame,
    changes: pl.DataFrame,
    spec: Scd2Spec,
    *,
    complete: bool,
    seen: pl.DataFrame | None = None,
    history: pl.DataFrame | None = None,
) -> FoldPass:
    """Fold the keys of ``changes`` that the rows given are enough for; name the others.

    The rule both writers follow, so that each reads only what a key needs: a key whose
    changes all follow its current row folds onto that row alone (the common case); a key
    given no row may have been deleted before (its latest row is history) and needs all its
    rows; a late key (:func:`late_keys`) needs all its rows and its full event history.

    Args:
        existing: dimension rows of (some of) the keys of ``changes``: only current rows
            (``complete=False``), or every row of each key.
        changes: the batch's change events of the keys to fold.
        spec: the dimension's spec.
        complete: ``existing`` holds every row of its keys, and a key without rows has none.
        seen: orphan markers of the keys (keys and :data:`ORPHAN_COLUMNS`).
        history: every event received for some keys (from bronze): a late key among them
            is folded with it; other late keys are named in :attr:`FoldPass.need_history`.

    Returns:
        The pass's result and the keys left for another pass.
    """
    keys = list(spec.keys)
    changes = _with_tombstone_flag(changes)
    affected = changes.select(keys).unique()
    existing = _as_rows(existing, spec).join(affected, on=keys, how="semi", nulls_equal=True)
    with_rows = existing.select(keys).unique()
    need_rows = (
        affected.clear()
        if complete
        else affected.join(with_rows, on=keys, how="anti", nulls_equal=True)
    )
    ready = affected.join(need_rows, on=keys, how="anti", nulls_equal=True)
    ready_changes = changes.join(ready, on=keys, how="semi", nulls_equal=True)
    late = late_keys(existing, ready_changes, spec, seen)
    covered = history.select(keys).unique() if history is not None else affected.clear()
    need_history = late.join(covered, on=keys, how="anti", nulls_equal=True)
    fold = ready.join(need_history, on=keys, how="anti", nulls_equal=True)
    folded = existing.join(fold, on=keys, how="semi", nulls_equal=True)
    result = apply_scd2(
        folded,
        changes.join(fold, on=keys, how="semi", nulls_equal=True),
        spec,
        history=history,
        seen=seen,
        late=late.join(fold, on=keys, how="semi", nulls_equal=True),
    )
    return FoldPass(
        result=result,
        existing=folded,
        need_rows=need_rows,
        need_history=need_history,
        late=late.height - need_history.height,
    )


def post_merge_rows(existing: pl.DataFrame, result: Scd2Result, spec: Scd2Spec) -> pl.DataFrame:
    """What the keys of ``existing`` hold once ``result`` is merged (the rows a fold was given,
    with its upserts in place and its deletes gone): what the after-batch check reads, with
    no second read of the table."""
    identity = [*spec.keys, "_seq_open"]
    touched = pl.concat(
        [result.upserts.select(identity), result.deletes.select(identity)], how="vertical_relaxed"
    )
    kept = _as_rows(existing, spec).join(touched, on=identity, how="anti", nulls_equal=True)
    return pl.concat([kept, result.upserts.select(spec.row_columns)], how="vertical_relaxed")


def merge_source(result: Scd2Result) -> pl.DataFrame:
    """The MERGE source of a result: its upserts (``U``) and deletes (``D``), each with the
    partition of the row it rewrites (:data:`WAS_CURRENT_COLUMN`)."""
    upserts = result.upserts.with_columns(
        pl.lit("U").alias(ACTION_COLUMN),
        result.was_current.fill_null(True).alias(WAS_CURRENT_COLUMN),
    )
    deletes = result.deletes.with_columns(
        pl.lit("D").alias(ACTION_COLUMN), pl.col("is_current").alias(WAS_CURRENT_COLUMN)
    )
    return pl.concat([upserts, deletes], how="diagonal_relaxed").select(upserts.columns)


def touches_history(source: pl.DataFrame) -> bool:
    """Whether a :func:`merge_source` rewrites a history row (else the MERGE may read the
    current partition alone)."""
    return bool(source.height) and not source.get_column(WAS_CURRENT_COLUMN).all()
