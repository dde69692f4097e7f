"""What a new schema version does to the columns a table holds, and what the service does
about it (``schema_changes``, per pipeline or in ``defaults``).

A source DDL reaches the service as a new version of the value subject (the registry's
latest is the reader). Compared with the columns silver holds:

* **added** column: the tables evolve by themselves, bronze, quarantine, silver, gold and
  warehouse, with no restart;
* **widened** type (``int`` → ``long``, ``float`` → ``double``, a decimal with more digits on
  both sides of the point): the tables widen the column first, bronze (the field inside the
  value struct) and silver (:mod:`cdc.core.widening` says to what), then the batch lands;
* **dropped**, **renamed** (an Avro alias names the old column), **narrowed** or otherwise
  **retyped** column, a changed **key**: breaking, and the pipeline's ``schema_changes.breaking``
  decides: ``fail`` (the batch stops in one line naming the change and the versions; nothing is
  written), ``ignore`` (the table keeps its columns: a dropped one is null in new rows, a
  renamed one gets the new name as a new column, a narrowed value is written into the wider
  column).

Pure: Arrow types in, changes out (:func:`column_changes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from cdc.core.widening import compare_types as _compare
from cdc.errors import CdcError

__all__ = [
    "BREAKING",
    "SchemaChange",
    "SchemaChangeError",
    "column_changes",
    "describe",
    "key_changes",
]

Kind = Literal["added", "widened", "dropped", "renamed", "narrowed", "retyped", "key"]
BREAKING: frozenset[str] = frozenset({"dropped", "renamed", "narrowed", "retyped", "key"})


class SchemaChangeError(CdcError):
    """A breaking schema change under ``schema_changes.breaking: fail``."""


@dataclass(frozen=True)
class SchemaChange:
    """One column's change.

    Attributes:
        kind: what happened to it.
        column: the column (for a rename, its new name).
        detail: the types or the old name, for the message.
    """

    kind: Kind
    column: str
    detail: str = ""

    @property
    def breaking(self) -> bool:
        return self.kind in BREAKING

    def text(self) -> str:
        what = {
            "added": "adds",
            "widened": "widens",
            "dropped": "drops",
            "renamed": "renames",
            "narrowed": "narrows",
            "retyped": "changes the type of",
            "key": "changes the key",
        }[self.kind]
        detail = f" ({self.detail})" if self.detail else ""
        return f"{what} {self.column!r}{detail}"


def _label(kind: pa.DataType) -> str:
    names = {
        pa.int8(): "tinyint",
        pa.int16(): "smallint",
        pa.int32(): "int",
        pa.int64(): "long",
        pa.float32(): "float",
        pa.float64(): "double",
        pa.string(): "string",
        pa.large_string(): "string",
        pa.binary(): "bytes",
        pa.bool_(): "boolean",
        pa.date32(): "date",
    }
    return names.get(kind, str(kind))


def column_changes(
    held: pa.Schema,
    reader: pa.StructType,
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    ignore: Sequence[str] = (),
) -> list[SchemaChange]:
    """The changes from the columns a table holds to the reader's row.

    Args:
        held: the table's columns (those it writes from the row; system columns left out
            by ``ignore``).
        reader: the new reader's row (an envelope's ``after``, a flat record's value).
        aliases: per reader field, its Avro aliases (a former name: a rename).
        ignore: columns left out on both sides (system and lineage columns; the keys, which
            come from the Kafka key).

    Returns:
        One change per column that differs, in the reader's order, drops last.
    """
    aliases = aliases or {}
    skip = set(ignore)
    old = {f.name: f.type for f in held if f.name not in skip}
    changes: list[SchemaChange] = []
    renamed: set[str] = set()
    for f in reader:
        if f.name in skip:
            continue
        if f.name in old:
            kind = _compare(old[f.name], f.type)
            if kind is not None:
                detail = f"{_label(old[f.name])} → {_label(f.type)}"
                changes.append(SchemaChange(kind, f.name, detail))
            continue
        former = next((a for a in aliases.get(f.name, ()) if a in old), None)
        if former is not None:
            renamed.add(former)
            changes.append(SchemaChange("renamed", f.name, f"was {former!r}"))
        else:
            changes.append(SchemaChange("added", f.name, _label(f.type)))
    reader_names = {f.name for f in reader}
    for name, kind in old.items():
        if name not in reader_names and name not in renamed:
            changes.append(SchemaChange("dropped", name, _label(kind)))
    return changes


def key_changes(configured: Sequence[str], key: pa.StructType) -> list[SchemaChange]:
    """A changed key: a configured key column the key schema no longer has, or a key field
    the configuration does not name (the table's identity would differ)."""
    names = [f.name for f in key]
    missing = [k for k in configured if k not in names]
    extra = [n for n in names if n not in configured]
    if not missing and not extra:
        return []
    parts = []
    if missing:
        parts.append(f"no longer has {', '.join(missing)}")
    if extra:
        parts.append(f"now also has {', '.join(extra)}")
    return [SchemaChange("key", ",".join(configured), "; ".join(parts))]


def describe(changes: Sequence[SchemaChange]) -> str:
    """The changes in one phrase: ``drops 'phone' (string), widens 'age' (int → long)``."""
    return ", ".join(c.text() for c in changes)
