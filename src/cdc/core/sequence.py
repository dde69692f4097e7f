"""The order of a key's changes: a typed sequence, encoded as a string that sorts like it.

A change's *sequence* decides which of two changes of a key came first. It is the tuple

    (position..., time, Kafka partition, Kafka offset)

encoded as one fixed-width string (``_seq``) whose text order is the tuple's order, so that
Polars, Spark and Delta can sort and compare it as a plain column:

- *position*: where the source database wrote the change, in its own terms. By default it
  follows Debezium's ``source`` block per connector (:data:`CONNECTOR_POSITIONS`):
  PostgreSQL ``(lsn, txId)``, MySQL/MariaDB ``(file, pos, row)`` with the binlog file compared
  by its index, SQL Server ``(commit_lsn, change_lsn, event_serial_no)`` with LSNs compared as
  numbers. Other connectors, and records whose connector fields are null, have the zero
  position: they are ordered by time. ``sequence_by`` in the pipeline config names the
  position's fields instead (a composite, typed key).
- *time*: the change's source time (``source.ts_ms``, or the Kafka timestamp when absent):
  the tie-break after the position, and the value ``valid_from``/``valid_to`` are made of.
- Kafka partition and offset: the last tie-break (a record's own identity).

Every number is compared as a number (never as text: ``mysql-bin.000010`` follows
``mysql-bin.000009``, LSN ``0000002a:…`` follows ``00000027:…``).

Layouts:

- *legacy* (``sequence_by`` a single path, e.g. ``source.ts_ms`` or ``effective_at``): no
  position, the path's value is the time: ``TTTTTTTTTTTTTTT.PPPPPP.OOOOOOOOOOOOOOOOOOO``
  (42 characters), the layout of tables written before positions existed.
- *positioned*: ``N`` position fields of :data:`FIELD_WIDTH` characters, each followed by a dot,
  then the legacy layout. The default (by connector) has 3 fields.

Time, partition and offset are always the last 42 characters, so they are decoded from the
end whatever the layout (:func:`decode_time_ms`, :func:`decode_partition`,
:func:`decode_offset`).

What a sequence can hold: any signed 64-bit position number, SQL Server LSN and binlog index
up to 18 digits; a time from 1970-01-01 (epoch 0) to 9999-12-31 (:data:`MAX_TIME_MS`, the last
millisecond a Delta timestamp holds: valid times are made of it); a Kafka partition up to
:data:`MAX_PARTITION` and any offset from 0. A record with a value outside that, or a source
time outside its pipeline's window (:class:`TimeWindow`), is quarantined where it is decoded
(:class:`SequenceCheck`, run by :class:`cdc.ingest.decoder.TopicDecoder`): never encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

import polars as pl

from cdc.errors import ConfigError

if TYPE_CHECKING:
    from cdc.config.settings import PipelineSettings, Settings

__all__ = [
    "CONNECTOR_POSITIONS",
    "FIELD_WIDTH",
    "MAX_BINLOG_DIGITS",
    "MAX_PARTITION",
    "MAX_TIME_MS",
    "POSITION_OUT_OF_RANGE",
    "SOURCE_TIME_OUT_OF_RANGE",
    "SUFFIX_WIDTH",
    "FieldKind",
    "Ordering",
    "PositionField",
    "SequenceCheck",
    "TimeWindow",
    "decode_offset",
    "decode_partition",
    "decode_time_ms",
    "encode",
    "ordering_for",
    "position_and_time",
    "position_prefix",
    "sequence_position",
    "time_path",
]

FieldKind = Literal["auto", "number", "time", "binlog_file", "sqlserver_lsn"]
"""How a position field compares: ``number`` (integers), ``time`` (timestamps and dates, as
epoch milliseconds), ``binlog_file`` (a MySQL binlog file name, by the index after its last
dot), ``sqlserver_lsn`` (``xxxxxxxx:xxxxxxxx:xxxx`` hex, as one 80-bit number); ``auto``
takes ``number`` or ``time`` from the field's type (text needs an explicit kind)."""

