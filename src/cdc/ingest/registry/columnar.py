"""Decode many Avro bodies of one schema straight into one Arrow array, vectorised with numpy.

fastavro decodes one datum at a time into Python dicts, which the decoder then turns into
Arrow: about 25 µs per Debezium envelope, most of the source's CPU. Here every field is read
for all records of a batch at once (one numpy operation per field over the batch: varints,
string slices, union branches), and the Arrow arrays are built from the resulting buffers;
no Python object is made per record.

It is a fast path, not a second implementation of the Avro rules: it accepts a record only
when its bytes are well-formed beyond doubt (every read inside the record, varints of at most
10 bytes, booleans 0 or 1, union and enum indices in range, valid UTF-8, logical values that
fastavro can represent, no trailing bytes). Every other record is flagged, and the caller
decodes the flagged records with fastavro, which decides what they are. For accepted records
the result equals what fastavro + ``pyarrow.array`` produce (tested against fastavro).

Supported: null, boolean, int, long, float, double, bytes, string, enum, fixed, records,
unions, ``timestamp-millis``/``timestamp-micros``, ``date`` and ``decimal`` (precision up to 18)
logical types, when the writer schema is the reader schema. Schemas with arrays, maps, wider
decimals, times, UUIDs or local timestamps, and writers that need schema resolution, are left
to fastavro (:func:`columnar_reader` returns None).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cdc.ingest.registry._avro import AvroType

__all__ = ["ColumnarReader", "columnar_reader"]

_Ints = npt.NDArray[np.int64]
_Bools = npt.NDArray[np.bool_]
_Bytes = npt.NDArray[np.uint8]

_PAD = 16
"""Zero bytes after the data: a varint or a double read at any in-record position stays inside."""
_STEPS = np.arange(10, dtype=np.int64)
_SHIFTS = (np.arange(10, dtype=np.uint64) * np.uint64(7)).astype(np.uint64)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# What fastavro's logical readers can represent as datetime/date (years 1..9999).
_MIN_MILLIS, _MAX_MILLIS = -62_135_596_800_000, 253_402_300_799_999
_MIN_MICROS, _MAX_MICROS = -62_135_596_800_000_000, 253_402_300_799_999_999
_MIN_DAYS, _MAX_DAYS = -719_162, 2_932_896


class _Unsupported(Exception):
    """The schema has a type the columnar path does not read (fastavro reads it)."""


class _Cursor:
    """The batch's bytes, each record's end, and the records found not to be clean."""

    __slots__ = ("bad", "data", "end")

    def __init__(self, data: _Bytes, end: _Ints) -> None:
        self.data = data
        self.end = end
        self.bad = np.zeros(len(end), dtype=np.bool_)

    def fail(self, rows: _Ints, mask: _Bools) -> None:
        if mask.any():
            self.bad[rows[mask]] = True

    def clamp(self, rows: _Ints, pos: _Ints) -> _Ints:
        """Positions past their record's end mark it bad and stop at the end."""
        end = self.end[rows]
        over = pos > end
        if over.any():
            self.bad[rows[over]] = True
            pos = np.minimum(pos, end)
        return pos


