"""Kafka Connect's semantic types (Debezium's) decoded into the Delta types they stand for.

Debezium writes a column's meaning beside its Avro type (``connect.name``): a PostgreSQL
``timestamp`` is a ``long`` of microseconds (``io.debezium.time.MicroTimestamp``), a ``date``
an ``int`` of days, a ``numeric`` without a declared scale a record of the scale and the
unscaled bytes (``io.debezium.data.VariableScaleDecimal``). Read as their Avro types they land
as numbers nobody can query, or (a ``decimal.handling.mode=double`` workaround) lose digits.
The decoder maps each to its Delta type, exactly, after it has decoded and validated a batch
(:meth:`SemanticTypes.convert`); a value that does not fit its type (more digits than the
configured ``decimal(p, s)`` holds, a time no Delta timestamp holds, a ``ZonedTimestamp`` that
is not one) sends its record to quarantine as ``value_out_of_range``, never a rounded value.
The table of every type and what it becomes is ``docs/reference/debezium-types.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from cdc.ingest.registry import AvroType

__all__ = [
    "DEFAULT_DECIMAL",
    "SEMANTIC_TYPES",
    "VARIABLE_SCALE_DECIMAL",
    "SemanticTypes",
]

VARIABLE_SCALE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
DEFAULT_DECIMAL = (38, 10)
"""``decimal(precision, scale)`` of a ``VariableScaleDecimal`` column no contract names."""

_MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_DAY_US = 86_400_000_000

SEMANTIC_TYPES: dict[str, tuple[str, str]] = {
    "io.debezium.time.Date": ("int: days since 1970-01-01", "date"),
    "io.debezium.time.Timestamp": ("long: ms since the epoch, no time zone", "timestamp_ntz"),
    "io.debezium.time.MicroTimestamp": ("long: µs since the epoch, no time zone", "timestamp_ntz"),
    "io.debezium.time.NanoTimestamp": (
        "long: ns since the epoch, no time zone",
        "timestamp_ntz (µs: the nanoseconds below a µs are dropped, Delta holds µs)",
    ),
    "io.debezium.time.ZonedTimestamp": (
        "string: ISO-8601 with an offset",
        "timestamp (UTC instant)",
    ),
    "io.debezium.time.Time": ("int: ms since midnight", "long: µs since midnight"),
    "io.debezium.time.MicroTime": ("long: µs since midnight", "long: µs since midnight"),
    "io.debezium.time.NanoTime": (
        "long: ns since midnight",
        "long: µs since midnight (below a µs dropped)",
    ),
    VARIABLE_SCALE_DECIMAL: (
        "record {scale: int, value: bytes}",
        "decimal(p, s) from the contract's `decimals` (default 38, 10)",
    ),
}
"""Each semantic type the decoder maps: (what Debezium writes, what lands in Delta)."""


@dataclass(frozen=True)
class _Leaf:
    kind: str  # a connect name, or "time-millis"/"time-micros"
    decimal: tuple[int, int] | None = None


class SemanticTypes:
    """The conversions of one schema (key or value): which leaves, and into what.

    Args:
        node: the reader schema.
        decimals: ``decimal(precision, scale)`` per ``VariableScaleDecimal`` field name;
            ``default`` for the others (else :data:`DEFAULT_DECIMAL`).
    """

    def __init__(self, node: AvroType, decimals: Mapping[str, tuple[int, int]]) -> None:
        self._decimals = dict(decimals)
        self._found = False
        self._plan = self._walk(node, "")

    @property
    def empty(self) -> bool:
        """No leaf to convert: the decoded values are already their Delta types."""
        return not self._found

    def arrow_type(self, raw: pa.DataType) -> pa.DataType:
        """The type ``raw`` (the schema's Avro mapping) becomes."""
        return _type(self._plan, raw)

    def convert(self, array: pa.Array) -> tuple[pa.Array, list[str | None]]:
        """Convert a decoded column (struct or leaf) of :meth:`arrow_type`'s input.

        Returns:
            The converted column (a row that failed holds null) and, per row, why its value
            does not fit its type (None: it fits).
        """
        errors: list[str | None] = [None] * len(array)
        return _convert(self._plan, array, "", errors), errors

    def _walk(self, node: AvroType, path: str) -> Any:
        if node.kind == "union":
            others = node.non_null_branches()
            return self._walk(others[0], path) if len(others) == 1 else None
        name = node.connect_name
        if node.kind == "record" and VARIABLE_SCALE_DECIMAL in (name, node.name):
            self._found = True
            leaf = path.rsplit(".", 1)[-1]
            dec = self._decimals.get(leaf, self._decimals.get("default", DEFAULT_DECIMAL))
            return _Leaf(VARIABLE_SCALE_DECIMAL, dec)
        if node.kind == "record":
            fields = {f.name: self._walk(f.type, f"{path}.{f.name}") for f in node.fields}
            return fields if any(v is not None for v in fields.values()) else None
        if node.kind == "array":
            assert node.items is not None
            inner = self._walk(node.items, path)
            return ("list", inner) if inner is not None else None
        if name in SEMANTIC_TYPES:
            self._found = True
            return _Leaf(name)
        if node.logical in ("time-millis", "time-micros"):  # Connect's Time: Delta has none
            self._found = True
            return _Leaf(node.logical)
        return None


def _type(plan: Any, raw: pa.DataType) -> pa.DataType:
    if plan is None:
        return raw
    if isinstance(plan, dict):
        fields = [
            pa.field(f.name, _type(plan.get(f.name), f.type), nullable=f.nullable) for f in raw
        ]
        return pa.struct(fields)
    if isinstance(plan, tuple):
        item = raw.value_field
        return pa.list_(pa.field(item.name, _type(plan[1], item.type), nullable=item.nullable))
    assert isinstance(plan, _Leaf)
    kind = plan.kind
    if kind == VARIABLE_SCALE_DECIMAL:
        assert plan.decimal is not None
        precision, scale = plan.decimal
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(*plan.decimal)
    if kind == "io.debezium.time.Date":
        return pa.date32()
    if kind == "io.debezium.time.ZonedTimestamp":
        return pa.timestamp("us", tz="UTC")
    if kind.endswith("Timestamp"):
        return pa.timestamp("us")
    return pa.int64()  # the times of day


def _convert(plan: Any, array: pa.Array, path: str, errors: list[str | None]) -> pa.Array:
    if plan is None:
        return array
    if isinstance(plan, dict):
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        # flatten: each child with the struct's offset and nulls applied (a null struct's
        # children may hold anything, e.g. '' where fastavro's rows had no record).
        children = [
            _convert(plan.get(f.name), child, f"{path}.{f.name}", errors)
            for f, child in zip(array.type, array.flatten(), strict=True)
        ]
        fields = [
            pa.field(f.name, c.type, nullable=f.nullable)
            for f, c in zip(array.type, children, strict=True)
        ]
        return pa.StructArray.from_arrays(children, fields=fields, mask=array.is_null())
    if isinstance(plan, tuple):  # a list: convert its values, keep its offsets
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        start, end = int(offsets[0]), int(offsets[-1])
        inner: list[str | None] = [None] * (end - start)
        values = _convert(plan[1], array.values.slice(start, end - start), path + "[]", inner)
        out = pa.ListArray.from_arrays(
            pa.array(offsets - start, pa.int32()), values, mask=array.is_null()
        )
        owner = np.searchsorted(offsets, np.arange(start, end), side="right") - 1
        for k, e in enumerate(inner):
            if e is not None and errors[int(owner[k])] is None:
                errors[int(owner[k])] = e
        return out
    assert isinstance(plan, _Leaf)
    return _leaf(plan, array, path.lstrip("."), errors)


def _fail(errors: list[str | None], i: int, text: str) -> None:
    if errors[i] is None:
        errors[i] = text


def _leaf(plan: _Leaf, array: pa.Array, path: str, errors: list[str | None]) -> pa.Array:
    kind = plan.kind
    if kind == VARIABLE_SCALE_DECIMAL:
        return _decimal(plan, array, path, errors)
    if kind == "io.debezium.time.Date":
        return array.cast(pa.int32()).cast(pa.date32())
    if kind == "io.debezium.time.ZonedTimestamp":
        return _zoned(array, path, errors)
    if kind.endswith("Timestamp"):
        unit = {"io.debezium.time.Timestamp": 1000, "io.debezium.time.MicroTimestamp": 1}
        micros = _micros(array, kind, unit.get(kind))
        return _bounded(
            micros, path, errors, _MIN_US, _MAX_US, "a timestamp of the years 1 to 9999"
        ).cast(pa.timestamp("us"))
    # Times of day, as µs since midnight.
    if kind in ("time-millis", "time-micros"):
        if pa.types.is_time(array.type):
            array = array.view(pa.int32() if pa.types.is_time32(array.type) else pa.int64())
        micros = _checked_multiply(array.cast(pa.int64()), 1000 if kind == "time-millis" else 1)
    else:
        unit = {"io.debezium.time.Time": 1000, "io.debezium.time.MicroTime": 1}
        micros = _micros(array, kind, unit.get(kind))
    return _bounded(micros, path, errors, 0, _DAY_US, "a time of day")


def _micros(array: pa.Array, kind: str, multiply: int | None) -> pa.Array:
    values = array.cast(pa.int64())
    if multiply is None:  # nanoseconds: floor to the microsecond
        return _floor_div(values, 1000)
    return _checked_multiply(values, multiply)


def _floor_div(values: pa.Array, by: int) -> pa.Array:
    out = [None if v is None else v // by for v in values.to_pylist()]
    return pa.array(out, pa.int64())


def _checked_multiply(values: pa.Array, by: int) -> pa.Array:
    if by == 1:
        return values
    out: list[int | None] = []
    for v in values.to_pylist():
        if v is None:
            out.append(None)
        else:
            w = v * by
            out.append(w if -(2**63) <= w < 2**63 else (_MAX_US + 1 if w > 0 else _MIN_US - 1))
    return pa.array(out, pa.int64())


def _bounded(
    micros: pa.Array, path: str, errors: list[str | None], lo: int, hi: int, what: str
) -> pa.Array:
    out: list[int | None] = []
    for i, v in enumerate(micros.to_pylist()):
        if v is not None and not lo <= v <= hi:
            _fail(errors, i, f"{path}: {v} µs is not {what}")
            out.append(None)
        else:
            out.append(v)
    return pa.array(out, pa.int64())


def _zoned(array: pa.Array, path: str, errors: list[str | None]) -> pa.Array:
    out: list[datetime | None] = []
    for i, text in enumerate(array.to_pylist()):
        if text is None:
            out.append(None)
            continue
        try:
            out.append(_parse_zoned(text))
        except ValueError:
            _fail(errors, i, f"{path}: {text[:60]!r} is not an ISO-8601 timestamp with an offset")
            out.append(None)
    return pa.array(out, pa.timestamp("us", tz="UTC"))


def _parse_zoned(text: str) -> datetime:
    """An ISO-8601 timestamp with an offset (``Z`` or ``±hh:mm``), fractions to the µs."""
    body = text.strip()
    if "." in body:  # Python reads at most 6 fraction digits: keep the µs, drop the rest
        head, _, rest = body.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        body = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    parsed = datetime.fromisoformat(body.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no offset")
    return parsed.astimezone(UTC)


def _decimal(plan: _Leaf, array: pa.Array, path: str, errors: list[str | None]) -> pa.Array:
    assert plan.decimal is not None
    precision, scale = plan.decimal
    kind = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    out: list[Decimal | None] = []
    for i, item in enumerate(array.to_pylist()):
        if item is None or item.get("value") is None:
            out.append(None)
            continue
        unscaled = int.from_bytes(item["value"], "big", signed=True)
        own = int(item.get("scale") or 0)
        if own > scale:  # more places than the column keeps: exact only with zeros there
            unscaled, rest = divmod(unscaled, 10 ** (own - scale))
            if rest:
                exact = Decimal(int.from_bytes(item["value"], "big", signed=True)).scaleb(-own)
                _fail(errors, i, f"{path}: {exact} has more than {scale} decimal places")
                out.append(None)
                continue
        else:
            unscaled *= 10 ** (scale - own)
        if abs(unscaled) >= 10**precision:
            shown = Decimal(unscaled).scaleb(-scale)
            _fail(errors, i, f"{path}: {shown} does not fit decimal({precision}, {scale})")
            out.append(None)
            continue
        out.append(Decimal(unscaled).scaleb(-scale))
    return pa.array(out, kind)
