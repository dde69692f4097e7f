"""DuckDB: a warehouse in one file, the embedded default (``make demo`` publishes to it).

The staging table is loaded straight from Arrow (no row-by-row conversion). A DuckDB file has
one writing process at a time: a second publish waits for nothing, it fails in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from cdc.warehouse.base import (
    Dialect,
    Statement,
    Warehouse,
    WarehouseError,
    WarehouseUnavailableError,
    first_line,
)

# duckdb is imported when the file is opened: planning a publish does not need it.

__all__ = ["DuckDbDialect", "DuckDbWarehouse"]

_INTEGERS = {
    (8, True): "TINYINT",
    (16, True): "SMALLINT",
    (32, True): "INTEGER",
    (64, True): "BIGINT",
    (8, False): "UTINYINT",
    (16, False): "USMALLINT",
    (32, False): "UINTEGER",
    (64, False): "UBIGINT",
}


class DuckDbDialect(Dialect):
    """DuckDB's SQL: PostgreSQL's, with native nested types."""

    name = "duckdb"
    param = "?"

    def column_type(self, field: pa.Field) -> str:
        """DuckDB's type of an Arrow field (lists, structs and maps stay nested)."""
        return self._type(field, field.type)

    def _type(self, field: pa.Field, t: pa.DataType) -> str:
        if pa.types.is_boolean(t):
            return "BOOLEAN"
        if pa.types.is_integer(t):
            return _INTEGERS[(t.bit_width, pa.types.is_signed_integer(t))]
        if pa.types.is_float16(t) or pa.types.is_float32(t):
            return "FLOAT"
        if pa.types.is_float64(t):
            return "DOUBLE"
        if pa.types.is_decimal(t) and t.precision <= 38:
            return f"DECIMAL({t.precision},{t.scale})"
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "VARCHAR"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            return "BLOB"
        if pa.types.is_date(t):
            return "DATE"
        if pa.types.is_timestamp(t):
            return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
        if pa.types.is_time(t):
            return "TIME"
        if pa.types.is_dictionary(t):
            return self._type(field, t.value_type)
        if pa.types.is_map(t):
            return f"MAP({self._type(field, t.key_type)}, {self._type(field, t.item_type)})"
        if (
            pa.types.is_list(t)
            or pa.types.is_large_list(t)
            or pa.types.is_list_view(t)
            or pa.types.is_fixed_size_list(t)
        ):
            return f"{self._type(field, t.value_type)}[]"
        if pa.types.is_struct(t):
            inner = ", ".join(f"{self.quote(f.name)} {self._type(field, f.type)}" for f in t)
            return f"STRUCT({inner})"
        raise self._unsupported(field)

    def control_types(self) -> tuple[str, str, str]:
        """Types of the control table's name, count and time columns."""
        return "VARCHAR", "BIGINT", "TIMESTAMPTZ"

    def temporary(self) -> str:
        """The ``CREATE`` keyword of a session-temporary table."""
        return "TEMP"


class DuckDbWarehouse(Warehouse):
    """A DuckDB file."""

    dialect = DuckDbDialect()

    def __init__(self, path: str | Path, schema: str) -> None:
        """Create the warehouse (the session opens on ``connect``).

        Args:
            path: the DuckDB file (created with its folder when missing).
            schema: the schema of the tables and the control table.
        """
        super().__init__(schema)
        self.path = Path(path)

    def describe(self) -> str:
        """The file and the schema."""
        return f"duckdb {self.path} (schema {self.schema})"

    def connect(self) -> None:
        """Open the file (one writing process at a time)."""
        import duckdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            raise WarehouseUnavailableError(
                f"cannot open the DuckDB warehouse {self.path}: {first_line(exc)}"
            ) from None

    def execute(self, statement: Statement) -> int:
        """Run a statement; DML answers one row with its count."""
        import duckdb

        try:
            result = self.connection.execute(statement.sql, list(statement.params))
            if statement.counts is None:
                return 0
            row = result.fetchone()
        except duckdb.Error as exc:
            raise WarehouseError(f"duckdb: {first_line(exc)}") from None
        return int(row[0]) if row else 0

    def query(self, statement: Statement) -> list[tuple[Any, ...]]:
        """Run a query; return its rows."""
        import duckdb

        try:
            rows = self.connection.execute(statement.sql, list(statement.params)).fetchall()
        except duckdb.Error as exc:
            raise WarehouseError(f"duckdb: {first_line(exc)}") from None
        return [tuple(r) for r in rows]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT, or ROLLBACK when the block raises."""
        con = self.connection
        con.begin()
        try:
            yield
        except BaseException:
            con.rollback()
            raise
        con.commit()

    def load_staging(self, table: str, rows: pa.Table) -> None:
        """Insert the Arrow rows into the staging table in one statement."""
        import duckdb

        view = "_cdc_staged_rows"
        columns = ", ".join(self.dialect.quote(name) for name in rows.schema.names)
        con = self.connection
        con.register(view, rows)
        try:
            con.execute(
                f"INSERT INTO {self.dialect.staging_table(table)} ({columns})"
                f" SELECT {columns} FROM {view}"
            )
        except duckdb.Error as exc:
            raise WarehouseError(f"duckdb: staging {table}: {first_line(exc)}") from None
        finally:
            con.unregister(view)
