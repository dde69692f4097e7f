"""Snowflake over ``snowflake-connector-python`` (an optional dependency:
``pip install 'cdc-service[snowflake]'``; without it, choosing this target fails in one line).

Identifiers are written in upper case, as Snowflake stores unquoted ones, so queries name the
published tables and columns without quotes. The changes are applied with one ``MERGE`` from
the staging table (a ``TEMPORARY`` table: it ends with the session). Nested Arrow columns
are staged as JSON text and land as ``ARRAY`` / ``OBJECT`` through ``PARSE_JSON``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from cdc.errors import ConfigError
from cdc.warehouse.base import (
    DELETE,
    OP_COLUMN,
    UPSERT,
    Applied,
    ApplyPlan,
    Dialect,
    Statement,
    Warehouse,
    WarehouseError,
    WarehouseUnavailableError,
    arrow_rows,
    first_line,
)
from cdc.warehouse.postgres import python_ready

# snowflake-connector-python is optional (the snowflake extra): imported when a connection is
# made.

__all__ = ["SnowflakeDialect", "SnowflakeWarehouse", "snowflake_connector"]

_INTEGERS = {
    (8, True): "NUMBER(3,0)",
    (16, True): "NUMBER(5,0)",
    (32, True): "NUMBER(10,0)",
    (64, True): "NUMBER(19,0)",
    (8, False): "NUMBER(3,0)",
    (16, False): "NUMBER(5,0)",
    (32, False): "NUMBER(10,0)",
    (64, False): "NUMBER(20,0)",
}


def _is_list(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_fixed_size_list(t)
    )


def _is_nested(t: pa.DataType) -> bool:
    return _is_list(t) or bool(pa.types.is_struct(t) or pa.types.is_map(t))


def snowflake_connector() -> Any:
    """The ``snowflake.connector`` module.

    Raises:
        ConfigError: it is not installed (one line saying how to install it).
    """
    try:
        import snowflake.connector
    except ImportError:
        raise ConfigError(
            "warehouse.target snowflake needs the Snowflake connector:"
            " pip install 'cdc-service[snowflake]'"
        ) from None
    return snowflake.connector


class SnowflakeDialect(Dialect):
    """Snowflake's SQL: upper-case identifiers, ``MERGE``, ``VARIANT``-family nested types."""

    name = "snowflake"

    def normalize(self, name: str) -> str:
        """Upper case: what Snowflake makes of an unquoted identifier."""
        return name.upper()

    def column_type(self, field: pa.Field) -> str:
        """Snowflake's type of an Arrow field."""
        t = field.type
        if pa.types.is_dictionary(t):
            return self.column_type(pa.field(field.name, t.value_type))
        if pa.types.is_boolean(t):
            return "BOOLEAN"
        if pa.types.is_integer(t):
            return _INTEGERS[(t.bit_width, pa.types.is_signed_integer(t))]
        if pa.types.is_floating(t):
            return "FLOAT"
        if pa.types.is_decimal(t) and t.precision <= 38:
            return f"NUMBER({t.precision},{t.scale})"
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "VARCHAR"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
            return "BINARY"
        if pa.types.is_date(t):
            return "DATE"
        if pa.types.is_timestamp(t):
            return "TIMESTAMP_TZ" if t.tz else "TIMESTAMP_NTZ"
        if pa.types.is_time(t):
            return "TIME"
        if _is_list(t):
            return "ARRAY"
        if pa.types.is_struct(t) or pa.types.is_map(t):
            return "OBJECT"
        raise self._unsupported(field)

    def staging_type(self, field: pa.Field) -> str:
        """Nested columns are staged as JSON text (bound parameters are scalars)."""
        return "VARCHAR" if _is_nested(field.type) else self.column_type(field)

    def staged_value(self, column_ref: str, field: pa.Field) -> str:
        """``PARSE_JSON`` turns staged JSON text into the nested value."""
        return f"PARSE_JSON({column_ref})" if _is_nested(field.type) else column_ref

    def control_types(self) -> tuple[str, str, str]:
        """Types of the control table's name, count and time columns."""
        return "VARCHAR(256)", "NUMBER(19,0)", "TIMESTAMP_TZ"

    def merge(self, schema: str, plan: ApplyPlan) -> str:
        """One ``MERGE`` from staging: delete ``D`` keys, update or insert ``U`` rows."""
        q = self.quote
        on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in plan.keys)
        op = f"s.{q(OP_COLUMN)}"
        names = [f.name for f in plan.schema]
        values = {f.name: self.staged_value(f"s.{q(f.name)}", f) for f in plan.schema}
        clauses = [f"WHEN MATCHED AND {op} = '{DELETE}' THEN DELETE"]
        updates = [n for n in names if n not in plan.keys]
        if updates:
            sets = ", ".join(f"t.{q(n)} = {values[n]}" for n in updates)
            clauses.append(f"WHEN MATCHED AND {op} = '{UPSERT}' THEN UPDATE SET {sets}")
        clauses.append(
            f"WHEN NOT MATCHED AND {op} = '{UPSERT}' THEN INSERT"
            f" ({', '.join(q(n) for n in names)}) VALUES ({', '.join(values[n] for n in names)})"
        )
        return (
            f"MERGE INTO {self.table_ref(schema, plan.table)} t USING"
            f" {self.staging_table(plan.table)} s ON {on} {' '.join(clauses)}"
        )

    def apply_statements(self, schema: str, plan: ApplyPlan) -> list[Statement]:
        """The control row, the keys a full load drops, then one ``MERGE``."""
        statements = [self.control_update(schema, plan)]
        if plan.full:
            target = self.table_ref(schema, plan.table)
            staging = self.staging_table(plan.table)
            statements.append(
                Statement(
                    f"DELETE FROM {target} t WHERE NOT EXISTS (SELECT 1 FROM {staging} s"
                    f" WHERE {self._key_match('t', 's', plan.keys)})",
                    counts="deleted",
                )
            )
        statements.append(Statement(self.merge(schema, plan), counts="merge"))
        return statements

    def insert_staging(self, table: str, names: list[str]) -> str:
        """The multi-row ``INSERT`` that loads the staging table."""
        columns = ", ".join(self.quote(n) for n in names)
        marks = ", ".join([self.param] * len(names))
        return f"INSERT INTO {self.staging_table(table)} ({columns}) VALUES ({marks})"


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


