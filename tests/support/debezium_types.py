"""A PostgreSQL table as Debezium's Avro converter registers it: every semantic type the
decoder maps (``connect.name`` beside the Avro type), for the tests of
:mod:`cdc.ingest.semantic` (unit, both decoder paths) and of both writers (integration)."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro

from cdc.ingest.registry import FileRegistry
from cdc.ingest.registry.framing import frame

__all__ = [
    "CONTRACT",
    "KEY",
    "T0",
    "VALUE",
    "add_version",
    "encode",
    "envelope",
    "row",
    "vsd",
    "with_label",
    "write_registry",
]

T0 = 1_767_600_000_000


def _t(name: str, base: str) -> dict[str, Any]:
    return {"type": base, "connect.version": 1, "connect.name": name}


VSD = {
    "type": "record",
    "name": "VariableScaleDecimal",
    "namespace": "io.debezium.data",
    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
    "connect.doc": "Variable scaled decimal",
    "connect.version": 1,
    "connect.name": "io.debezium.data.VariableScaleDecimal",
}
ROW = {
    "type": "record",
    "name": "Value",
    "namespace": "pg.public.things",
    "fields": [
        {"name": "id", "type": "int"},
        {"name": "notes", "type": ["null", "string"], "default": None},  # text: TOASTed
        {"name": "amount", "type": ["null", VSD], "default": None},
        {
            "name": "ratio",
            "type": ["null", "io.debezium.data.VariableScaleDecimal"],
            "default": None,
        },
        {"name": "born", "type": ["null", _t("io.debezium.time.Date", "int")], "default": None},
        {
            "name": "at_ms",
            "type": ["null", _t("io.debezium.time.Timestamp", "long")],
            "default": None,
        },
        {
            "name": "at_us",
            "type": ["null", _t("io.debezium.time.MicroTimestamp", "long")],
            "default": None,
        },
        {
            "name": "at_ns",
            "type": ["null", _t("io.debezium.time.NanoTimestamp", "long")],
            "default": None,
        },
        {
            "name": "zoned",
            "type": ["null", _t("io.debezium.time.ZonedTimestamp", "string")],
            "default": None,
        },
        {"name": "t_ms", "type": ["null", _t("io.debezium.time.Time", "int")], "default": None},
        {
            "name": "t_us",
            "type": ["null", _t("io.debezium.time.MicroTime", "long")],
            "default": None,
        },
        {
            "name": "t_ns",
            "type": ["null", _t("io.debezium.time.NanoTime", "long")],
            "default": None,
        },
    ],
}
VALUE = {
    "type": "record",
    "name": "Envelope",
    "namespace": "pg.public.things",
    "fields": [
        {"name": "before", "type": ["null", ROW], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "namespace": "io.debezium.connector.postgresql",
                "fields": [
                    {"name": "connector", "type": "string"},
                    {"name": "ts_ms", "type": "long"},
                    {"name": "lsn", "type": ["null", "long"], "default": None},
                ],
            },
        },
        {"name": "op", "type": "string"},
    ],
}
KEY = {
    "type": "record",
    "name": "Key",
    "namespace": "pg.public.things",
    "fields": [{"name": "id", "type": "int"}],
}
CONTRACT = {
    "pg.things": {
        "key_subject": "pg.things-key",
        "value_subject": "pg.things-value",
        "kind": "envelope",
        "decimals": {"amount": [10, 2]},
    }
}


def with_label(schema: dict[str, Any]) -> dict[str, Any]:
    """The value schema's next version: the row gains ``label`` (a nullable string)."""
    out = json.loads(json.dumps(schema))
    row = next(f for f in out["fields"] if f["name"] == "before")["type"][1]
    row["fields"].append({"name": "label", "type": ["null", "string"], "default": None})
    return out


def add_version(root: Path, subject: str, schema: dict[str, Any], schema_id: int) -> None:
    """Register ``schema`` as the next version of ``subject`` in the file registry at
    ``root``."""
    index = json.loads((root / "index.json").read_text())
    versions = index["subjects"][subject]
    version = max(v["version"] for v in versions) + 1
    (root / subject / f"v{version}.avsc").write_text(json.dumps(schema))
    versions.append({"version": version, "id": schema_id})
    (root / "index.json").write_text(json.dumps(index))


def write_registry(root: Path, key_id: int = 1, value_id: int = 2) -> Path:
    """The two subjects of ``pg.things`` in a file registry at ``root`` (added to an
    ``index.json`` there, or a new one)."""
    index_path = root / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"subjects": {}}
    for subject, schema, schema_id in (
        ("pg.things-key", KEY, key_id),
        ("pg.things-value", VALUE, value_id),
    ):
        (root / subject).mkdir(parents=True)
        (root / subject / "v1.avsc").write_text(json.dumps(schema))
        index["subjects"][subject] = [{"version": 1, "id": schema_id}]
    index_path.write_text(json.dumps(index))
    return root


def vsd(text: str) -> dict[str, Any]:
    """A ``VariableScaleDecimal`` of ``text``: its scale and unscaled big-endian bytes."""
    d = Decimal(text)
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    unscaled = int("".join(map(str, digits))) * (-1 if sign else 1)
    size = max(1, (unscaled.bit_length() + 8) // 8)
    return {"scale": -exponent, "value": unscaled.to_bytes(size, "big", signed=True)}


def row(i: int, **values: Any) -> dict[str, Any]:
    return {"id": i, **values}


def envelope(
    after: dict[str, Any] | None, n: int, op: str = "c", before: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A change of ``after`` at LSN ``n``, committed ``n`` ms after :data:`T0` (a delete:
    ``before`` set, ``after`` None)."""
    source = {"connector": "postgresql", "ts_ms": T0 + n, "lsn": n}
    return {"before": before, "after": after, "source": source, "op": op}


def encode(registry: FileRegistry, subject: str, datum: Any) -> bytes:
    """``datum`` as Confluent-framed Avro of the subject's latest version."""
    schema = registry.latest(subject)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.parsed, datum)
    return frame(schema.schema_id, out.getvalue())
