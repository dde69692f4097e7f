"""Which column types a Delta table widens to (Delta type widening's safe changes).

Pure: Arrow types in, Arrow types out. :mod:`cdc.ingest.schema_changes` classifies a new
schema version's columns with :func:`compare_types`; the stores widen their tables with
:func:`widened_schema` (each rewrites the table once with these types).
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

__all__ = ["compare_types", "widened_schema"]

TypeChange = Literal["widened", "narrowed", "retyped"]

_INTEGERS = (pa.int8(), pa.int16(), pa.int32(), pa.int64())


def _normal(kind: pa.DataType) -> pa.DataType:
    """One Arrow type per Delta type (readers differ in string, binary and list layouts)."""
    if kind in (pa.large_string(), pa.string_view()):
        return pa.string()
    if kind in (pa.large_binary(), pa.binary_view()):
        return pa.binary()
    if pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        return pa.list_(kind.value_type)
    return kind


def compare_types(old: pa.DataType, new: pa.DataType) -> TypeChange | None:
    """None: the same type; else widened, narrowed or retyped."""
    old, new = _normal(old), _normal(new)
    if old == new:
        return None
    if old in _INTEGERS and new in _INTEGERS:
        return "widened" if _INTEGERS.index(new) > _INTEGERS.index(old) else "narrowed"
    if old == pa.float32() and new == pa.float64():
        return "widened"
    if old == pa.float64() and new == pa.float32():
        return "narrowed"
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        wider = new.scale >= old.scale and new.precision - new.scale >= old.precision - old.scale
        return "widened" if wider else "narrowed"
    if pa.types.is_struct(old) and pa.types.is_struct(new):
        inner = [
            compare_types(old.field(f.name).type, f.type)
            for f in new
            if old.get_field_index(f.name) >= 0
        ]
        gone = any(new.get_field_index(f.name) < 0 for f in old)
        if gone or "retyped" in inner or "narrowed" in inner:
            return "retyped"
        return "widened"
    if pa.types.is_list(old) and pa.types.is_list(new):
        inner_kind = compare_types(old.value_type, new.value_type)
        return inner_kind if inner_kind in (None, "widened") else "retyped"
    return "retyped"


def _widen(held: pa.DataType, incoming: pa.DataType) -> pa.DataType:
    if pa.types.is_struct(held) and pa.types.is_struct(incoming):
        fields = []
        for f in held:
            i = incoming.get_field_index(f.name)
            kind = f.type if i < 0 else _widen(f.type, incoming.field(i).type)
            fields.append(f.with_type(kind))
        return pa.struct(fields)
    if pa.types.is_list(held) and pa.types.is_list(incoming):
        return pa.list_(held.value_field.with_type(_widen(held.value_type, incoming.value_type)))
    if compare_types(held, incoming) == "widened":
        return incoming
    return held


def widened_schema(held: pa.Schema, incoming: pa.Schema) -> pa.Schema | None:
    """The table's schema with every column, or field nested in a struct or list, whose
    incoming type is wider (:func:`compare_types`) given that type; None when nothing widens.

    Only the held columns are looked at (the incoming side may have more, or fewer: adding
    and dropping are other changes); a type that narrows or changes otherwise is kept.
    """
    fields = []
    for f in held:
        i = incoming.get_field_index(f.name)
        fields.append(f if i < 0 else f.with_type(_widen(f.type, incoming.field(i).type)))
    widened = pa.schema(fields, metadata=held.metadata)
    return None if widened.equals(held) else widened

