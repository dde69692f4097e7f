"""Schema registry: subjects, stable schema ids, Confluent framing, compatibility checks."""

from __future__ import annotations

from cdc.registry._avro import AvroField, AvroType, parse_avro, type_label
from cdc.registry.base import RegisteredSchema, SchemaRegistry
from cdc.registry.columnar import ColumnarReader, columnar_reader
from cdc.registry.compatibility import (
    check_backward,
    check_path,
    check_registry,
    extra_fields,
    root_of,
)
from cdc.registry.file import FileRegistry, inspect_folder
from cdc.registry.framing import frame, unframe
from cdc.registry.http import HttpRegistry

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
