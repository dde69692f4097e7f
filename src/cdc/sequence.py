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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import polars as pl

from cdc.errors import ConfigError

if TYPE_CHECKING:
    from cdc.config import Settings

__all__ = [
    "CONNECTOR_POSITIONS",
    "FIELD_WIDTH",
    "SUFFIX_WIDTH",
    "FieldKind",
    "Ordering",
    "PositionField",
    "check_table_layout",
    "decode_offset",
    "decode_partition",
    "decode_time_ms",
    "encode",
    "ordering_for",
    "position_prefix",
    "sequence_position",
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


def _binlog_file(expr: pl.Expr) -> pl.Expr:
    """``mysql-bin.000010`` → its index 10, as a number (null when the name has no index)."""
    return _number(expr.str.extract(r"\.(\d{1,18})$", 1).cast(pl.Int64, strict=False))


def _sqlserver_lsn(expr: pl.Expr) -> pl.Expr:
    """``0000002A:00000758:0005`` → 20 lowercase hex digits (null when malformed)."""
    hexed = expr.str.to_lowercase()
    ok = hexed.str.contains(r"^[0-9a-f]{8}:[0-9a-f]{8}:[0-9a-f]{4}$")
    return pl.when(ok).then(hexed.str.replace_all(":", "")).otherwise(None)


def _field(value: pl.Expr, schema: pl.Schema, f: PositionField, required: bool) -> pl.Expr:
    """One position field, encoded (null where the record has no value for it)."""
    dtype = (
        _require_dtype(schema, "value", f.path) if required else _dtype_at(schema, "value", f.path)
    )
    if dtype is None:
        return pl.lit(None, dtype=pl.String)
    expr = _path(value, f.path)
    kind = f.kind
    if kind == "auto":
        if isinstance(dtype, (pl.Datetime, pl.Date)):
            kind = "time"
        elif dtype.is_integer():
            kind = "number"
        else:
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

    Args:
        time_ms: source time in epoch milliseconds (non-negative).
        partition: Kafka partition.
        offset: Kafka offset.
        position: the encoded position with its dots (:func:`sequence_position`), or None.
    """
    suffix = pl.concat_str(
        time_ms.cast(pl.Int64).cast(pl.String).str.zfill(_TS_WIDTH),
        partition.cast(pl.Int64).cast(pl.String).str.zfill(_PART_WIDTH),
        offset.cast(pl.Int64).cast(pl.String).str.zfill(_OFF_WIDTH),
        separator=".",
    )
    return suffix if position is None else pl.concat_str(position, suffix)


def position_prefix(seq: pl.Expr) -> pl.Expr:
    """The position part of a sequence (empty in the legacy layout)."""
    return seq.str.head(-SUFFIX_WIDTH)


def decode_time_ms(seq: pl.Expr) -> pl.Expr:
    """The time part of a sequence, epoch milliseconds."""
    return seq.str.slice(-SUFFIX_WIDTH, _TS_WIDTH).cast(pl.Int64)


def decode_partition(seq: pl.Expr) -> pl.Expr:
    """The Kafka partition of a sequence."""
    return seq.str.slice(-(_PART_WIDTH + _OFF_WIDTH + 1), _PART_WIDTH).cast(pl.Int32)


def decode_offset(seq: pl.Expr) -> pl.Expr:
    """The Kafka offset of a sequence."""
    return seq.str.tail(_OFF_WIDTH).cast(pl.Int64)


def check_table_layout(settings: Settings, name: str) -> None:
    """Refuse to fold a pipeline's changes onto a dimension sequenced another way.

    Sequences of different layouts do not compare (a table written before source positions
    existed holds ``time.partition.offset``): folding new changes onto it would order them
    wrongly without a sign. The check reads one row.

    Raises:
        ConfigError: the silver table's sequences have another width than the pipeline's.
    """
    from cdc.lake import table_paths
    from cdc.store import store_for

    pipeline = settings.pipeline(name)
    if pipeline.kind != "scd2":
        return
    ordering = ordering_for(pipeline.sequence_by, pipeline.source_format)
    uri = table_paths(settings, pipeline)["silver"]
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    if not store.exists(uri) or "_seq_open" not in store.columns(uri):
        return
    found = store.query(uri, "SELECT length(_seq_open) AS n FROM t LIMIT 1").column("n")
    if not len(found) or found[0].as_py() in (None, ordering.width):
        return
    width = found[0].as_py()
    held = "source time, partition, offset" if width == SUFFIX_WIDTH else f"{width} characters"
    raise ConfigError(
        f"pipeline {name}: {pipeline.target} was sequenced by another sequence_by ({held}) than"
        f" the pipeline's now ({ordering.describe()}): set pipelines.{name}.sequence_by to"
        " what the table was built with (source.ts_ms for tables from before source positions),"
        " or rebuild it into a new lake root from the earliest offsets"
    )
