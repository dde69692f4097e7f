"""PostgreSQL over psycopg 3, in SQL that Redshift also speaks where it can.

Redshift-compatible choices: the upsert is Redshift's staging pattern (``DELETE ... USING``
the staging table, then ``INSERT ... SELECT``) rather than ``ON CONFLICT``; strings are
``VARCHAR(65535)`` (Redshift turns ``TEXT`` into ``VARCHAR(256)``); primary keys are declared
(Redshift keeps them as planner hints). What Redshift does not share: the staging table is
loaded with ``COPY ... FROM STDIN`` (Redshift's ``COPY`` reads from S3), and nested columns are
``JSONB`` (Redshift's is ``SUPER``), binary ones ``BYTEA`` (``VARBYTE``).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cdc.errors import ConfigError
from cdc.warehouse.base import (
    Dialect,
    Statement,
    Warehouse,
    WarehouseError,
    WarehouseUnavailableError,
    first_line,
)

# psycopg is imported where a connection is made or a DSN parsed: the SQL rendering does not need
# it.

__all__ = ["PostgresDialect", "PostgresWarehouse", "csv_ready", "dsn_parts", "python_ready"]

_COPY_ROWS = 50_000
"""Rows per CSV chunk sent to ``COPY`` (bounds the memory of one chunk)."""

_INTEGERS = {
    (8, True): "SMALLINT",
    (16, True): "SMALLINT",
    (32, True): "INTEGER",
    (64, True): "BIGINT",
    (8, False): "SMALLINT",
    (16, False): "INTEGER",
    (32, False): "BIGINT",
    (64, False): "NUMERIC(20,0)",
}


def _json(value: Any) -> str:
    # Nested values may hold dates, times and decimals: JSON has strings for them.
    return json.dumps(value, default=str)


def _nested(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_struct(t)
        or pa.types.is_map(t)
    )


class PostgresDialect(Dialect):
    """PostgreSQL's SQL (Redshift-compatible where practical: see the module's docstring)."""

    name = "postgres"

    def column_type(self, field: pa.Field) -> str:
        """PostgreSQL's type of an Arrow field (nested types become ``JSONB``)."""
        t = field.type
        if pa.types.is_dictionary(t):
            return self.column_type(pa.field(field.name, t.value_type))
        if pa.types.is_boolean(t):
            return "BOOLEAN"
        if pa.types.is_integer(t):
            return _INTEGERS[(t.bit_width, pa.types.is_signed_integer(t))]
        if pa.types.is_float16(t) or pa.types.is_float32(t):
            return "REAL"
        if pa.types.is_float64(t):
            return "DOUBLE PRECISION"
        if pa.types.is_decimal(t) and t.precision <= 38:
            return f"NUMERIC({t.precision},{t.scale})"
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "VARCHAR(65535)"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            return "BYTEA"
        if pa.types.is_date(t):
            return "DATE"
        if pa.types.is_timestamp(t):
            return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
        if pa.types.is_time(t):
            return "TIME"
        if _nested(t):
            return "JSONB"
        raise self._unsupported(field)

    def temporary(self) -> str:
        """The ``CREATE`` keyword of a session-temporary table."""
        return "TEMP"


_QUOTED = re.compile(r'"([^"]*)"')


