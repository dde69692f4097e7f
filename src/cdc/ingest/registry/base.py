"""What a schema registry offers the rest of the service, whatever stores the schemas."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import fastavro

from cdc.errors import ConfigError
from cdc.ingest.registry._avro import AvroType, parse_avro

__all__ = ["RegisteredSchema", "SchemaRegistry"]


@dataclass(frozen=True)
class RegisteredSchema:
    """One version of a subject, with its globally unique id.

    Attributes:
        subject: ``<topic>-value`` or ``<topic>-key``.
        version: 1-based version within the subject.
        schema_id: The id written in the Confluent header of every message it encodes.
        schema: The schema as parsed JSON.
        parsed: ``fastavro.parse_schema(schema)``, ready for fastavro readers and writers.
    """

    subject: str
    version: int
    schema_id: int
    schema: dict[str, Any]
    parsed: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            parsed = fastavro.parse_schema(self.schema)
        except Exception as exc:  # fastavro raises several unrelated types for bad schemas
            raise ConfigError(
                f"{self.subject} v{self.version} (id {self.schema_id}): invalid Avro schema: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        object.__setattr__(self, "parsed", parsed)

    @cached_property
    def avro_type(self) -> AvroType:
        """The schema with named references resolved, for schema walks."""
        return parse_avro(self.schema)

    @property
    def label(self) -> str:
        """``<subject> v<version>``, as used in messages."""
        return f"{self.subject} v{self.version}"


@runtime_checkable
class SchemaRegistry(Protocol):
    """Look up schemas by id (decoding) or by subject and version (encoding, checks)."""

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """The schema registered under ``schema_id``.

        Raises:
            SchemaNotFoundError: No such id.
        """
        ...

    def latest(self, subject: str) -> RegisteredSchema:
        """The highest version of ``subject``.

        Raises:
            SchemaNotFoundError: No such subject.
        """
        ...

    def get(self, subject: str, version: int) -> RegisteredSchema:
        """One version of ``subject``.

        Raises:
            SchemaNotFoundError: No such subject or version.
        """
        ...

    def subjects(self) -> list[str]:
        """Every subject, sorted."""
        ...
