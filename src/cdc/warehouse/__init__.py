"""Warehouses ``cdc publish`` copies the gold tables to, behind one interface
(:mod:`cdc.warehouse.base`): DuckDB (the embedded default), PostgreSQL (and Redshift's
dialect) and Snowflake."""

from __future__ import annotations

from cdc.config.settings import Settings
from cdc.errors import ConfigError
from cdc.warehouse.base import (
    CONTROL_TABLE,
    OP_COLUMN,
    Applied,
    ApplyPlan,
    Dialect,
    PublishConflictError,
    SchemaMismatchError,
    Statement,
    Warehouse,
    WarehouseError,
    WarehouseUnavailableError,
)

# Each warehouse is imported when opened: its driver (duckdb, psycopg, snowflake) is slow to
# import or optional.

__all__ = [
    "CONTROL_TABLE",
    "OP_COLUMN",
    "Applied",
    "ApplyPlan",
    "Dialect",
    "PublishConflictError",
    "SchemaMismatchError",
    "Statement",
    "Warehouse",
    "WarehouseError",
    "WarehouseUnavailableError",
    "open_warehouse",
]


def open_warehouse(settings: Settings) -> Warehouse:
    """The (not yet connected) warehouse ``warehouse:`` configures, credentials resolved.

    Raises:
        ConfigError: a setting the target needs is missing, or a secret reference does not
            resolve.
    """
    wh = settings.warehouse
    if wh.target == "duckdb":
        from cdc.warehouse.duckdb import DuckDbWarehouse

        return DuckDbWarehouse(wh.duckdb_path(settings.lake), wh.schema)
    if wh.target == "postgres":
        from cdc.warehouse.postgres import PostgresWarehouse

        if not (wh.dsn or wh.host):
            raise ConfigError("warehouse.target postgres needs warehouse.dsn or warehouse.host")
        return PostgresWarehouse(
            wh.schema,
            wh.resolved_dsn(),
            host=wh.host,
            port=wh.port,
            database=wh.database,
            user=wh.user,
            password=wh.resolved_password(),
            connect_timeout_s=wh.connect_timeout_s,
        )
    from cdc.warehouse.snowflake import SnowflakeWarehouse

    missing = [
        f"warehouse.{name}" for name in ("account", "user", "database") if not getattr(wh, name)
    ]
    if missing:
        raise ConfigError(f"warehouse.target snowflake needs {', '.join(missing)}")
    assert wh.account and wh.user and wh.database
    return SnowflakeWarehouse(
        wh.schema,
        account=wh.account,
        user=wh.user,
        password=wh.resolved_password(),
        database=wh.database,
        warehouse=wh.warehouse,
        role=wh.role,
        connect_timeout_s=wh.connect_timeout_s,
    )