def dsn_parts(dsn: str) -> dict[str, Any]:
    """The parts of a libpq connection string or URI (``{}`` for an empty one).

    Raises:
        ConfigError: libpq cannot parse it. libpq's own message quotes the string (or a piece
            of it), which may hold the password: the message keeps what is wrong and drops
            every quoted piece of the DSN.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        return dict(conninfo_to_dict(dsn))
    except psycopg.Error as exc:
        problem = first_line(exc)
        problem = re.sub(r'\s*in URI:\s*".*"\s*$', "", problem)

        def hide(match: re.Match[str]) -> str:  # a piece of the DSN, not a "=" or a "]"
            piece = match.group(1)
            secret = piece in dsn and any(c.isalnum() for c in piece)
            return '"..."' if secret else match.group(0)

        problem = _QUOTED.sub(hide, problem).rstrip(" :")
        raise ConfigError(
            f"warehouse.dsn is not a PostgreSQL connection string: {problem} (the value is"
            " not shown: it may hold a password)"
        ) from None


def csv_ready(rows: pa.Table) -> pa.Table:
    """``rows`` as PostgreSQL's CSV ``COPY`` reads them: nested values as JSON text, binary
    values as ``bytea`` hex, and :func:`python_ready`'s conversions. (Arrow's CSV writes an
    empty string quoted and a null as nothing, which ``COPY`` reads back as such.)"""
    rows = python_ready(rows)
    columns = []
    for field, column in zip(rows.schema, rows.columns, strict=True):
        t = field.type
        if _nested(t):
            is_map = pa.types.is_map(t)
            column = pa.array(
                [
                    None if v is None else _json(dict(v) if is_map else v)
                    for v in column.to_pylist()
                ],
                pa.large_string(),
            )
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            column = pa.array(
                [None if v is None else "\\x" + v.hex() for v in column.to_pylist()],
                pa.large_string(),
            )
        columns.append(column)
    return pa.table(columns, names=rows.schema.names)


def python_ready(rows: pa.Table) -> pa.Table:
    """``rows`` with the types a DB-API driver binds: nanosecond timestamps in microseconds
    (the warehouses' precision) and dictionary columns decoded."""
    columns = []
    for field, column in zip(rows.schema, rows.columns, strict=True):
        t = field.type
        if pa.types.is_dictionary(t):
            column, t = column.cast(t.value_type), t.value_type
        if pa.types.is_timestamp(t) and t.unit == "ns":
            column = pc.cast(column, pa.timestamp("us", t.tz), safe=False)
        columns.append(column)
    return pa.table(columns, names=rows.schema.names)


class PostgresWarehouse(Warehouse):
    """A PostgreSQL database (or Redshift, but for the staging load: see the module)."""

    dialect = PostgresDialect()

    def __init__(
        self,
        schema: str,
        dsn: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
        user: str | None = None,
        password: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """Create the warehouse (the session opens on ``connect``).

        Args:
            schema: the schema of the tables and the control table.
            dsn: a libpq connection string or URI (credentials resolved).
            host, port, database, user, password: win over the DSN's parts.
            connect_timeout_s: how long to wait for the server.

        Raises:
            ConfigError: ``dsn`` is not a connection string (the message says what is wrong
                with it without repeating it: it may hold a password).
        """
        super().__init__(schema)
        self.dsn = dsn or ""
        self._dsn_parts = dsn_parts(self.dsn)
        self.params: dict[str, Any] = {
            k: v
            for k, v in {
                "host": host,
                "port": port,
                "dbname": database,
                "user": user,
                "password": password,
            }.items()
            if v is not None
        }
        self.connect_timeout_s = connect_timeout_s

    def _where(self) -> str:
        parts: dict[str, Any] = {**self._dsn_parts, **self.params}
        host = parts.get("host") or "localhost"
        port = parts.get("port") or 5432
        database = parts.get("dbname") or parts.get("user") or "postgres"
        return f"{host}:{port}/{database}"

    def describe(self) -> str:
        """Host, port, database and schema (never the credentials)."""
        return f"postgres {self._where()} (schema {self.schema})"

    def connect(self) -> None:
        """Open an autocommit session (transactions are explicit)."""
        import psycopg

        try:
            self._conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, math.ceil(self.connect_timeout_s)),
                application_name="cdc-publish",
                **self.params,
            )
        except psycopg.Error as exc:
            raise WarehouseUnavailableError(
                f"cannot reach the postgres warehouse at {self._where()}: {first_line(exc)}"
            ) from None

    def execute(self, statement: Statement) -> int:
        """Run a statement; return its row count."""
        import psycopg

        try:
            cursor = self.connection.execute(statement.sql, statement.params or None)
        except psycopg.Error as exc:
            raise WarehouseError(f"postgres: {first_line(exc)}") from None
        return max(int(cursor.rowcount), 0)

    def query(self, statement: Statement) -> list[tuple[Any, ...]]:
        """Run a query; return its rows."""
        import psycopg

        try:
            cursor = self.connection.execute(statement.sql, statement.params or None)
            return [tuple(r) for r in cursor.fetchall()]
        except psycopg.Error as exc:
            raise WarehouseError(f"postgres: {first_line(exc)}") from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT, or ROLLBACK when the block raises."""
        import psycopg

        try:
            with self.connection.transaction():
                yield
        except psycopg.Error as exc:
            raise WarehouseError(f"postgres: {first_line(exc)}") from None

    def load_staging(self, table: str, rows: pa.Table) -> None:
        """``COPY ... FROM STDIN`` the rows into the staging table, as CSV written by Arrow
        (no Python object per value but for nested and binary columns)."""
        import psycopg
        from pyarrow import csv

        rows = csv_ready(rows)
        columns = ", ".join(self.dialect.quote(name) for name in rows.schema.names)
        sql = f"COPY {self.dialect.staging_table(table)} ({columns}) FROM STDIN (FORMAT csv)"
        options = csv.WriteOptions(include_header=False)
        try:
            with self.connection.cursor() as cursor, cursor.copy(sql) as copy:
                for batch in rows.to_batches(max_chunksize=_COPY_ROWS):
                    buffer = io.BytesIO()
                    csv.write_csv(batch, buffer, options)
                    copy.write(buffer.getbuffer())
        except psycopg.Error as exc:
            raise WarehouseError(f"postgres: staging {table}: {first_line(exc)}") from None
