"""Schema registry: subjects, stable schema ids, Confluent framing, compatibility checks."""

from __future__ import annotations

from cdc.ingest.registry._avro import AvroField, AvroType, parse_avro, type_label
from cdc.ingest.registry.base import RegisteredSchema, SchemaRegistry
from cdc.ingest.registry.columnar import ColumnarReader, columnar_reader
from cdc.ingest.registry.compatibility import (
    check_backward,
    check_path,
    check_registry,
    extra_fields,
    root_of,
)
from cdc.ingest.registry.file import FileRegistry, inspect_folder
from cdc.ingest.registry.framing import frame, unframe
from cdc.ingest.registry.http import HttpRegistry

__all__ = [
    "AvroField",
    "AvroType",
    "ColumnarReader",
    "FileRegistry",
    "HttpRegistry",
    "RegisteredSchema",
    "SchemaRegistry",
    "check_backward",
    "check_path",
    "check_registry",
    "columnar_reader",
    "extra_fields",
    "frame",
    "inspect_folder",
    "parse_avro",
    "root_of",
    "type_label",
    "unframe",
]