class SnowflakeWarehouse(Warehouse):
    """A Snowflake database and schema."""

    dialect = SnowflakeDialect()

    def __init__(
        self,
        schema: str,
        *,
        account: str,
        user: str,
        password: str | None,
        database: str,
        warehouse: str | None = None,
        role: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        """Create the warehouse (the session opens on ``connect``).

        Args:
            schema: the schema of the tables and the control table.
            account: the account identifier (``orgname-account``).
            user, password: the login (password resolved).
            database: the database holding ``schema``.
            warehouse: the virtual warehouse running the statements (default: the user's).
            role: the role (default: the user's).
            connect_timeout_s: how long the login may take.
        """
        super().__init__(schema)
        self.account, self.user, self.password = account, user, password
        self.database, self.warehouse, self.role = database, warehouse, role
        self.connect_timeout_s = connect_timeout_s

    def describe(self) -> str:
        """Account, database and schema (never the credentials)."""
        return f"snowflake {self.account}/{self.database} (schema {self.schema})"

    def connect(self) -> None:
        """Log in (autocommit; transactions are explicit)."""
        connector = snowflake_connector()
        options = {
            "account": self.account,
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "warehouse": self.warehouse,
            "role": self.role,
            "login_timeout": max(1, math.ceil(self.connect_timeout_s)),
            "application": "cdc-service",
        }
        try:
            self._conn = connector.connect(**{k: v for k, v in options.items() if v is not None})
        except connector.Error as exc:
            raise WarehouseUnavailableError(
                f"cannot reach the snowflake warehouse {self.account}: {first_line(exc)}"
            ) from None

    def _cursor(self, statement: Statement) -> Any:
        connector = snowflake_connector()
        cursor = self.connection.cursor()
        try:
            cursor.execute(statement.sql, statement.params or None)
        except connector.Error as exc:
            raise WarehouseError(f"snowflake: {first_line(exc)}") from None
        return cursor

    def execute(self, statement: Statement) -> int:
        """Run a statement; return its row count."""
        return max(int(self._cursor(statement).rowcount or 0), 0)

    def query(self, statement: Statement) -> list[tuple[Any, ...]]:
        """Run a query; return its rows."""
        return [tuple(r) for r in self._cursor(statement).fetchall()]

    def merge_counts(self, statement: Statement) -> Applied:
        """Run the ``MERGE``; its one result row holds its counts."""
        cursor = self._cursor(statement)
        row = cursor.fetchone() or ()
        names = [d[0].lower() for d in cursor.description or ()]
        counts = dict(zip(names, row, strict=False))
        return Applied(
            upserted=int(counts.get("number of rows inserted", 0))
            + int(counts.get("number of rows updated", 0)),
            deleted=int(counts.get("number of rows deleted", 0)),
        )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT, or ROLLBACK when the block raises."""
        self.execute(Statement("BEGIN"))
        try:
            yield
        except BaseException:
            self.execute(Statement("ROLLBACK"))
            raise
        self.execute(Statement("COMMIT"))

    def load_staging(self, table: str, rows: pa.Table) -> None:
        """Multi-row ``INSERT``s of bound values (nested values as JSON text)."""
        connection = self.connection
        connector = snowflake_connector()
        rows = python_ready(rows)
        nested = [i for i, f in enumerate(rows.schema) if _is_nested(f.type)]
        maps = {i for i in nested if pa.types.is_map(rows.schema.field(i).type)}
        sql = self.dialect.insert_staging(table, rows.schema.names)
        cursor = connection.cursor()
        try:
            for batch in arrow_rows(rows, batch_rows=16_384):
                if nested:
                    batch = [_json_columns(row, nested, maps) for row in batch]
                cursor.executemany(sql, batch)
        except connector.Error as exc:
            raise WarehouseError(f"snowflake: staging {table}: {first_line(exc)}") from None


def _json_columns(row: tuple[Any, ...], nested: list[int], maps: set[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in nested:
        if values[i] is not None:
            values[i] = _json(dict(values[i]) if i in maps else values[i])
    return tuple(values)