FIELD_WIDTH = 20
"""Characters per position field: an unsigned 64-bit number in decimal, or an 80-bit LSN in
hex, zero-padded."""
_TS_WIDTH, _PART_WIDTH, _OFF_WIDTH = 15, 6, 19
SUFFIX_WIDTH = _TS_WIDTH + _PART_WIDTH + _OFF_WIDTH + 2
"""Characters of ``time.partition.offset`` at the end of every sequence."""
_ZERO = "0" * FIELD_WIDTH
_SIGN = 1 << 63
MAX_TIME_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the last millisecond a Delta timestamp (and Spark's, and
Python's) holds; the sequence's 15 time digits would hold more, valid times could not."""
MAX_PARTITION = 10**_PART_WIDTH - 1
"""The greatest Kafka partition the sequence's partition digits hold."""
MAX_BINLOG_DIGITS = 18
"""Significant digits of a binlog file index the sequence holds (a signed 64-bit number)."""
SOURCE_TIME_OUT_OF_RANGE = "source_time_out_of_range"
"""Quarantine reason: a record's source time (or a time in its position) lies outside what
its pipeline accepts (:class:`TimeWindow`) or what a sequence can hold."""
POSITION_OUT_OF_RANGE = "position_out_of_range"
"""Quarantine reason: a record's position (a binlog index, its Kafka partition or offset)
does not fit the sequence."""


@dataclass(frozen=True)
class PositionField:
    """One field of a position: a dotted path inside the record's value, and how it compares."""

    path: str
    kind: FieldKind = "auto"


CONNECTOR_POSITIONS: dict[str, tuple[PositionField, ...]] = {
    "postgresql": (
        PositionField("source.lsn", "number"),
        PositionField("source.txId", "number"),
    ),
    "mysql": (
        PositionField("source.file", "binlog_file"),
        PositionField("source.pos", "number"),
        PositionField("source.row", "number"),
    ),
    "sqlserver": (
        PositionField("source.commit_lsn", "sqlserver_lsn"),
        PositionField("source.change_lsn", "sqlserver_lsn"),
        PositionField("source.event_serial_no", "number"),
    ),
}
"""Debezium's position fields per ``source.connector`` (MariaDB shares MySQL's binlog)."""
CONNECTOR_POSITIONS["mariadb"] = CONNECTOR_POSITIONS["mysql"]
_AUTO_FIELDS = max(len(f) for f in CONNECTOR_POSITIONS.values())


@dataclass(frozen=True)
class Ordering:
    """How a pipeline orders its changes (resolved from ``sequence_by``).

    Attributes:
        legacy_path: the single path whose value is both order and time (legacy layout).
        fields: the position fields of a composite ``sequence_by``.
        by_connector: the position follows ``source.connector`` (the envelope default).
    """

    legacy_path: str | None = None
    fields: tuple[PositionField, ...] = ()
    by_connector: bool = False

    @property
    def width(self) -> int:
        """Characters of every sequence this ordering encodes."""
        n = _AUTO_FIELDS if self.by_connector else len(self.fields)
        return n * (FIELD_WIDTH + 1) + SUFFIX_WIDTH

    def describe(self) -> str:
        """One phrase for messages: what the sequence is made of."""
        if self.legacy_path is not None:
            return self.legacy_path
        if self.by_connector:
            return "the connector's position (source.lsn/txId, file/pos/row, commit_lsn/...)"
        return ", ".join(f.path for f in self.fields)


class _FieldLike(Protocol):
    path: str
    kind: FieldKind


SequenceBy = str | Sequence[str | _FieldLike] | None


def ordering_for(sequence_by: SequenceBy, source_format: str) -> Ordering:
    """The ordering of a pipeline's ``sequence_by`` setting.

    Args:
        sequence_by: None (envelope: by connector), one path (legacy layout), or a list of
            paths / :class:`PositionField` (a composite position).
        source_format: ``envelope`` or ``flat``.
    """
    if sequence_by is None:
        if source_format != "envelope":
            raise ConfigError("a flat scd2 pipeline needs sequence_by")
        return Ordering(by_connector=True)
    if isinstance(sequence_by, str):
        return Ordering(legacy_path=sequence_by)
    fields = tuple(
        PositionField(f) if isinstance(f, str) else PositionField(f.path, f.kind)
        for f in sequence_by
    )
    if not fields:
        raise ConfigError("sequence_by: an empty list orders nothing")
    return Ordering(fields=fields)


# --------------------------------------------------------------------------- field encoding


def _path(root: pl.Expr, path: str) -> pl.Expr:
    expr = root
    for part in path.split("."):
        expr = expr.struct.field(part)
    return expr


def _dtype_at(schema: pl.Schema, root: str, path: str) -> pl.DataType | None:
    """The dtype of ``path`` inside column ``root``, None when a step is missing."""
    dtype: pl.DataType = schema[root]
    for part in path.split("."):
        if not isinstance(dtype, pl.Struct):
            return None
        fields: dict[str, pl.DataType] = {f.name: f.dtype for f in dtype.fields}  # type: ignore[misc]
        if part not in fields:
            return None
        dtype = fields[part]
    return dtype


def _require_dtype(schema: pl.Schema, root: str, path: str) -> pl.DataType:
    dtype = _dtype_at(schema, root, path)
    if dtype is None:
        raise ConfigError(f"sequence_by {path!r}: no such field in the record's value")
    return dtype


def epoch_ms(expr: pl.Expr, dtype: pl.DataType, path: str) -> pl.Expr:
    """A time-like or integer field as epoch milliseconds (Int64)."""
    if isinstance(dtype, pl.Datetime):
        return expr.dt.epoch("ms")
    if isinstance(dtype, pl.Date):
        return expr.cast(pl.Datetime("ms")).dt.epoch("ms")
    if dtype.is_integer():
        return expr.cast(pl.Int64)
    raise ConfigError(
        f"sequence_by {path!r} has type {dtype}; expected a timestamp, date or integer"
    )


def _number(expr: pl.Expr) -> pl.Expr:
    """A signed 64-bit integer as 20 digits that sort like the number (sign bit flipped)."""
    flipped = expr.cast(pl.Int64).reinterpret(signed=False) ^ pl.lit(_SIGN, dtype=pl.UInt64)
    return flipped.cast(pl.String).str.zfill(FIELD_WIDTH)


_BINLOG_INDEX = rf"\.0*(\d{{1,{MAX_BINLOG_DIGITS}}})$"
_BINLOG_TOO_LONG = rf"\.0*[1-9]\d{{{MAX_BINLOG_DIGITS},}}$"


def _binlog_file(expr: pl.Expr) -> pl.Expr:
    """``mysql-bin.000010`` → its index 10, as a number (null when the name has no index)."""
    return _number(expr.str.extract(_BINLOG_INDEX, 1).cast(pl.Int64, strict=False))


def _sqlserver_lsn(expr: pl.Expr) -> pl.Expr:
    """``0000002A:00000758:0005`` → 20 lowercase hex digits (null when malformed)."""
    hexed = expr.str.to_lowercase()
    ok = hexed.str.contains(r"^[0-9a-f]{8}:[0-9a-f]{8}:[0-9a-f]{4}$")
    return pl.when(ok).then(hexed.str.replace_all(":", "")).otherwise(None)


def _resolved_kind(f: PositionField, dtype: pl.DataType) -> FieldKind:
    """The field's kind, ``auto`` resolved from its type (still ``auto`` for text)."""
    if f.kind != "auto":
        return f.kind
    if isinstance(dtype, (pl.Datetime, pl.Date)):
        return "time"
    return "number" if dtype.is_integer() else "auto"


def time_path(ordering: Ordering, source_format: str, schema: pl.Schema) -> str | None:
    """The path in the value whose value is each record's sequence time.

    The legacy path; ``source.ts_ms`` of an envelope; else a flat record's first position
    field of kind time. None: the Kafka timestamp is the time. Where the path's value is null
    the Kafka timestamp stands in too.

    Args:
        ordering: the pipeline's ordering.
        source_format: ``envelope`` or ``flat``.
        schema: the batch's schema (a ``value`` struct column).
    """
    if ordering.legacy_path is not None:
        return ordering.legacy_path
    if source_format == "envelope":
        return "source.ts_ms"
    for f in ordering.fields:
        dtype = _dtype_at(schema, "value", f.path)
        if f.kind == "time" or (dtype is not None and _resolved_kind(f, dtype) == "time"):
            return f.path
    return None


def _field(value: pl.Expr, schema: pl.Schema, f: PositionField, required: bool) -> pl.Expr:
    """One position field, encoded (null where the record has no value for it)."""
    dtype = (
        _require_dtype(schema, "value", f.path) if required else _dtype_at(schema, "value", f.path)
    )
    if dtype is None:
        return pl.lit(None, dtype=pl.String)
    expr = _path(value, f.path)
    kind = _resolved_kind(f, dtype)
    if kind == "auto":
        raise ConfigError(
            f"sequence_by {f.path!r} has type {dtype}: text is never compared as text; "
            "give it a kind (binlog_file, sqlserver_lsn) or name a number or time field"
        )
    if kind == "time":
        return _number(epoch_ms(expr, dtype, f.path))
    if kind == "number":
        if not dtype.is_integer():
            raise ConfigError(
                f"sequence_by {f.path!r} has type {dtype}; kind number needs an integer"
            )
        return _number(expr)
    if dtype != pl.String:
        raise ConfigError(f"sequence_by {f.path!r} has type {dtype}; kind {kind} needs a string")
    return _binlog_file(expr) if kind == "binlog_file" else _sqlserver_lsn(expr)


def sequence_position(ordering: Ordering, schema: pl.Schema) -> pl.Expr | None:
    """The position part of each record's sequence (fields and their dots), or None (legacy).

    Args:
        ordering: the pipeline's ordering.
        schema: the batch's schema (a ``value`` struct column).
    """
    if ordering.legacy_path is not None:
        return None
    value = pl.col("value")
    if ordering.fields:
        parts = [_field(value, schema, f, required=True) for f in ordering.fields]
        return pl.concat_str([p.fill_null(_ZERO) + "." for p in parts])
    connector = (
        _path(value, "source.connector")
        if _dtype_at(schema, "value", "source.connector") == pl.String
        else pl.lit(None, dtype=pl.String)
    )
    slots: list[pl.Expr] = []
    for i in range(_AUTO_FIELDS):
        expr: pl.Expr = pl.lit(None, dtype=pl.String)
        for name, fields in CONNECTOR_POSITIONS.items():
            if i < len(fields):
                encoded = _field(value, schema, fields[i], required=False)
                expr = pl.when(connector == name).then(encoded).otherwise(expr)
        slots.append(expr.fill_null(_ZERO) + ".")
    return pl.concat_str(slots)


def encode(
    time_ms: pl.Expr, partition: pl.Expr, offset: pl.Expr, position: pl.Expr | None = None
) -> pl.Expr:
    """The sequence string of ``(position..., time, partition, offset)``.

    Values outside what the layout holds (see the module's docstring) never reach here: the
    decoder quarantines their records. Should one come from a table written before that check
    (a bronze row read back as history), it is clamped into the layout's range, which keeps
    every sequence its width and every valid time a timestamp.

    Args:
        time_ms: source time in epoch milliseconds (0 to :data:`MAX_TIME_MS`).
        partition: Kafka partition (0 to :data:`MAX_PARTITION`).
        offset: Kafka offset (non-negative).
        position: the encoded position with its dots (:func:`sequence_position`), or None.
    """

    def digits(expr: pl.Expr, high: int | None, width: int) -> pl.Expr:
        clamped = expr.cast(pl.Int64).clip(0, high)
        return clamped.cast(pl.String).str.zfill(width)

    suffix = pl.concat_str(
        digits(time_ms, MAX_TIME_MS, _TS_WIDTH),
        digits(partition, MAX_PARTITION, _PART_WIDTH),
        digits(offset, None, _OFF_WIDTH),
        separator=".",
    )
    return suffix if position is None else pl.concat_str(position, suffix)


def position_prefix(seq: pl.Expr) -> pl.Expr:
    """The position part of a sequence (empty in the legacy layout)."""
    return seq.str.head(-SUFFIX_WIDTH)


def position_and_time(seq: pl.Expr) -> pl.Expr:
    """A sequence without its Kafka partition and offset: what the source says of the change
    (a resend of it has the same), sorting like ``(position..., time)``."""
    return seq.str.head(-(_PART_WIDTH + _OFF_WIDTH + 2))


def decode_time_ms(seq: pl.Expr) -> pl.Expr:
    """The time part of a sequence, epoch milliseconds."""
    return seq.str.slice(-SUFFIX_WIDTH, _TS_WIDTH).cast(pl.Int64)


def decode_partition(seq: pl.Expr) -> pl.Expr:
    """The Kafka partition of a sequence."""
    return seq.str.slice(-(_PART_WIDTH + _OFF_WIDTH + 1), _PART_WIDTH).cast(pl.Int32)


def decode_offset(seq: pl.Expr) -> pl.Expr:
    """The Kafka offset of a sequence."""
    return seq.str.tail(_OFF_WIDTH).cast(pl.Int64)


# --------------------------------------------------------------------------- what fits


@dataclass(frozen=True)
class TimeWindow:
    """The source times a pipeline accepts, in epoch milliseconds.

    Attributes:
        not_before_ms: the earliest (never below 0, 1970-01-01: the sequence's floor).
        max_ahead_ms: how far past the checking clock a time may lie (None: up to
            :data:`MAX_TIME_MS`).
    """

    not_before_ms: int = 0
    max_ahead_ms: int | None = 86_400_000

    def bounds(self, now_ms: int) -> tuple[int, int]:
        """``(earliest, latest)`` accepted at ``now_ms``, within what a sequence holds."""
        latest = MAX_TIME_MS if self.max_ahead_ms is None else now_ms + self.max_ahead_ms
        return max(0, self.not_before_ms), max(0, min(MAX_TIME_MS, latest))


_OK = pl.lit(None, dtype=pl.String)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SequenceCheck:
    """Which records of a pipeline have a sequence that can be encoded, and why others do not.

    Run by the decoder (:class:`cdc.ingest.decoder.TopicDecoder`) on every decoded record, so both
    writers get the same verdict: a record whose sequence time (or a time in its position)
    lies outside the window, whose binlog index has more than :data:`MAX_BINLOG_DIGITS`
    digits, or whose Kafka partition or offset the layout cannot hold is quarantined with
    :data:`SOURCE_TIME_OUT_OF_RANGE` or :data:`POSITION_OUT_OF_RANGE`. Number fields need no
    check: every signed 64-bit number has its encoding.

    Attributes:
        ordering: the pipeline's ordering.
        source_format: ``envelope`` or ``flat``.
        window: the source times it accepts.
    """

    ordering: Ordering
    source_format: str
    window: TimeWindow = TimeWindow()

    @classmethod
    def of(cls, settings: Settings, pipeline: PipelineSettings) -> SequenceCheck | None:
        """The check of an SCD2 pipeline (None for facts, which have no sequence).

        Its window is ``defaults.source_time_window`` with the keys the pipeline's own
        ``source_time_window`` sets.
        """
        if pipeline.kind != "scd2":
            return None
        window = settings.defaults.source_time_window
        if pipeline.source_time_window is not None:
            own = pipeline.source_time_window.model_dump(exclude_unset=True)
            window = window.model_copy(update=own)
        ahead = window.max_ahead_seconds
        return cls(
            ordering_for(pipeline.sequence_by, pipeline.source_format),
            pipeline.source_format,
            TimeWindow(
                not_before_ms=int(window.not_before.timestamp() * 1000),
                max_ahead_ms=None if ahead is None else int(ahead * 1000),
            ),
        )

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path in the value the check may read."""
        fields = self.ordering.fields
        if self.ordering.by_connector:
            fields = (PositionField("source.connector"), *CONNECTOR_POSITIONS["mysql"])
        legacy = (self.ordering.legacy_path,) if self.ordering.legacy_path else ()
        envelope = ("source.ts_ms",) if self.source_format == "envelope" else ()
        return tuple(dict.fromkeys((*legacy, *envelope, *(f.path for f in fields))))

    def violations(self, records: pl.DataFrame, now_ms: int) -> pl.DataFrame:
        """Per record, why its sequence cannot be encoded (null where it can).

        Args:
            records: decoded records: ``partition``, ``offset``, ``timestamp`` (the Kafka
                timestamp) and ``value`` (a struct; null for a tombstone). The value needs
                only the fields of :attr:`paths`; a missing one is taken as null (a bad
                ``sequence_by`` is the writer's error to report).
            now_ms: the checking clock (epoch ms), for the window's future bound.

        Returns:
            Columns ``code`` (:data:`SOURCE_TIME_OUT_OF_RANGE` or
            :data:`POSITION_OUT_OF_RANGE`) and ``error`` (one line), one row per record.
        """
        schema = records.schema
        lo, hi = self.window.bounds(now_ms)
        accepted = f"the accepted source times (source_time_window), {_iso(lo)} to {_iso(hi)}"
        value = pl.col("value")
        kafka_ms = pl.col("timestamp").dt.epoch("ms")
        checks: list[tuple[pl.Expr, str, pl.Expr]] = []

        def outside(ms: pl.Expr) -> pl.Expr:
            return (ms < lo) | (ms > hi)

        kafka_bad = kafka_ms.is_null() | outside(kafka_ms)
        tombstone = value.is_null()
        checks.append(
            (
                tombstone & kafka_bad,
                SOURCE_TIME_OUT_OF_RANGE,
                _time_text("the tombstone's Kafka timestamp", kafka_ms, accepted),
            )
        )
        path = time_path(self.ordering, self.source_format, schema)
        own = None if path is None else _time_ms_or_null(value, schema, path)
        if path is None or own is None:
            text = _time_text("the Kafka timestamp", kafka_ms, accepted)
            checks.append((kafka_bad, SOURCE_TIME_OUT_OF_RANGE, text))
        else:
            text = _time_text(f"{path} is null and the Kafka timestamp", kafka_ms, accepted)
            checks += [
                (outside(own), SOURCE_TIME_OUT_OF_RANGE, _time_text(path, own, accepted)),
                (own.is_null() & kafka_bad, SOURCE_TIME_OUT_OF_RANGE, text),
            ]
        for f in self.ordering.fields:
            dtype = _dtype_at(schema, "value", f.path)
            if f.path == path or dtype is None or _resolved_kind(f, dtype) != "time":
                continue
            ms = _time_ms_or_null(value, schema, f.path)
            if ms is not None:
                text = _time_text(f.path, ms, accepted)
                checks.append((outside(ms), SOURCE_TIME_OUT_OF_RANGE, text))
        checks += self._binlog_checks(schema)
        partition, offset = pl.col("partition"), pl.col("offset")
        checks += [
            (
                (partition < 0) | (partition > MAX_PARTITION),
                POSITION_OUT_OF_RANGE,
                pl.format(
                    "Kafka partition {} is outside 0 to {}, what a sequence holds",
                    partition,
                    pl.lit(MAX_PARTITION),
                ),
            ),
            (
                offset < 0,
                POSITION_OUT_OF_RANGE,
                pl.format("Kafka offset {} is negative", offset),
            ),
        ]
        code, error = _OK, _OK
        for bad, reason, text in reversed(checks):  # the first failing check decides
            code = pl.when(bad.fill_null(False)).then(pl.lit(reason)).otherwise(code)
            error = pl.when(bad.fill_null(False)).then(text).otherwise(error)
        return records.select(code.alias("code"), error.alias("error"))

    def _binlog_checks(self, schema: pl.Schema) -> list[tuple[pl.Expr, str, pl.Expr]]:
        """Binlog file names whose index has more digits than a sequence holds."""
        value = pl.col("value")
        if self.ordering.by_connector:
            connector = (
                _path(value, "source.connector")
                if _dtype_at(schema, "value", "source.connector") == pl.String
                else pl.lit(None, dtype=pl.String)
            )
            applies = connector.is_in(["mysql", "mariadb"])
            fields = [f for f in CONNECTOR_POSITIONS["mysql"] if f.kind == "binlog_file"]
        else:
            applies = pl.lit(True)
            fields = [f for f in self.ordering.fields if f.kind == "binlog_file"]
        out = []
        for f in fields:
            if _dtype_at(schema, "value", f.path) != pl.String:
                continue
            name = _path(value, f.path)
            out.append(
                (
                    applies & name.str.contains(_BINLOG_TOO_LONG),
                    POSITION_OUT_OF_RANGE,
                    pl.format(
                        "{} {} has a binlog index of more than {} digits, which a sequence"
                        " cannot hold",
                        pl.lit(f.path),
                        name,
                        pl.lit(MAX_BINLOG_DIGITS),
                    ),
                )
            )
        return out


def _time_ms_or_null(value: pl.Expr, schema: pl.Schema, path: str) -> pl.Expr | None:
    """A time field as epoch ms, as the sequence reads it (None: no such time field)."""
    dtype = _dtype_at(schema, "value", path)
    if dtype is None:
        return None
    try:
        return epoch_ms(_path(value, path), dtype, path)
    except ConfigError:
        return None


def _iso(ms: int) -> str:
    """``2026-01-05T08:00:00.000Z``."""
    when = _EPOCH + timedelta(milliseconds=ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


_MIN_SHOWN_MS = -62_135_596_800_000
"""0001-01-01T00:00:00Z: times from here to :data:`MAX_TIME_MS` are shown as dates."""


def _time_text(what: str, ms: pl.Expr, accepted: str) -> pl.Expr:
    """``<what> <ms> (<as a time>) is outside <accepted>``; a null time is "absent"."""
    shown = (
        pl.from_epoch(ms.clip(_MIN_SHOWN_MS, MAX_TIME_MS), "ms")
        .dt.replace_time_zone("UTC")
        .dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ")
    )
    readable = (ms >= _MIN_SHOWN_MS) & (ms <= MAX_TIME_MS)
    shown = pl.when(readable).then(shown).otherwise(pl.lit("not a date of the years 1 to 9999"))
    return (
        pl.when(ms.is_null())
        .then(pl.lit(f"{what} is absent: nothing gives the record a time"))
        .otherwise(pl.format(f"{what} {{}} ({{}}) is outside {accepted}", ms, shown))
    )