def _varint(c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[npt.NDArray[np.uint64], _Ints]:
    """Unsigned varints at ``pos`` (before zig-zag) and the positions after them."""
    first = c.data[pos]
    n = first.astype(np.uint64)
    more = first >= 0x80
    if not more.any():
        return n, c.clamp(rows, pos + 1)
    length = np.ones(len(pos), dtype=np.int64)
    sel = np.flatnonzero(more)
    window = c.data[pos[sel, None] + _STEPS]
    stops = window < 0x80
    last = stops.argmax(axis=1)
    ok = stops[np.arange(len(sel)), last]
    # A 10th byte may carry only bit 63; fastavro drops any more bits, so leave those to it.
    ok &= ~((last == 9) & (window[:, 9] > 1))
    keep = _STEPS[None, :] <= last[:, None]
    parts = (window & 0x7F).astype(np.uint64) << _SHIFTS[None, :]
    n[sel] = np.where(keep, parts, np.uint64(0)).sum(axis=1, dtype=np.uint64)
    length[sel] = last + 1
    c.fail(rows[sel], ~ok)
    return n, c.clamp(rows, pos + length)


def _zigzag(n: npt.NDArray[np.uint64]) -> _Ints:
    one = np.uint64(1)
    return ((n >> one) ^ (np.uint64(0) - (n & one))).view(np.int64)


def _long(c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[_Ints, _Ints]:
    n, pos = _varint(c, rows, pos)
    return _zigzag(n), pos


def _gather(c: _Cursor, rows: _Ints, pos: _Ints, lengths: _Ints) -> tuple[_Ints, _Bytes, _Ints]:
    """Copy ``lengths`` bytes at ``pos`` of each row: (offsets, bytes, positions after)."""
    end = c.end[rows]
    bad = (lengths < 0) | (lengths > end - pos)
    if bad.any():
        c.fail(rows, bad)
        lengths = np.where(bad, 0, lengths)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return offsets, np.zeros(0, dtype=np.uint8), pos + lengths
    index = np.repeat(pos - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return offsets, c.data[index], pos + lengths


def _binary_array(typ: pa.DataType, offsets: _Ints, data: _Bytes, count: int) -> pa.Array:
    if offsets[-1] > _INT32_MAX:
        raise _Unsupported("more than 2 GiB of one column in one batch")
    return pa.Array.from_buffers(
        typ,
        count,
        [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
        null_count=0,
    )


class _Node(ABC):
    """Reads one schema node for a set of rows."""

    @abstractmethod
    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        """Decode this node for ``rows`` at byte offsets ``pos``: values, new offsets."""


class _Null(_Node):
    def __init__(self, typ: pa.DataType) -> None:
        self.typ = typ

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        return pa.nulls(len(rows), self.typ), pos


class _Boolean(_Node):
    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        byte = c.data[pos]
        c.fail(rows, byte > 1)  # fastavro reads any non-zero byte as true; let it decide
        return pa.array(byte == 1, pa.bool_()), c.clamp(rows, pos + 1)


class _Integer(_Node):
    """int/long and their timestamp/date logical types."""

    def __init__(self, typ: pa.DataType, kind: str, logical: str | None) -> None:
        self.typ = typ
        self.kind = kind
        self.logical = logical
        bounds: dict[str | None, tuple[int, int]] = {
            "timestamp-millis": (_MIN_MILLIS, _MAX_MILLIS),
            "timestamp-micros": (_MIN_MICROS, _MAX_MICROS),
            "date": (_MIN_DAYS, _MAX_DAYS),
        }
        if logical in bounds:
            self.bounds: tuple[int, int] | None = bounds[logical]
        elif kind == "int":
            self.bounds = (_INT32_MIN, _INT32_MAX)  # fastavro does not check; pyarrow would fail
        else:
            self.bounds = None
        self.numpy_type = np.int32 if pa.types.is_int32(typ) or pa.types.is_date32(typ) else None

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        values, pos = _long(c, rows, pos)
        if self.bounds is not None:
            lo, hi = self.bounds
            out = (values < lo) | (values > hi)
            if out.any():
                c.fail(rows, out)
                values = np.where(out, 0, values)
        if self.logical == "timestamp-millis":
            values = values * 1000
        buffer = values.astype(self.numpy_type) if self.numpy_type is not None else values
        return pa.Array.from_buffers(
            self.typ, len(rows), [None, pa.py_buffer(buffer)], null_count=0
        ), pos


class _Floating(_Node):
    def __init__(self, typ: pa.DataType, size: int) -> None:
        self.typ = typ
        self.size = size
        self.steps = np.arange(size, dtype=np.int64)
        self.dtype = np.dtype("<f4") if size == 4 else np.dtype("<f8")

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        raw = np.ascontiguousarray(c.data[pos[:, None] + self.steps])
        values = raw.view(self.dtype).reshape(len(rows))
        return pa.Array.from_buffers(
            self.typ, len(rows), [None, pa.py_buffer(values)], null_count=0
        ), c.clamp(rows, pos + self.size)


class _Text(_Node):
    """bytes and string: a zig-zag length, then the bytes (UTF-8 for strings)."""

    def __init__(self, typ: pa.DataType, utf8: bool) -> None:
        self.typ = typ
        self.utf8 = utf8

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        lengths, pos = _long(c, rows, pos)
        offsets, data, pos = _gather(c, rows, pos, lengths)
        if self.utf8 and data.size and (data >= 0x80).any():
            _check_utf8(c, rows, offsets, data)
        return _binary_array(self.typ, offsets, data, len(rows)), pos


def _check_utf8(c: _Cursor, rows: _Ints, offsets: _Ints, data: _Bytes) -> None:
    try:
        _binary_array(pa.string(), offsets, data, len(rows)).validate(full=True)
    except pa.ArrowInvalid:
        raw = data.tobytes()
        for i in range(len(rows)):
            try:
                raw[offsets[i] : offsets[i + 1]].decode()
            except UnicodeDecodeError:
                c.bad[rows[i]] = True


class _Fixed(_Node):
    def __init__(self, typ: pa.DataType, size: int) -> None:
        self.typ = typ
        self.size = size

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        lengths = np.full(len(rows), self.size, dtype=np.int64)
        offsets, data, pos = _gather(c, rows, pos, lengths)
        return _binary_array(self.typ, offsets, data, len(rows)), pos


class _Decimal(_Node):
    """``decimal`` on bytes or fixed, for unscaled values of up to 8 bytes and precision 18.

    fastavro rounds a value with more digits than the precision (and pyarrow then refuses
    it); such values, and longer or wider ones, are left to fastavro.
    """

    def __init__(self, typ: pa.DataType, precision: int, size: int | None) -> None:
        self.typ = typ
        self.limit = 10**precision
        self.size = size
        self.steps = np.arange(8, dtype=np.int64)

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        if self.size is None:
            lengths, pos = _long(c, rows, pos)
        else:
            lengths = np.full(len(rows), self.size, dtype=np.int64)
        end = c.end[rows]
        bad = (lengths < 0) | (lengths > 8) | (lengths > end - pos)
        lengths = np.where(bad, 0, lengths)
        window = c.data[pos[:, None] + self.steps].astype(np.uint64)
        used = self.steps[None, :] < lengths[:, None]
        shifts = (8 * (lengths[:, None] - 1 - self.steps[None, :])).clip(0).astype(np.uint64)
        unsigned = np.where(used, window << shifts, np.uint64(0)).sum(axis=1, dtype=np.uint64)
        spare = (8 * (8 - lengths)).clip(0, 56).astype(np.uint64)
        values = np.where(
            lengths > 0, (unsigned << spare).view(np.int64) >> spare.view(np.int64), 0
        )
        bad |= (values <= -self.limit) | (values >= self.limit)
        c.fail(rows, bad)
        values = np.where(bad, 0, values)
        wide = np.empty((len(rows), 2), dtype=np.int64)
        wide[:, 0] = values
        wide[:, 1] = values >> 63
        return pa.Array.from_buffers(
            self.typ, len(rows), [None, pa.py_buffer(wide)], null_count=0
        ), c.clamp(rows, pos + lengths)


class _Enum(_Node):
    def __init__(self, typ: pa.DataType, symbols: Sequence[str]) -> None:
        self.typ = typ
        self.symbols = pa.array(list(symbols), typ)

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        index, pos = _long(c, rows, pos)
        out = (index < 0) | (index >= len(self.symbols))  # fastavro would wrap negatives
        c.fail(rows, out)
        return self.symbols.take(np.where(out, 0, index)), pos


class _Record(_Node):
    def __init__(self, typ: pa.StructType, fields: list[_Node]) -> None:
        self.typ = typ
        self.fields = fields
        self.arrow_fields = [typ.field(i) for i in range(typ.num_fields)]

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        children = []
        for node in self.fields:
            child, pos = node.read(c, rows, pos)
            children.append(child)
        return pa.StructArray.from_arrays(children, fields=self.arrow_fields), pos


class _Union(_Node):
    """A union whose non-null branches all map to the same Arrow type (Arrow has no unions)."""

    def __init__(self, typ: pa.DataType, branches: list[_Node | None]) -> None:
        self.typ = typ
        self.branches = branches
        """One reader per branch; None for ``null``."""

    def read(self, c: _Cursor, rows: _Ints, pos: _Ints) -> tuple[pa.Array, _Ints]:
        index, pos = _long(c, rows, pos)
        out = (index < 0) | (index >= len(self.branches))  # fastavro would wrap negatives
        c.fail(rows, out)
        index = np.where(out, -1, index)
        where = np.full(len(rows), -1, dtype=np.int64)
        parts: list[pa.Array] = []
        size = 0
        for number, node in enumerate(self.branches):
            if node is None:
                continue
            sel = np.flatnonzero(index == number)
            if not len(sel):
                continue
            part, pos[sel] = node.read(c, rows[sel], pos[sel])
            parts.append(part)
            where[sel] = np.arange(size, size + len(sel))
            size += len(sel)
        if size == len(rows) and len(parts) == 1:
            return parts[0], pos
        values = pa.concat_arrays(parts) if parts else pa.nulls(0, self.typ)
        return values.take(pa.array(where, mask=where < 0)), pos


def _build(node: AvroType, typ: pa.DataType) -> _Node:
    kind, logical = node.kind, node.logical
    if kind == "union":
        return _Union(typ, [None if b.kind == "null" else _build(b, typ) for b in node.branches])
    if kind == "record":
        if not isinstance(typ, pa.StructType) or typ.num_fields != len(node.fields):
            raise _Unsupported(f"record {node.name} does not match {typ}")
        return _Record(typ, [_build(f.type, typ.field(i).type) for i, f in enumerate(node.fields)])
    if logical == "decimal" and kind in ("bytes", "fixed"):
        assert node.precision is not None and node.scale is not None
        if node.precision > 18 or (node.size is not None and node.size > 8):
            raise _Unsupported(f"decimal({node.precision},{node.scale})")
        if not typ.equals(pa.decimal128(node.precision, node.scale)):
            raise _Unsupported(f"decimal as {typ}")
        return _Decimal(typ, node.precision, node.size if kind == "fixed" else None)
    if logical is not None and logical not in ("timestamp-millis", "timestamp-micros", "date"):
        raise _Unsupported(f"logical type {logical}")
    if kind == "null":
        return _Null(typ)
    if kind == "boolean":
        return _Boolean()
    if kind in ("int", "long"):
        expected = {
            "timestamp-millis": pa.timestamp("us", tz="UTC"),
            "timestamp-micros": pa.timestamp("us", tz="UTC"),
            "date": pa.date32(),
            None: pa.int32() if kind == "int" else pa.int64(),
        }[logical]
        if not typ.equals(expected):
            raise _Unsupported(f"{kind} as {typ}")
        return _Integer(typ, kind, logical)
    if kind in ("float", "double"):
        return _Floating(typ, 4 if kind == "float" else 8)
    if kind in ("bytes", "string"):
        return _Text(typ, utf8=kind == "string")
    if kind == "fixed":
        assert node.size is not None
        return _Fixed(typ, node.size)
    if kind == "enum":
        return _Enum(typ, node.symbols)
    raise _Unsupported(kind)


class ColumnarReader:
    """Decodes Avro bodies written with one schema into one Arrow array (see the module)."""

    def __init__(self, root: _Node) -> None:
        self._root = root

    def read(self, data: bytes | pa.Buffer, starts: _Ints, ends: _Ints) -> tuple[pa.Array, _Bools]:
        """Decode the bodies ``data[starts[i]:ends[i]]``.

        Args:
            data: the bytes that hold every body.
            starts: where each body begins.
            ends: where each body ends (exclusive).

        Returns:
            ``(array, bad)``: one value per body, and True where the value is not to be used
            (the body is not clean: decode it with fastavro instead).
        """
        count = len(starts)
        buffer = np.zeros(len(data) + _PAD, dtype=np.uint8)
        buffer[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        cursor = _Cursor(buffer, np.asarray(ends, dtype=np.int64))
        rows = np.arange(count, dtype=np.int64)
        array, pos = self._root.read(cursor, rows, np.asarray(starts, dtype=np.int64).copy())
        cursor.fail(rows, pos != cursor.end)  # trailing bytes
        return array, cursor.bad


def columnar_reader(schema: AvroType, arrow_type: pa.DataType) -> ColumnarReader | None:
    """A columnar reader of ``schema`` producing ``arrow_type``, or None when not supported.

    Args:
        schema: the writer schema (which must also be the reader schema).
        arrow_type: the Arrow type of the output (``avro_to_arrow_type`` of the schema).

    Returns:
        The reader, or None when the schema has a type only fastavro reads.
    """
    try:
        return ColumnarReader(_build(schema, arrow_type))
    except _Unsupported:
        return None
