"""The masks, defined once and rendered per SQL dialect, so that every target shows a masked
value the same way: ``hash`` is the SHA-256 of the value's text as lower-case hex (joinable
across PostgreSQL, DuckDB and Snowflake), ``partial`` keeps the first character and, for an
e-mail, the domain (``j***@example.com``), ``null`` is a typed null."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cdc.governance.policy import Treatment

__all__ = ["DUCKDB", "PARTIAL_PATTERN", "PARTIAL_REPLACEMENT", "POSTGRES", "SNOWFLAKE", "MaskSql"]

PARTIAL_PATTERN = "^(.)[^@]*"
"""What ``partial`` replaces: everything after the first character, up to an ``@``."""
PARTIAL_REPLACEMENT = "\\1***"
"""What it is replaced with (the first character, then three stars)."""


def _standard_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _snowflake_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class MaskSql:
    """One dialect's spelling of the masks: templates over ``{value}`` and ``{type}``."""

    text: str
    """The value as text."""
    sha256_hex: str
    """SHA-256 of a text, lower-case hex."""
    null: str
    """A null of the column's type."""
    literal: Callable[[str], str] = _standard_literal

    def expression(self, value: str, treatment: Treatment, type_sql: str) -> str | None:
        """The masked expression of ``value`` (None: the column is left out, ``deny``)."""
        if treatment == "clear":
            return value
        text = self.text.format(value=value)
        if treatment == "hash":
            return self.sha256_hex.format(value=text)
        if treatment == "partial":
            pattern, replacement = self.literal(PARTIAL_PATTERN), self.literal(PARTIAL_REPLACEMENT)
            return f"regexp_replace({text}, {pattern}, {replacement})"
        if treatment == "null":
            return self.null.format(type=type_sql)
        return None

    def column(self, quoted: str, treatment: Treatment, type_sql: str) -> str | None:
        """A select-list entry: the masked column under its own name (None: left out)."""
        masked = self.expression(quoted, treatment, type_sql)
        if masked is None or masked == quoted:
            return masked
        return f"{masked} AS {quoted}"


POSTGRES = MaskSql(
    text="{value}::text",
    sha256_hex="encode(sha256(convert_to({value}, 'UTF8')), 'hex')",
    null="NULL::{type}",
)
DUCKDB = MaskSql(
    text="CAST({value} AS VARCHAR)", sha256_hex="sha256({value})", null="CAST(NULL AS {type})"
)
SNOWFLAKE = MaskSql(
    text="{value}", sha256_hex="SHA2({value}, 256)", null="NULL", literal=_snowflake_literal
)
