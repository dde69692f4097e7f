"""Warehouse SQL generation (PostgreSQL/Redshift, DuckDB, Snowflake) and settings, no server.

The Snowflake warehouse runs here against a recording stand-in for ``snowflake.connector``:
the statements of a whole publish, in order, and how their counts are read.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import types
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from cdc.config.settings import load_settings
from cdc.errors import ConfigError
from cdc.runtime.logs import SecretRedactor, secret_values
from cdc.warehouse import ApplyPlan, SchemaMismatchError, open_warehouse
from cdc.warehouse.duckdb import DuckDbDialect, DuckDbWarehouse
from cdc.warehouse.postgres import PostgresDialect, PostgresWarehouse
from cdc.warehouse.publish import publish_table
from cdc.warehouse.snowflake import SnowflakeDialect, SnowflakeWarehouse
from tests.support.paths import REPO_ROOT

CONFIG = REPO_ROOT / "config"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

TYPES = pa.schema(
    [
        ("flag", pa.bool_()),
        ("i8", pa.int8()),
        ("i32", pa.int32()),
        ("i64", pa.int64()),
        ("u64", pa.uint64()),
        ("f32", pa.float32()),
        ("f64", pa.float64()),
        ("money", pa.decimal128(38, 2)),
        ("name", pa.string()),
        ("big_name", pa.large_string()),
        ("blob", pa.binary()),
        ("day", pa.date32()),
        ("at_utc", pa.timestamp("us", "UTC")),
        ("at_local", pa.timestamp("us")),
        ("clock", pa.time64("us")),
        ("tags", pa.list_(pa.string())),
        ("point", pa.struct([("x", pa.float64()), ("y", pa.float64())])),
        ("attrs", pa.map_(pa.string(), pa.int64())),
    ]
)


def test_each_dialect_maps_every_arrow_type_to_its_own_column_type() -> None:
    mapped = {
        d.name: [d.column_type(f) for f in TYPES]
        for d in (PostgresDialect(), DuckDbDialect(), SnowflakeDialect())
    }
    assert mapped == {
        "postgres": [
            "BOOLEAN",
            "SMALLINT",
            "INTEGER",
            "BIGINT",
            "NUMERIC(20,0)",
            "REAL",
            "DOUBLE PRECISION",
            "NUMERIC(38,2)",
            "VARCHAR(65535)",
            "VARCHAR(65535)",
            "BYTEA",
            "DATE",
            "TIMESTAMPTZ",
            "TIMESTAMP",
            "TIME",
            "JSONB",
            "JSONB",
            "JSONB",
        ],
        "duckdb": [
            "BOOLEAN",
            "TINYINT",
            "INTEGER",
            "BIGINT",
            "UBIGINT",
            "FLOAT",
            "DOUBLE",
            "DECIMAL(38,2)",
            "VARCHAR",
            "VARCHAR",
            "BLOB",
            "DATE",
            "TIMESTAMPTZ",
            "TIMESTAMP",
            "TIME",
            "VARCHAR[]",
            'STRUCT("x" DOUBLE, "y" DOUBLE)',
            "MAP(VARCHAR, BIGINT)",
        ],
        "snowflake": [
            "BOOLEAN",
            "NUMBER(3,0)",
            "NUMBER(10,0)",
            "NUMBER(19,0)",
            "NUMBER(20,0)",
            "FLOAT",
            "FLOAT",
            "NUMBER(38,2)",
            "VARCHAR",
            "VARCHAR",
            "BINARY",
            "DATE",
            "TIMESTAMP_TZ",
            "TIMESTAMP_NTZ",
            "TIME",
            "ARRAY",
            "OBJECT",
            "OBJECT",
        ],
    }


@pytest.mark.parametrize("dialect", [PostgresDialect(), DuckDbDialect(), SnowflakeDialect()])
def test_a_type_without_a_column_type_is_a_one_line_error(dialect: Any) -> None:
    with pytest.raises(SchemaMismatchError) as caught:
        dialect.column_type(pa.field("lag", pa.duration("s")))
    assert str(caught.value) == (
        f"column 'lag': Arrow type duration[s] has no {dialect.name} column type"
    )


def test_identifiers_are_quoted_and_snowflake_ones_upper_cased() -> None:
    assert PostgresDialect().quote('odd"name') == '"odd""name"'
    assert PostgresDialect().table_ref("gold", "Mixed") == '"gold"."Mixed"'
    assert SnowflakeDialect().table_ref("gold", "customer_360") == '"GOLD"."CUSTOMER_360"'


SCHEMA = pa.schema(
    [
        ("order_date", pa.date32()),
        ("region", pa.string()),
        ("revenue", pa.decimal128(38, 2)),
        ("tags", pa.list_(pa.string())),
    ]
)
KEYS = ("order_date", "region")
PLAN = ApplyPlan(
    table="daily_revenue",
    schema=SCHEMA,
    keys=KEYS,
    version=7,
    previous=5,
    rows=10,
    published_at=WHEN,
    full=False,
)


def test_postgres_ddl_is_redshift_compatible() -> None:
    d = PostgresDialect()
    assert d.create_schema("gold") == 'CREATE SCHEMA IF NOT EXISTS "gold"'
    assert d.create_control("gold") == (
        'CREATE TABLE IF NOT EXISTS "gold"."_cdc_publish_state" ("table_name" VARCHAR(256)'
        ' NOT NULL PRIMARY KEY, "delta_version" BIGINT NOT NULL, "rows" BIGINT NOT NULL,'
        ' "published_at" TIMESTAMPTZ NOT NULL)'
    )
    assert d.create_table("gold", "daily_revenue", SCHEMA, KEYS) == (
        'CREATE TABLE "gold"."daily_revenue" ("order_date" DATE NOT NULL, "region"'
        ' VARCHAR(65535) NOT NULL, "revenue" NUMERIC(38,2), "tags" JSONB,'
        ' PRIMARY KEY ("order_date", "region"))'
    )
    assert d.add_column("gold", "daily_revenue", pa.field("orders", pa.int64())) == (
        'ALTER TABLE "gold"."daily_revenue" ADD COLUMN "orders" BIGINT'
    )
    assert d.create_staging("daily_revenue", SCHEMA) == (
        'CREATE TEMP TABLE "_cdc_stage_daily_revenue" ("order_date" DATE, "region"'
        ' VARCHAR(65535), "revenue" NUMERIC(38,2), "tags" JSONB, "_cdc_op" CHAR(1) NOT NULL)'
    )
    assert d.drop_staging("daily_revenue") == 'DROP TABLE IF EXISTS "_cdc_stage_daily_revenue"'


def test_postgres_transaction_is_control_update_then_delete_using_then_insert() -> None:
    statements = PostgresDialect().apply_statements("gold", PLAN)
    stage, target = '"_cdc_stage_daily_revenue"', '"gold"."daily_revenue"'
    match = f'{stage}."order_date" = {target}."order_date" AND {stage}."region" = {target}."region"'
    assert [(s.sql, s.params, s.counts) for s in statements] == [
        (
            'UPDATE "gold"."_cdc_publish_state" SET "delta_version" = %s, "rows" = %s,'
            ' "published_at" = %s WHERE "table_name" = %s AND "delta_version" = %s',
            (7, 10, WHEN, "daily_revenue", 5),
            "control",
        ),
        (
            f"DELETE FROM {target} USING {stage} WHERE {match} AND {stage}.\"_cdc_op\" = 'D'",
            (),
            "deleted",
        ),
        (
            f"DELETE FROM {target} USING {stage} WHERE {match} AND {stage}.\"_cdc_op\" = 'U'",
            (),
            "replaced",
        ),
        (
            f'INSERT INTO {target} ("order_date", "region", "revenue", "tags") SELECT'
            f' {stage}."order_date", {stage}."region", {stage}."revenue", {stage}."tags"'
            f" FROM {stage} WHERE {stage}.\"_cdc_op\" = 'U'",
            (),
            "upserted",
        ),
    ]


def test_a_first_or_full_publish_inserts_the_control_row_and_drops_absent_keys() -> None:
    plan = dataclasses.replace(PLAN, previous=None, full=True)
    first, absent, *rest = DuckDbDialect().apply_statements("gold", plan)
    assert (first.sql, first.params, first.counts) == (
        'INSERT INTO "gold"."_cdc_publish_state" ("table_name", "delta_version", "rows",'
        ' "published_at") SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM'
        ' "gold"."_cdc_publish_state" WHERE "table_name" = ?)',
        ("daily_revenue", 7, 10, WHEN, "daily_revenue"),
        "control",
    )
    stage, target = '"_cdc_stage_daily_revenue"', '"gold"."daily_revenue"'
    assert (absent.sql, absent.counts) == (
        f"DELETE FROM {target} WHERE NOT EXISTS (SELECT 1 FROM {stage} WHERE"
        f' {stage}."order_date" = {target}."order_date" AND {stage}."region" ='
        f' {target}."region")',
        "deleted",
    )
    assert [s.counts for s in rest] == ["deleted", "replaced", "upserted"]


def test_snowflake_stages_nested_values_as_json_and_merges_once() -> None:
    d = SnowflakeDialect()
    assert d.create_staging("daily_revenue", SCHEMA) == (
        'CREATE TEMPORARY TABLE "_CDC_STAGE_DAILY_REVENUE" ("ORDER_DATE" DATE, "REGION"'
        ' VARCHAR, "REVENUE" NUMBER(38,2), "TAGS" VARCHAR, "_CDC_OP" CHAR(1) NOT NULL)'
    )
    assert d.create_table("gold", "daily_revenue", SCHEMA, KEYS) == (
        'CREATE TABLE "GOLD"."DAILY_REVENUE" ("ORDER_DATE" DATE NOT NULL, "REGION" VARCHAR'
        ' NOT NULL, "REVENUE" NUMBER(38,2), "TAGS" ARRAY,'
        ' PRIMARY KEY ("ORDER_DATE", "REGION"))'
    )
    assert d.create_control("gold") == (
        'CREATE TABLE IF NOT EXISTS "GOLD"."_CDC_PUBLISH_STATE" ("TABLE_NAME" VARCHAR(256)'
        ' NOT NULL PRIMARY KEY, "DELTA_VERSION" NUMBER(19,0) NOT NULL, "ROWS" NUMBER(19,0)'
        ' NOT NULL, "PUBLISHED_AT" TIMESTAMP_TZ NOT NULL)'
    )
    assert d.insert_staging("daily_revenue", [*SCHEMA.names, "_cdc_op"]) == (
        'INSERT INTO "_CDC_STAGE_DAILY_REVENUE" ("ORDER_DATE", "REGION", "REVENUE", "TAGS",'
        ' "_CDC_OP") VALUES (%s, %s, %s, %s, %s)'
    )
    control, merge = d.apply_statements("gold", PLAN)
    assert (control.sql, control.params) == (
        'UPDATE "GOLD"."_CDC_PUBLISH_STATE" SET "DELTA_VERSION" = %s, "ROWS" = %s,'
        ' "PUBLISHED_AT" = %s WHERE "TABLE_NAME" = %s AND "DELTA_VERSION" = %s',
        (7, 10, WHEN, "daily_revenue", 5),
    )
    assert (merge.sql, merge.counts) == (
        'MERGE INTO "GOLD"."DAILY_REVENUE" t USING "_CDC_STAGE_DAILY_REVENUE" s'
        ' ON t."ORDER_DATE" = s."ORDER_DATE" AND t."REGION" = s."REGION"'
        " WHEN MATCHED AND s.\"_CDC_OP\" = 'D' THEN DELETE"
        " WHEN MATCHED AND s.\"_CDC_OP\" = 'U' THEN UPDATE SET"
        ' t."REVENUE" = s."REVENUE", t."TAGS" = PARSE_JSON(s."TAGS")'
        " WHEN NOT MATCHED AND s.\"_CDC_OP\" = 'U' THEN INSERT"
        ' ("ORDER_DATE", "REGION", "REVENUE", "TAGS")'
        ' VALUES (s."ORDER_DATE", s."REGION", s."REVENUE", PARSE_JSON(s."TAGS"))',
        "merge",
    )
    full = d.apply_statements("gold", dataclasses.replace(PLAN, full=True))
    assert [s.counts for s in full] == ["control", "deleted", "merge"]
    assert full[1].sql == (
        'DELETE FROM "GOLD"."DAILY_REVENUE" t WHERE NOT EXISTS (SELECT 1 FROM'
        ' "_CDC_STAGE_DAILY_REVENUE" s WHERE s."ORDER_DATE" = t."ORDER_DATE"'
        ' AND s."REGION" = t."REGION")'
    )


def test_a_key_only_table_merges_without_an_update_clause() -> None:
    plan = dataclasses.replace(PLAN, schema=pa.schema([("region", pa.string())]), keys=("region",))
    assert "UPDATE SET" not in SnowflakeDialect().merge("gold", plan)


# --------------------------------------------------------------------- Snowflake I/O


class _Cursor:
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.rowcount = 0
        self.description: list[tuple[str]] | None = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str, params: Any = None) -> _Cursor:
        self.log.append((sql, params))
        self._rows, self.description, self.rowcount = [], None, 0
        if sql.startswith(("INSERT INTO", "UPDATE")):
            self.rowcount = 1
        if sql.startswith("MERGE"):
            self.description = [
                ("number of rows inserted",),
                ("number of rows updated",),
                ("number of rows deleted",),
            ]
            self._rows = [(2, 1, 3)]
        return self

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.log.append((sql, list(rows)))

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None


class _Connection:
    def __init__(self, log: list[tuple[str, Any]], options: dict[str, Any]) -> None:
        self.log, self.options, self.closed = log, options, False

    def cursor(self) -> _Cursor:
        return _Cursor(self.log)

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def fake_snowflake(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """``snowflake.connector`` replaced by a recorder; returns the statements it ran."""
    log: list[tuple[str, Any]] = []
    connector = types.ModuleType("snowflake.connector")

    class Error(Exception):
        pass

    connector.Error = Error  # type: ignore[attr-defined]
    connector.connect = lambda **options: _Connection(log, options)  # type: ignore[attr-defined]
    package = types.ModuleType("snowflake")
    package.connector = connector  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snowflake", package)
    monkeypatch.setitem(sys.modules, "snowflake.connector", connector)
    return log


def test_snowflake_publish_runs_its_statements_in_one_transaction(
    fake_snowflake: list[tuple[str, Any]], tmp_path: Path
) -> None:
    uri = str(tmp_path / "daily_revenue")
    write_deltalake(
        uri,
        pa.table(
            {
                "order_date": [date(2026, 1, 1), date(2026, 1, 2)],
                "region": ["EMEA", "AMER"],
                "revenue": pa.array([Decimal("1.50"), None], pa.decimal128(38, 2)),
                "tags": [["a"], None],
            }
        ),
    )
    warehouse = SnowflakeWarehouse(
        "gold", account="acme-x", user="u", password="secret-pw", database="ANALYTICS"
    )
    with warehouse:
        result = publish_table(warehouse, "daily_revenue", uri, KEYS, now=lambda: WHEN)
    assert (result.mode, result.upserted, result.deleted) == ("full", 3, 3)  # the MERGE's row
    sql = [s for s, _ in fake_snowflake]
    assert [s.split(" (")[0] for s in sql] == [
        'SELECT "DELTA_VERSION" FROM "GOLD"."_CDC_PUBLISH_STATE" WHERE "TABLE_NAME" = %s',
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND"
        " table_name = %s ORDER BY ordinal_position",
        'CREATE TABLE "GOLD"."DAILY_REVENUE"',
        'DROP TABLE IF EXISTS "_CDC_STAGE_DAILY_REVENUE"',
        'CREATE TEMPORARY TABLE "_CDC_STAGE_DAILY_REVENUE"',
        'INSERT INTO "_CDC_STAGE_DAILY_REVENUE"',
        "BEGIN",
        'INSERT INTO "GOLD"."_CDC_PUBLISH_STATE"',
        'DELETE FROM "GOLD"."DAILY_REVENUE" t WHERE NOT EXISTS',
        'MERGE INTO "GOLD"."DAILY_REVENUE" t USING "_CDC_STAGE_DAILY_REVENUE" s ON t."ORDER_DATE"'
        ' = s."ORDER_DATE" AND t."REGION" = s."REGION" WHEN MATCHED AND s."_CDC_OP" = \'D\''
        ' THEN DELETE WHEN MATCHED AND s."_CDC_OP" = \'U\' THEN UPDATE SET t."REVENUE" ='
        ' s."REVENUE", t."TAGS" = PARSE_JSON(s."TAGS") WHEN NOT MATCHED AND s."_CDC_OP" = \'U\''
        " THEN INSERT",
        "COMMIT",
        'DROP TABLE IF EXISTS "_CDC_STAGE_DAILY_REVENUE"',
    ]
    assert fake_snowflake[1][1] == ("GOLD", "DAILY_REVENUE")
    staged = fake_snowflake[5][1]
    assert sorted(staged) == [
        (date(2026, 1, 1), "EMEA", Decimal("1.50"), '["a"]', "U"),
        (date(2026, 1, 2), "AMER", None, None, "U"),
    ]


def test_snowflake_without_its_connector_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snowflake.connector", None)
    warehouse = SnowflakeWarehouse("gold", account="a", user="u", password=None, database="D")
    with pytest.raises(ConfigError) as caught:
        warehouse.connect()
    assert str(caught.value) == (
        "warehouse.target snowflake needs the Snowflake connector:"
        " pip install 'cdc-service[snowflake]'"
    )


# ------------------------------------------------------------------------- settings


def test_duckdb_is_the_default_in_a_file_beside_the_lake(tmp_path: Path) -> None:
    settings = load_settings("local", config_dir=CONFIG, environ={})
    assert settings.warehouse.target == "duckdb" and settings.warehouse.schema == "gold"
    warehouse = open_warehouse(settings)
    assert isinstance(warehouse, DuckDbWarehouse)
    assert warehouse.path == REPO_ROOT / "var" / "warehouse.duckdb"
    moved = load_settings(
        "local", [f"lake.root={tmp_path / 'demo' / 'lake'}"], config_dir=CONFIG, environ={}
    )
    assert open_warehouse(moved).describe() == (
        f"duckdb {tmp_path / 'demo' / 'warehouse.duckdb'} (schema gold)"
    )
    relative = load_settings("local", ["warehouse.path=var/w.duckdb"], config_dir=CONFIG)
    assert relative.warehouse.path == str(REPO_ROOT / "var" / "w.duckdb")


def test_warehouse_settings_are_checked_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"warehouse\.target: Input should be 'duckdb'"):
        load_settings("local", ["warehouse.target=oracle"], config_dir=CONFIG, environ={})
    with pytest.raises(ConfigError, match=r"unknown key 'warehouse\.bogus'; valid keys: target,"):
        load_settings("local", ["warehouse.bogus=1"], config_dir=CONFIG, environ={})
    with pytest.raises(ConfigError, match=r"warehouse\.schema: String should match pattern"):
        load_settings("local", ['warehouse.schema=a"; drop'], config_dir=CONFIG, environ={})
    on_s3 = load_settings("local", ["lake.root=s3://b/lake"], config_dir=CONFIG, environ={})
    with pytest.raises(ConfigError, match=r"^warehouse\.path: the lake is on an object store"):
        open_warehouse(on_s3)
    postgres = load_settings("local", ["warehouse.target=postgres"], config_dir=CONFIG)
    with pytest.raises(ConfigError, match=r"^warehouse\.target postgres needs warehouse\.dsn or"):
        open_warehouse(postgres)
    snowflake = load_settings(
        "local", ["warehouse.target=snowflake", "warehouse.user=u"], config_dir=CONFIG
    )
    with pytest.raises(ConfigError) as caught:
        open_warehouse(snowflake)
    assert str(caught.value) == (
        "warehouse.target snowflake needs warehouse.account, warehouse.database"
    )


def test_env_vars_override_the_warehouse_section() -> None:
    settings = load_settings(
        "local",
        config_dir=CONFIG,
        environ={"CDC_WAREHOUSE_TARGET": "postgres", "CDC_WAREHOUSE_HOST": "db.internal"},
    )
    warehouse = open_warehouse(settings)
    assert isinstance(warehouse, PostgresWarehouse)
    assert warehouse.describe() == "postgres db.internal:5432/postgres (schema gold)"


def test_dev_publishes_to_postgres_and_prod_to_snowflake_with_secret_references() -> None:
    dev = load_settings("dev", config_dir=CONFIG, environ={})
    prod = load_settings("prod", config_dir=CONFIG, environ={})
    assert (dev.warehouse.target, prod.warehouse.target) == ("postgres", "snowflake")
    for settings in (dev, prod):
        assert settings.warehouse.password == "env:WAREHOUSE_PASSWORD"
        assert "WAREHOUSE_PASSWORD" not in repr(settings.warehouse)


def test_the_warehouse_password_never_reaches_a_log_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WH_PASSWORD", "s3cret-warehouse-pw")
    settings = load_settings(
        "local",
        [
            "warehouse.password=env:WH_PASSWORD",
            "warehouse.dsn=postgresql://u:dsn-pass-1234@db:5432/a",
        ],
        config_dir=CONFIG,
    )
    assert "s3cret" not in repr(settings) and "dsn-pass" not in repr(settings)
    found = secret_values(settings)
    assert {"s3cret-warehouse-pw", "dsn-pass-1234"} <= found
    record = logging.LogRecord(
        "psycopg", logging.INFO, __file__, 1, "login %s / %s", ("s3cret-warehouse-pw", "x"), None
    )
    record2 = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "dsn postgresql://u:dsn-pass-1234@db:5432/a", (), None
    )
    redactor = SecretRedactor(found)
    assert redactor.filter(record) and redactor.filter(record2)
    assert record.getMessage() == "login *** / x"
    assert "dsn-pass" not in record2.getMessage()


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        (
            "postgresql://cdc:S3NT1NEL@[::1:5432/db",
            'end of string reached when looking for matching "]" in IPv6 host address',
        ),
        ("host=db S3NT1NEL", 'missing "=" after "..." in connection info string'),
        ("host=db S3NT1NEL=x", 'invalid connection option "..."'),
        ("postgresql://cdc:S3NT1NEL@db/a?x=S3NT1NEL", 'invalid URI query parameter: "..."'),
    ],
)
def test_a_malformed_dsn_names_its_problem_not_its_value(dsn: str, problem: str) -> None:
    """libpq's message quotes the DSN (its password): the error keeps what is wrong only,
    and names no host it made up (it used to say localhost:5432/postgres)."""
    with pytest.raises(ConfigError) as refused:
        PostgresWarehouse("gold", dsn)
    assert str(refused.value) == (
        f"warehouse.dsn is not a PostgreSQL connection string: {problem} (the value is not"
        " shown: it may hold a password)"
    )


def test_a_dsn_names_its_host_without_its_password() -> None:
    warehouse = PostgresWarehouse("gold", "postgresql://cdc:S3NT1NEL@db.internal:6543/analytics")
    assert warehouse.describe() == "postgres db.internal:6543/analytics (schema gold)"
