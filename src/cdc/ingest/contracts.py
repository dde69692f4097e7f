"""Topic contracts: what a topic's records must hold, and the rules compiled for decoding. Pure.

A contract (``schemas/contracts.yaml``, :func:`load_contracts`) names a topic's subjects, its
kind (Debezium envelope or flat), its rules (required paths, allowed values, patterns,
ranges) and the tags of its fields. This module parses contracts, maps Avro types to Arrow
(:func:`avro_to_arrow_type`), binds the rules to the value schema (:func:`compile_rules`) and
judges a decoded value against them (:func:`rule_violations`), and names the quarantine
reasons (:class:`QuarantineReason`). The decoder that applies all of it to Kafka records is
:mod:`cdc.ingest.decoder`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import yaml

from cdc.core.sequence import (
    POSITION_OUT_OF_RANGE,
    SOURCE_TIME_OUT_OF_RANGE,
)
from cdc.errors import ConfigError
from cdc.ingest.registry import (
    AvroType,
    parse_avro,
    type_label,
)

__all__ = [
    "ENVELOPE_OPS",
    "OPS_WITH_AFTER",
    "ContractRule",
    "ContractRules",
    "KafkaMessage",
    "QuarantineReason",
    "Range",
    "TopicContract",
    "avro_to_arrow_type",
    "compile_rules",
    "debezium_contract",
    "decoded_schema",
    "load_contracts",
    "parse_contracts",
    "rule_violations",
]

KafkaMessage = tuple[str, int, int, int, bytes | None, bytes | None]
"""``(topic, partition, offset, timestamp_ms, key, value)`` as read from Kafka."""

ENVELOPE_OPS = ("c", "u", "d", "r")
OPS_WITH_AFTER = frozenset({"c", "u", "r"})
"""Debezium ops whose envelope carries an ``after`` image."""
_NUMERIC = frozenset({"int", "long", "float", "double"})

_TOPIC_KEYS = (
    "decimals",
    "key_required",
    "key_subject",
    "kind",
    "rules",
    "tags",
    "value_subject",
)
_RULE_KEYS = ("allowed", "patterns", "ranges", "required")
_RANGE_KEYS = ("max", "min")
_KINDS = ("envelope", "flat")
_TAG = re.compile(r"[a-z][a-z0-9_]{0,62}")
"""A column tag (``pii``): it names LF-tags, PostgreSQL and Snowflake objects, so it is an
identifier in every one of them."""


class QuarantineReason(StrEnum):
    """Why a record went to quarantine (the ``error_code`` column)."""

    NOT_FRAMED = "not_framed"
    UNKNOWN_SCHEMA_ID = "unknown_schema_id"
    DECODE_ERROR = "decode_error"
    SCHEMA_MISMATCH = "schema_mismatch"
    OVERSIZE = "oversize"
    RULE_VIOLATION = "rule_violation"
    MISSING_KEY = "missing_key"
    SOURCE_TIME_OUT_OF_RANGE = SOURCE_TIME_OUT_OF_RANGE
    """The sequence time, or a time in the position, is outside the pipeline's window or what
    a sequence and a Delta timestamp hold."""
    POSITION_OUT_OF_RANGE = POSITION_OUT_OF_RANGE
    """A position value (a binlog index, the Kafka partition or offset) does not fit a
    sequence."""
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    """A value does not fit the Delta type of its Debezium semantic type (a
    ``VariableScaleDecimal`` beyond its ``decimal(p, s)``, a time no Delta timestamp holds, a
    ``ZonedTimestamp`` that is not one): :mod:`cdc.ingest.semantic`."""
    UNAVAILABLE_WITHOUT_PRIOR = "unavailable_without_prior"
    """An SCD2 change holds a placeholder for an unchanged value (a TOASTed column) but its
    key has no earlier version to take the value from (docs/scd2.md, "Unchanged values")."""


@dataclass(frozen=True)
class Range:
    """Inclusive bounds for a numeric field; either may be open."""

    min: Decimal | None = None
    max: Decimal | None = None


@dataclass(frozen=True)
class ContractRules:
    """Path rules over the decoded value; paths are dotted, e.g. ``after.email``.

    A rule is skipped when a record on its path is null (so ``after.*`` rules do not apply
    to deletes). ``required`` fails on null and on the empty string; ``patterns`` must match
    the whole value; ``patterns``, ``allowed`` and ``ranges`` ignore null leaves.
    """

    required: tuple[str, ...] = ()
    patterns: Mapping[str, str] = field(default_factory=dict)
    allowed: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    ranges: Mapping[str, Range] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicContract:
    """What a topic's records must look like.

    Attributes:
        topic: Kafka topic name.
        key_subject: Registry subject of the key (``<topic>-key``).
        value_subject: Registry subject of the value (``<topic>-value``).
        kind: ``envelope`` (Debezium before/after/op) or ``flat``.
        rules: Path rules on the value.
        key_required: When true, a record without a key is quarantined as ``missing_key``.
        tags: Classification tags of value fields by dotted path (``after.email: [pii]``);
            the tag travels with the field into bronze, silver, gold and the warehouse
            (:mod:`cdc.governance`).
    """

    topic: str
    key_subject: str
    value_subject: str
    kind: Literal["envelope", "flat"]
    rules: ContractRules = field(default_factory=ContractRules)
    key_required: bool = True
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    decimals: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """``decimal(precision, scale)`` of each Debezium ``VariableScaleDecimal`` field (a
    PostgreSQL ``numeric`` without a declared scale), by field name; ``default`` for the
    others (else 38, 10). See :mod:`cdc.ingest.semantic`."""


def debezium_contract(topic: str) -> TopicContract:
    """The contract of a table topic that has none of its own (a ``databases`` stanza's):
    Debezium's envelope under the ``<topic>-key``/``<topic>-value`` subjects, no rules."""
    return TopicContract(topic, f"{topic}-key", f"{topic}-value", "envelope")


def load_contracts(path: str | Path) -> dict[str, TopicContract]:
    """Read ``schemas/contracts.yaml``: a mapping of topic name to contract.

    Args:
        path: The YAML file.

    Returns:
        Contracts by topic.

    Raises:
        ConfigError: The file is missing, is not valid YAML, or has unknown or invalid keys
            (the message lists the valid ones).
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"contracts file {p} does not exist") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot read contracts: {exc}") from exc
    return parse_contracts(data, source=str(p))


def parse_contracts(data: Any, *, source: str = "contracts") -> dict[str, TopicContract]:
    """Validate contracts already loaded from YAML; see :func:`load_contracts`.

    Args:
        data: Mapping of topic name to contract settings.
        source: Name used in error messages (the file path).

    Returns:
        Contracts by topic.

    Raises:
        ConfigError: Unknown or invalid keys.
    """
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a mapping of topic name -> contract")
    return {str(topic): _parse_topic(str(topic), spec, source) for topic, spec in data.items()}


def _check_keys(where: str, spec: Any, valid: Sequence[str]) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(valid)}")
    unknown = sorted(str(k) for k in set(spec) - set(valid))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (valid keys: {', '.join(valid)})"
        )
    return spec


def _parse_topic(topic: str, spec: Any, source: str) -> TopicContract:
    where = f"{source}: topic {topic!r}"
    spec = _check_keys(where, spec, _TOPIC_KEYS)
    for required in ("key_subject", "value_subject", "kind"):
        if not isinstance(spec.get(required), str):
            raise ConfigError(f"{where}: '{required}' is required and must be a string")
    kind = spec["kind"]
    if kind not in _KINDS:
        raise ConfigError(f"{where}: kind {kind!r} is invalid (valid: {', '.join(_KINDS)})")
    key_required = spec.get("key_required", True)
    if not isinstance(key_required, bool):
        raise ConfigError(f"{where}: 'key_required' must be true or false")
    return TopicContract(
        topic=topic,
        key_subject=spec["key_subject"],
        value_subject=spec["value_subject"],
        kind=kind,
        rules=_parse_rules(f"{where} rules", spec.get("rules") or {}),
        key_required=key_required,
        tags=_parse_tags(f"{where} tags", spec.get("tags") or {}),
        decimals=_parse_decimals(f"{where} decimals", spec.get("decimals") or {}),
    )


def _parse_decimals(where: str, spec: Any) -> dict[str, tuple[int, int]]:
    """``{field | default: [precision, scale]}``, 1 ≤ precision ≤ 76, 0 ≤ scale ≤ precision."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping of field name -> [precision, scale]")
    found: dict[str, tuple[int, int]] = {}
    for name, pair in spec.items():
        ok = (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            and 1 <= pair[0] <= 76
            and 0 <= pair[1] <= pair[0]
        )
        if not ok:
            raise ConfigError(
                f"{where}: {name!r} must be [precision, scale] with 1 <= precision <= 76 and"
                f" 0 <= scale <= precision, not {pair!r}"
            )
        found[str(name)] = (pair[0], pair[1])
    return found


