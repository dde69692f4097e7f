"""Exception hierarchy. The CLI turns any :class:`CdcError` into one line on stderr, exit 2."""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "CdcError",
    "CommitConflictError",
    "ConfigError",
    "DataLossError",
    "ExpectationFailedError",
    "FramingError",
    "JarsMissingError",
    "PipelineRunningError",
    "ProduceError",
    "SchemaNotFoundError",
    "TableReadError",
    "TableWriteError",
    "UnknownPipelineError",
    "first_line",
]


class CdcError(Exception):
    """Root of every error the service raises on purpose."""


class ConfigError(CdcError):
    """Configuration file, override or CLI argument is invalid."""


class UnknownPipelineError(ConfigError):
    """A pipeline name that the configuration does not define."""


class BrokerUnavailableError(CdcError):
    """The Kafka cluster cannot be reached."""


class SchemaNotFoundError(CdcError):
    """A subject, version or schema id is not in the registry."""


class FramingError(CdcError):
    """Bytes are not a Confluent wire-format message."""


class ProduceError(CdcError):
    """Records could not be encoded or delivered to Kafka."""


class DataLossError(CdcError):
    """Offsets the query expected to read no longer exist (failOnDataLoss=true)."""

    pipeline: str | None = None
    """The pipeline whose query lost them, when a running query found it."""


class ExpectationFailedError(CdcError):
    """A ``fail`` expectation found records that break it; nothing of the batch was committed."""


class TableReadError(CdcError):
    """A Delta table exists but its log cannot be read (corrupt, or storage refused)."""


class TableWriteError(CdcError):
    """A Delta table write or commit failed."""


class CommitConflictError(TableWriteError):
    """Another writer committed to the table in between; recompute against it and retry."""


class PipelineRunningError(CdcError):
    """An operation that needs the pipeline stopped found it running."""


class JarsMissingError(CdcError):
    """The pinned JVM JARs are not installed (``make install`` fetches them)."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's text (drivers and libraries add context
    lines), or its type's name when it has no text."""
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
