"""A resolved view of an Avro schema: named references replaced by the nodes they name.

The compatibility check, the Arrow mapping, the contract rules and the producer's JSON
conversion all walk schemas; they share this one parser so that namespaces, aliases and
logical types are interpreted the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cdc.errors import ConfigError

__all__ = ["AvroField", "AvroType", "parse_avro", "type_label"]

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})

# Logical types we honour, by the primitive they annotate. Others are ignored, as the
# Avro specification requires for unknown or misapplied logical types.
_LOGICAL_BASES: dict[str, frozenset[str]] = {
    "decimal": frozenset({"bytes", "fixed"}),
    "date": frozenset({"int"}),
    "time-millis": frozenset({"int"}),
    "time-micros": frozenset({"long"}),
    "timestamp-millis": frozenset({"long"}),
    "timestamp-micros": frozenset({"long"}),
    "local-timestamp-millis": frozenset({"long"}),
    "local-timestamp-micros": frozenset({"long"}),
    "uuid": frozenset({"string", "fixed"}),
}


@dataclass(eq=False)
class AvroField:
    """One field of a record."""

    name: str
    type: AvroType
    aliases: tuple[str, ...] = ()
    has_default: bool = False
    default: Any = None


@dataclass(eq=False)
class AvroType:
    """One node of a resolved schema; named types are shared (and may be recursive)."""

    kind: str
    """A primitive name, ``record``, ``enum``, ``fixed``, ``array``, ``map`` or ``union``."""
    logical: str | None = None
    precision: int | None = None
    scale: int | None = None
    name: str | None = None
    """Full name of a named type."""
    aliases: tuple[str, ...] = ()
    fields: list[AvroField] = field(default_factory=list)
    symbols: tuple[str, ...] = ()
    enum_default: str | None = None
    size: int | None = None
    items: AvroType | None = None
    """Element type of an array, value type of a map."""
    branches: list[AvroType] = field(default_factory=list)
    connect_name: str | None = None
    """Kafka Connect's semantic type of the node (``connect.name``, e.g.
    ``io.debezium.time.MicroTimestamp``), as Confluent's converter writes it."""

    @property
    def is_nullable_union(self) -> bool:
        """True for a union with a ``null`` branch."""
        return self.kind == "union" and any(b.kind == "null" for b in self.branches)

    def non_null_branches(self) -> list[AvroType]:
        """Branches of a union other than ``null``."""
        return [b for b in self.branches if b.kind != "null"]


def parse_avro(schema: Any) -> AvroType:
    """Resolve an Avro schema (parsed JSON) into :class:`AvroType` nodes.

    Args:
        schema: The schema as decoded from JSON (a dict, list or type name).

    Returns:
        The root node.

    Raises:
        ConfigError: The schema is malformed or references an undefined name.
    """
    return _Parser().parse(schema, "")


def type_label(node: AvroType) -> str:
    """A short human-readable name for a type, used in error messages."""
    if node.kind == "union":
        return "union[" + ", ".join(type_label(b) for b in node.branches) + "]"
    if node.kind == "array":
        assert node.items is not None
        return f"array<{type_label(node.items)}>"
    if node.kind == "map":
        assert node.items is not None
        return f"map<{type_label(node.items)}>"
    if node.logical == "decimal":
        return f"decimal({node.precision},{node.scale})"
    if node.logical is not None:
        return node.logical
    if node.kind in NAMED:
        return f"{node.kind} {node.name}"
    return node.kind


def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _namespace_of(fullname: str) -> str:
    return fullname.rpartition(".")[0]


class _Parser:
    def __init__(self) -> None:
        self.names: dict[str, AvroType] = {}

    def parse(self, schema: Any, namespace: str) -> AvroType:
        if isinstance(schema, str):
            return self._reference(schema, namespace)
        if isinstance(schema, list):
            return AvroType("union", branches=[self.parse(b, namespace) for b in schema])
        if not isinstance(schema, dict):
            raise ConfigError(f"invalid Avro schema node {schema!r}")
        kind = schema.get("type")
        if isinstance(kind, (list, dict)):
            return self.parse(kind, namespace)
        if not isinstance(kind, str):
            raise ConfigError(f"Avro schema node without a type: {schema!r}")
        if kind in ("record", "error"):
            return self._record(schema, namespace)
        if kind == "enum":
            node = self._named(AvroType("enum"), schema, namespace)
            node.symbols = tuple(schema.get("symbols", ()))
            node.enum_default = schema.get("default")
            return node
        if kind == "fixed":
            node = self._named(AvroType("fixed"), schema, namespace)
            node.size = int(schema["size"])
            self._logical(node, schema)
            return node
        if kind == "array":
            return AvroType("array", items=self.parse(schema.get("items"), namespace))
        if kind == "map":
            return AvroType("map", items=self.parse(schema.get("values"), namespace))
        if kind in PRIMITIVES:
            node = AvroType(kind)
            self._logical(node, schema)
            return node
        return self._reference(kind, namespace)

    def _reference(self, name: str, namespace: str) -> AvroType:
        if name in PRIMITIVES:
            return AvroType(name)
        for candidate in (_fullname(name, namespace), name):
            if candidate in self.names:
                return self.names[candidate]
        raise ConfigError(f"Avro schema references undefined type {name!r}")

    def _named(self, node: AvroType, schema: dict[str, Any], namespace: str) -> AvroType:
        if "name" not in schema:
            raise ConfigError(f"named Avro type without a name: {schema!r}")
        full = _fullname(str(schema["name"]), schema.get("namespace", namespace))
        node.name = full
        own_ns = _namespace_of(full)
        node.aliases = tuple(_fullname(a, own_ns) for a in schema.get("aliases", ()))
        self.names[full] = node
        return node

    def _record(self, schema: dict[str, Any], namespace: str) -> AvroType:
        node = self._named(AvroType("record"), schema, namespace)
        assert node.name is not None
        connect = schema.get("connect.name")
        node.connect_name = connect if isinstance(connect, str) else None
        child_ns = _namespace_of(node.name)
        for f in schema.get("fields", ()):
            if not isinstance(f, dict) or "name" not in f or "type" not in f:
                raise ConfigError(f"record {node.name}: invalid field {f!r}")
            node.fields.append(
                AvroField(
                    name=str(f["name"]),
                    type=self.parse(f["type"], child_ns),
                    aliases=tuple(f.get("aliases", ())),
                    has_default="default" in f,
                    default=f.get("default"),
                )
            )
        return node

    @staticmethod
    def _logical(node: AvroType, schema: dict[str, Any]) -> None:
        connect = schema.get("connect.name")
        if isinstance(connect, str):
            node.connect_name = connect
        logical = schema.get("logicalType")
        if not isinstance(logical, str) or node.kind not in _LOGICAL_BASES.get(logical, ()):
            return
        if logical == "decimal":
            precision, scale = schema.get("precision"), schema.get("scale", 0)
            if not isinstance(precision, int) or not isinstance(scale, int):
                return
            node.precision, node.scale = precision, scale
        node.logical = logical