def _parse_tags(where: str, spec: Any) -> dict[str, tuple[str, ...]]:
    """``{path: [tag, ...]}``: each tag an identifier (:data:`_TAG`), each list non-empty."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping of path -> list of tags")
    tags: dict[str, tuple[str, ...]] = {}
    for path, names in spec.items():
        if not isinstance(names, list) or not names:
            raise ConfigError(f"{where}: {path!r} must map to a non-empty list of tags")
        for name in names:
            if not isinstance(name, str) or not _TAG.fullmatch(name):
                raise ConfigError(
                    f"{where}: tag {name!r} of {path!r} is not a tag name (lower-case letters,"
                    " digits and _, starting with a letter)"
                )
        tags[str(path)] = tuple(dict.fromkeys(names))
    return tags


def _parse_rules(where: str, spec: Any) -> ContractRules:
    spec = _check_keys(where, spec, _RULE_KEYS)
    required = spec.get("required") or []
    if not isinstance(required, list) or not all(isinstance(p, str) for p in required):
        raise ConfigError(f"{where}: 'required' must be a list of paths")
    patterns = spec.get("patterns") or {}
    if not isinstance(patterns, dict):
        raise ConfigError(f"{where}: 'patterns' must map path -> regex")
    for path, pattern in patterns.items():
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise ConfigError(f"{where}: pattern for {path!r} is invalid: {exc}") from exc
    allowed = spec.get("allowed") or {}
    if not isinstance(allowed, dict) or not all(isinstance(v, list) for v in allowed.values()):
        raise ConfigError(f"{where}: 'allowed' must map path -> list of values")
    ranges_spec = spec.get("ranges") or {}
    if not isinstance(ranges_spec, dict):
        raise ConfigError(f"{where}: 'ranges' must map path -> {{min, max}}")
    ranges = {
        str(path): _parse_range(f"{where} range {path!r}", bounds)
        for path, bounds in ranges_spec.items()
    }
    return ContractRules(
        required=tuple(required),
        patterns={str(k): str(v) for k, v in patterns.items()},
        allowed={str(k): tuple(v) for k, v in allowed.items()},
        ranges=ranges,
    )


def _parse_range(where: str, spec: Any) -> Range:
    spec = _check_keys(where, spec, _RANGE_KEYS)
    bounds: dict[str, Decimal | None] = {}
    for name in _RANGE_KEYS:
        raw = spec.get(name)
        if raw is None:
            bounds[name] = None
            continue
        try:
            bound = Decimal(str(raw))  # str() keeps a YAML float's short decimal spelling
        except InvalidOperation as exc:
            raise ConfigError(f"{where}: {name} {raw!r} is not a number") from exc
        if isinstance(raw, bool) or not bound.is_finite():
            raise ConfigError(f"{where}: {name} {raw!r} is not a finite number")
        bounds[name] = bound
    lo, hi = bounds["min"], bounds["max"]
    if lo is None and hi is None:
        raise ConfigError(f"{where}: set min, max or both")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"{where}: min {lo} is greater than max {hi}")
    return Range(lo, hi)


# --------------------------------------------------------------------------- Avro -> Arrow


def avro_to_arrow_type(schema: Any, *, nested_nullable: bool = False) -> pa.DataType:
    """The Arrow type that holds values of an Avro schema as fastavro decodes them.

    record -> struct, string/enum -> string, int -> int32, long -> int64, float -> float32,
    double -> float64, boolean -> bool, bytes/fixed -> binary, decimal(p,s) -> decimal128(p,s),
    timestamp-millis/micros -> timestamp('us', 'UTC'), date -> date32, array -> list,
    map -> map<string, V>; a union with ``null`` and one other branch -> that branch, nullable.

    Args:
        schema: Parsed JSON schema or :class:`~cdc.ingest.registry.AvroType`.
        nested_nullable: Mark every nested field, list item and map value nullable instead of
            nullable only for ``[null, T]`` unions. The decoder's output uses this: PySpark's
            ``DataFrame.toArrow()`` writes the children of a null struct as nulls and then
            refuses to cast them to non-nullable fields ("nulls in input cannot be viewed as
            non-nullable"), so a non-nullable child under a nullable parent cannot round-trip.

    Returns:
        The Arrow type (for a nullable union, the type of its non-null branch).

    Raises:
        ConfigError: The schema has a union of several non-null types, or is recursive.
    """
    node = schema if isinstance(schema, AvroType) else parse_avro(schema)
    return _ArrowMapping(nested_nullable).arrow(node, "")[0]


class _ArrowMapping:
    """One Avro -> Arrow conversion; tracks the records being expanded to reject recursion."""

    def __init__(self, nested_nullable: bool) -> None:
        self.nested_nullable = nested_nullable
        self.active: set[int] = set()

    def arrow(self, node: AvroType, path: str) -> tuple[pa.DataType, bool]:
        """(Arrow type, whether a field of this type is nullable) for ``node``."""
        typ, nullable = self._map(node, path)
        return typ, nullable or self.nested_nullable

    def _map(self, node: AvroType, path: str) -> tuple[pa.DataType, bool]:
        kind = node.kind
        if kind == "union":
            others = node.non_null_branches()
            if len(others) > 1:
                raise ConfigError(
                    f"'{path or 'root'}': union {type_label(node)} has several non-null "
                    "branches; only [null, T] unions map to Arrow"
                )
            if not others:
                return pa.null(), True
            return self.arrow(others[0], path)[0], node.is_nullable_union
        if kind == "record":
            if id(node) in self.active:
                raise ConfigError(f"'{path}': recursive type {node.name} cannot map to Arrow")
            self.active.add(id(node))
            fields = []
            for f in node.fields:
                typ, nullable = self.arrow(f.type, f"{path}.{f.name}" if path else f.name)
                fields.append(pa.field(f.name, typ, nullable=nullable))
            self.active.discard(id(node))
            return pa.struct(fields), False
        if kind in ("array", "map"):
            assert node.items is not None
            typ, nullable = self.arrow(node.items, path + "[]")
            if kind == "array":
                return pa.list_(pa.field("item", typ, nullable=nullable)), False
            return pa.map_(pa.string(), pa.field("value", typ, nullable=nullable)), False
        return _arrow_leaf(node), kind == "null"


def _arrow_leaf(node: AvroType) -> pa.DataType:
    logical = node.logical
    if logical == "decimal":
        assert node.precision is not None and node.scale is not None
        if node.precision > 38:
            return pa.decimal256(node.precision, node.scale)
        return pa.decimal128(node.precision, node.scale)
    if logical in ("timestamp-millis", "timestamp-micros"):
        return pa.timestamp("us", tz="UTC")
    if logical in ("local-timestamp-millis", "local-timestamp-micros"):
        return pa.timestamp("us")
    if logical == "date":
        return pa.date32()
    if logical == "time-millis":
        return pa.time32("ms")
    if logical == "time-micros":
        return pa.time64("us")
    if logical == "uuid" and node.kind == "string":
        return pa.string()
    simple: dict[str, pa.DataType] = {
        "null": pa.null(),
        "boolean": pa.bool_(),
        "int": pa.int32(),
        "long": pa.int64(),
        "float": pa.float32(),
        "double": pa.float64(),
        "bytes": pa.binary(),
        "fixed": pa.binary(),
        "string": pa.string(),
        "enum": pa.string(),
    }
    return simple[node.kind]


def decoded_schema(key_type: pa.DataType, value_type: pa.DataType) -> pa.Schema:
    """The Arrow schema of a decoded batch: Kafka coordinates, raw bytes, ``key``/``value``
    structs of the given types, ``error_code`` and ``error``."""
    return pa.schema(
        [
            pa.field("topic", pa.string(), nullable=False),
            pa.field("partition", pa.int32(), nullable=False),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("timestamp", pa.timestamp("us", tz="UTC")),
            pa.field("key_raw", pa.binary()),
            pa.field("value_raw", pa.binary()),
            pa.field("key_schema_id", pa.int32()),
            pa.field("value_schema_id", pa.int32()),
            pa.field("key", key_type),
            pa.field("value", value_type),
            pa.field("extra_fields", pa.list_(pa.string())),
            pa.field("error_code", pa.string()),
            pa.field("error", pa.string()),
        ]
    )


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class ContractRule:
    """One rule of a contract bound to its leaf in the value schema."""

    path: str
    parents: tuple[str, ...]
    leaf: str
    kind: Literal["required", "pattern", "allowed", "range"]
    pattern: re.Pattern[str] | None = None
    allowed: frozenset[Any] = frozenset()
    allowed_text: str = ""
    lo: Decimal | None = None
    hi: Decimal | None = None
    unavailable: frozenset[str] = frozenset()
    """Placeholders for unchanged values: a leaf holding one passes a pattern or allowed rule
    (what it stands for was checked when it arrived)."""


def _leaf_type(root: AvroType, path: str) -> AvroType:
    """Walk a dotted path through records (and nullable unions of records)."""
    node = root
    for step in path.split("."):
        node = _strip_null(node)
        if node.kind != "record":
            raise ConfigError(f"rule path {path!r}: {step!r} is not inside a record")
        match = next((f for f in node.fields if f.name == step), None)
        if match is None:
            names = ", ".join(f.name for f in node.fields)
            raise ConfigError(f"rule path {path!r}: no field {step!r} (fields: {names})")
        node = match.type
    return _strip_null(node)


def _strip_null(node: AvroType) -> AvroType:
    if node.kind == "union":
        others = node.non_null_branches()
        if len(others) == 1:
            return others[0]
    return node


def compile_rules(
    contract: TopicContract, value_type: AvroType, unavailable: tuple[str, ...] = ()
) -> tuple[ContractRule, ...]:
    """The contract's rules bound to the value schema (a rule that does not fit raises
    :class:`~cdc.errors.ConfigError`); ``unavailable``: placeholders for unchanged values,
    which pass pattern and allowed rules."""
    skip = frozenset(unavailable)
    rules: list[ContractRule] = []
    spec = contract.rules
    where = f"contract {contract.topic!r}"

    def split(path: str) -> tuple[tuple[str, ...], str, AvroType]:
        try:
            leaf_type = _leaf_type(value_type, path)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        *parents, leaf = path.split(".")
        return tuple(parents), leaf, leaf_type

    for path in spec.required:
        parents, leaf, _ = split(path)
        rules.append(ContractRule(path, parents, leaf, "required"))
    for path, pattern in spec.patterns.items():
        parents, leaf, typ = split(path)
        if typ.kind not in ("string", "enum"):
            raise ConfigError(f"{where}: pattern on {path!r} needs a string, not {type_label(typ)}")
        rules.append(
            ContractRule(
                path, parents, leaf, "pattern", pattern=re.compile(pattern), unavailable=skip
            )
        )
    for path, values in spec.allowed.items():
        parents, leaf, _ = split(path)
        text = ", ".join(str(v) for v in values)
        rules.append(
            ContractRule(
                path,
                parents,
                leaf,
                "allowed",
                allowed=frozenset(values),
                allowed_text=text,
                unavailable=skip,
            )
        )
    for path, bounds in spec.ranges.items():
        parents, leaf, typ = split(path)
        if typ.kind not in _NUMERIC and typ.logical != "decimal":
            raise ConfigError(f"{where}: range on {path!r} needs a number, not {type_label(typ)}")
        rules.append(ContractRule(path, parents, leaf, "range", lo=bounds.min, hi=bounds.max))
    if contract.kind == "envelope":
        for name in ("before", "after", "op"):
            split(name)
    for path in contract.tags:  # a tag on a field the schema lacks would tag nothing
        split(path)
    return tuple(rules)


def _show(value: Any) -> str:
    if isinstance(value, Decimal):
        text = f"{value:f}"  # plain notation: 0.00000001, not 1E-8
    elif isinstance(value, (int, float)):
        text = str(value)
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def rule_violations(
    value: dict[str, Any], rules: Sequence[ContractRule], envelope: bool
) -> list[str]:
    """What a decoded value breaks of the rules, one text per broken rule (empty: none)."""
    out: list[str] = []
    if envelope:
        op = value.get("op")
        if op not in ENVELOPE_OPS:
            out.append(f"op: {_show(op)} is not one of {', '.join(ENVELOPE_OPS)}")
        elif op in OPS_WITH_AFTER and value.get("after") is None:
            out.append(f"after: null for op {op!r} (required for c, u, r)")
        elif op == "d" and value.get("before") is None:
            out.append("before: null for op 'd' (required for d)")
    for rule in rules:
        holder: Any = value
        for step in rule.parents:
            holder = holder[step]
            if holder is None:
                break
        if holder is None:
            continue  # a record on the path is null: the rule does not apply
        leaf = holder[rule.leaf]
        if rule.kind == "required":
            if leaf is None:
                out.append(f"{rule.path}: required but null")
            elif leaf == "":
                out.append(f"{rule.path}: required but empty")
        elif leaf is None or (isinstance(leaf, str) and leaf in rule.unavailable):
            continue
        elif rule.kind == "pattern":
            assert rule.pattern is not None
            if not rule.pattern.fullmatch(leaf):
                out.append(
                    f"{rule.path}: {_show(leaf)} does not match pattern '{rule.pattern.pattern}'"
                )
        elif rule.kind == "allowed":
            if leaf not in rule.allowed:
                out.append(f"{rule.path}: {_show(leaf)} is not one of {rule.allowed_text}")
        elif rule.lo is not None and leaf < rule.lo:
            out.append(f"{rule.path}: {_show(leaf)} is below the minimum {_show(rule.lo)}")
        elif rule.hi is not None and leaf > rule.hi:
            out.append(f"{rule.path}: {_show(leaf)} is above the maximum {_show(rule.hi)}")
    return out
