"""Schema registry: subjects, stable schema ids, Confluent framing, compatibility checks."""

from __future__ import annotations

from cdc.errors import ConfigError
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
    "open_registry",
    "parse_avro",
    "root_of",
    "type_label",
    "unframe",
]


def open_registry(path: str | None = None, url: str | None = None) -> SchemaRegistry:
    """The registry the settings ask for: HTTP when ``url`` is set, else the file registry.

    Args:
        path: The registry folder (``schemas/avro``).
        url: A Confluent-compatible registry URL, optional.

    Returns:
        A :class:`SchemaRegistry`.

    Raises:
        ConfigError: Neither is given, or the folder is invalid.
    """
    if url:
        return HttpRegistry(url)
    if path is None:
        raise ConfigError("registry: set either 'path' or 'url'")
    return FileRegistry.load(path)
