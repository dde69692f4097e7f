"""Governance without servers: the policy model, the catalog's tags, the resolution, and the
pure compilation per target (PostgreSQL SQL, Lake Formation requests validated against
botocore's model, Snowflake SQL), the generated runbook, and the CLI's errors."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator

from cdc.cli import main
from cdc.config.settings import load_settings
from cdc.errors import ConfigError
from cdc.governance.access import Access, resolve_access
from cdc.governance.base import Change, Item, diff
from cdc.governance.catalog import Catalog
from cdc.governance.lakeformation import lakeformation_items, normalize_resource
from cdc.governance.masks import DUCKDB, POSTGRES, SNOWFLAKE
from cdc.governance.policy import Policy, load_policy
from cdc.governance.postgres import PgColumn, PgRelation, postgres_items
from cdc.governance.run import load_catalog
from cdc.governance.runbook import render_runbook, runbook_accesses
from cdc.governance.snowflake import SnowflakeGovernance, SnowflakeNames, snowflake_items
from cdc.ingest.contracts import parse_contracts
from cdc.warehouse.base import Statement, Warehouse
from cdc.warehouse.snowflake import SnowflakeDialect
from tests.support.paths import REPO_ROOT

CONFIG = REPO_ROOT / "config"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(load_settings("local", config_dir=CONFIG))


@pytest.fixture(scope="module")
def policy() -> Policy:
    """The dev policy: the same roles as local's, with the PostgreSQL and Lake Formation
    targets."""
    return load_policy(CONFIG / "governance" / "dev.yaml")


@pytest.fixture(scope="module")
def access(policy: Policy, catalog: Catalog) -> Access:
    return resolve_access(policy, catalog)


def _policy(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONFIG / "governance" / "dev.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return data


def _load(tmp_path: Path, data: dict[str, Any]) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_policy(path)


# ------------------------------------------------------------------------ the policy model


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"roles__analyst__colums": {"pii": "deny"}},
            "unknown key 'roles.analyst.colums'; valid keys: description, read, columns, rows",
        ),
        (
            {"roles__engineer__columns": {}},
            "role engineer: columns must say what it sees of tag(s) pii (one of deny, null, hash,"
            " partial, clear)",
        ),
        ({"roles__engineer__read": ["platinum"]}, "read 'platinum': 'platinum' is not a layer"),
        (
            {"roles__analyst__columns": {"pii": "blur"}},
            "roles.analyst.columns.pii: Input should be 'clear', 'partial', 'hash', 'null' or"
            " 'deny'",
        ),
        (
            {"targets__lakeformation__principals__analyst_emea": None},
            "targets.lakeformation.principals must name exactly the audiences engineer,"
            " data_scientist, analyst_emea, analyst_amer, analyst_apac; missing analyst_emea",
        ),
        ({"tags__PII": "x"}, "'PII' is not a name"),
    ],
)
def test_a_bad_policy_is_one_line_naming_what_is_wrong(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, _policy(**changes))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_policy_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy file .*nope.yaml does not exist"):
        load_policy(tmp_path / "nope.yaml")


def test_every_environment_has_a_valid_policy(catalog: Catalog) -> None:
    for env in ("local", "dev", "prod"):
        resolve_access(load_policy(CONFIG / "governance" / f"{env}.yaml"), catalog)


# ------------------------------------------------------------------------ tags and catalog


def test_contract_tags_are_checked(contracts_path: Path) -> None:
    data = yaml.safe_load(contracts_path.read_text())
    data["crm.contacts"]["tags"] = {"after.email": ["PII!"]}
    with pytest.raises(ConfigError, match=r"tag 'PII!' of 'after.email' is not a tag name"):
        parse_contracts(data)
    data["crm.contacts"]["tags"] = {"after.email": []}
    with pytest.raises(ConfigError, match="must map to a non-empty list of tags"):
        parse_contracts(data)


def test_a_tag_on_a_field_the_schema_lacks_is_refused(contracts_path: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(contracts_path.read_text())
    data["crm.contacts"]["tags"] = {"after.emial": ["pii"]}
    bad = tmp_path / "contracts.yaml"
    bad.write_text(yaml.safe_dump(data))
    settings = load_settings("local", [f"registry.contracts={bad}"], CONFIG)
    with pytest.raises(ConfigError, match="no field 'emial'"):
        load_catalog(settings)


def test_tags_travel_from_the_contracts_to_bronze_silver_and_gold(catalog: Catalog) -> None:
    assert catalog.tags_in_use() == {
        "pii": [
            "bronze.crm_accounts.value_raw",
            "bronze.crm_accounts.value",
            "quarantine.crm_accounts.value_raw",
            "quarantine.crm_accounts.error",
            "silver.dim_account.owner_email",
            "bronze.crm_contacts.value_raw",
            "bronze.crm_contacts.value",
            "quarantine.crm_contacts.value_raw",
            "quarantine.crm_contacts.error",
            "silver.dim_contact.email",
            "silver.dim_contact.first_name",
            "silver.dim_contact.last_name",
            "silver.dim_contact.phone",
            "gold.customer_360.owner_email",
        ]
    }
    owner = catalog.table("gold.customer_360").column("owner_email")
    assert owner is not None and owner.origin == ("silver.dim_account.owner_email",)


def test_every_tagged_silver_column_is_tagged_or_declassified_where_gold_uses_it(
    catalog: Catalog,
) -> None:
    from cdc.gold.tables import GOLD_LINEAGE

    for table in catalog.layer("gold"):
        for column in table.columns:
            sources = GOLD_LINEAGE[table.name][column.name]
            inherited: set[str] = set()
            for source in sources:
                silver = catalog.table(f"silver.{source.split('.')[0]}")
                found = silver.column(source.split(".")[1])
                assert found is not None, source
                inherited |= found.tags
            assert inherited == set(column.tags) | set(column.declassified), (
                f"gold.{table.name}.{column.name}"
            )


def test_catalog_columns_are_the_writers_own(catalog: Catalog) -> None:
    contact = catalog.table("silver.dim_contact")
    assert [c.name for c in contact.columns][:4] == [
        "contact_id",
        "account_id",
        "email",
        "first_name",
    ]
    assert [c.name for c in contact.columns][-11:] == [
        "valid_from",
        "valid_to",
        "is_current",
        "_source_topic",
        "_source_partition",
        "_source_offset",
        "_seq_open",
        "_seq_last",
        "_seq_close",
        "_seq_max",
        "_valid_max",
    ]
    assert [c.name for c in catalog.table("silver._orphans_dim_contact").columns] == [
        "contact_id",
        "_seq_max",
        "_valid_max",
    ]
    assert catalog.table("silver.fact_orders").keys == ("event_id",)
    with pytest.raises(
        ConfigError, match=r"no table 'gold\.nope'; tables of gold: gold\.customer_360"
    ):
        catalog.table("gold.nope")


# ------------------------------------------------------------------------ resolution


def test_the_local_policy_resolves_to_the_documented_model(access: Access) -> None:
    analyst = access.role("analyst")
    assert analyst.audiences == ("analyst_emea", "analyst_amer", "analyst_apac")
    c360 = analyst.table("gold.customer_360")
    assert c360 is not None and c360.rows is not None
    assert (c360.rows.column, dict(c360.rows.values)) == (
        "region",
        {"analyst_emea": "EMEA", "analyst_amer": "AMER", "analyst_apac": "APAC"},
    )
    assert c360.hidden == ["owner_email"]
    pipeline = analyst.table("gold.opportunity_pipeline")
    assert pipeline is not None and pipeline.rows is None
    assert analyst.table("silver.dim_contact") is None
    scientist = access.role("data_scientist").table("silver.dim_contact")
    assert scientist is not None
    assert {c.name: c.treatment for c in scientist.columns if c.treatment != "clear"} == {
        "email": "hash",
        "first_name": "hash",
        "last_name": "hash",
        "phone": "hash",
    }
    assert access.role("engineer").layers == ("bronze", "quarantine", "silver", "gold")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"roles__analyst__read": ["gold.nope"]}, "no table 'gold.nope'; tables of gold:"),
        (
            {"roles__analyst__rows__unfiltered": []},
            "policy role analyst: gold.opportunity_pipeline has no text column 'region' to filter"
            " rows on; list it under rows.unfiltered",
        ),
        (
            {"roles__analyst__rows__unfiltered": ["gold.customer_features"]},
            "policy role analyst: rows.unfiltered names gold.customer_features, not read",
        ),
        (
            {"roles__engineer__read": ["gold", "gold.customer_360"]},
            "policy role engineer: read names gold.customer_360 and its whole layer",
        ),
        (
            {"tags": {"secret": "x"}, "roles__engineer__columns": {"secret": "clear"}},
            "tag 'pii' is carried by bronze.crm_accounts.value_raw",
        ),
    ],
)
def test_a_policy_that_does_not_fit_the_tables_is_refused(
    tmp_path: Path, catalog: Catalog, changes: dict[str, Any], message: str
) -> None:
    data = _policy(**changes)
    if "tags" in changes:
        for role in data["roles"].values():
            role["columns"] = {"secret": "clear"}
    with pytest.raises(ConfigError) as caught:
        resolve_access(_load(tmp_path, data), catalog)
    assert message in str(caught.value)


# ------------------------------------------------------------------------ diff


def test_diff_orders_removals_before_additions_in_dependency_order() -> None:
    order = ("role", "grant")
    desired = [Item("role", "r1"), Item("grant", "r1 SELECT t"), Item("role", "r3", "NOLOGIN")]
    actual = [Item("role", "r2"), Item("grant", "r2 SELECT t"), Item("role", "r3", "LOGIN")]
    assert [c.line() for c in diff(desired, actual, order)] == [
        "- grant r2 SELECT t",
        "- role r2",
        "+ role r1",
        "~ role r3 (is: LOGIN; policy: NOLOGIN)",
        "+ grant r1 SELECT t",
    ]
    assert diff(actual, actual, order) == []
    fingerprint = Change(
        "change", Item("view", "v", "a", readable=False), Item("view", "v", "b", readable=False)
    )
    assert fingerprint.line() == "~ view v (defined otherwise by the policy now)"


# ------------------------------------------------------------------------ PostgreSQL


def _present(catalog: Catalog, *refs: str) -> dict[str, PgRelation]:
    types = {"string": "character varying(65535)"}
    return {
        ref: PgRelation(
            ref.split(".")[0],
            ref.split(".")[1],
            tuple(
                PgColumn(c.name, types.get(str(c.type), "text")) for c in catalog.table(ref).columns
            ),
        )
        for ref in refs
    }


def test_masks_are_one_definition_rendered_per_dialect() -> None:
    assert POSTGRES.column('"email"', "hash", "text") == (
        """encode(sha256(convert_to("email"::text, 'UTF8')), 'hex') AS "email\""""
    )
    assert POSTGRES.column('"email"', "partial", "text") == (
        """regexp_replace("email"::text, '^(.)[^@]*', '\\1***') AS "email\""""
    )
    assert POSTGRES.column('"email"', "null", "character varying(65535)") == (
        'NULL::character varying(65535) AS "email"'
    )
    assert POSTGRES.column('"email"', "deny", "text") is None
    assert POSTGRES.column('"email"', "clear", "text") == '"email"'
    assert SNOWFLAKE.expression("VAL", "partial", "VARCHAR") == (
        "regexp_replace(VAL, '^(.)[^@]*', '\\\\1***')"
    )
    assert SNOWFLAKE.expression("VAL", "hash", "VARCHAR") == "SHA2(VAL, 256)"


@pytest.mark.parametrize(
    ("value", "partial"),
    [("jane.doe@acme.example", "j***@acme.example"), ("+44 20 7946 0000", "+***"), ("x", "x***")],
)
def test_duckdb_computes_the_masks_as_documented(value: str, partial: str) -> None:
    import duckdb

    literal = "'" + value + "'"
    ((hashed, masked, nulled),) = (
        duckdb.connect()
        .execute(
            f"SELECT {DUCKDB.expression(literal, 'hash', 'VARCHAR')},"
            f" {DUCKDB.expression(literal, 'partial', 'VARCHAR')},"
            f" {DUCKDB.expression(literal, 'null', 'VARCHAR')}"
        )
        .fetchall()
    )
    assert (hashed, masked, nulled) == (hashlib.sha256(value.encode()).hexdigest(), partial, None)


def test_postgres_state_for_the_local_policy(
    access: Access, catalog: Catalog, policy: Policy
) -> None:
    assert policy.targets.postgres is not None
    present = _present(catalog, "gold.customer_360", "gold.daily_revenue", "silver.dim_contact")
    items = postgres_items(access, policy.targets.postgres, present, "wh")
    by_key = {(i.kind, i.key): i for i in items}
    assert by_key["role", "cdc_analyst_emea"].payload.create == (
        'CREATE ROLE "cdc_analyst_emea" NOLOGIN',
        'COMMENT ON ROLE "cdc_analyst_emea" IS \'cdc-governance role: analyst, row scope'
        " analyst_emea'",
    )
    assert ("membership", "cdc_analyst_emea in cdc_analyst") in by_key
    assert by_key["audit", "pgaudit.role of database wh"].payload.create == (
        "ALTER DATABASE \"wh\" SET pgaudit.role = 'cdc_auditor'",
    )
    view = by_key["view", "gold_analyst.customer_360"].payload.create[0]
    assert view.startswith(
        'CREATE VIEW "gold_analyst"."customer_360" WITH (security_barrier = true) AS SELECT'
        ' "account_id", "name"'
    )
    assert '"owner_email"' not in view
    assert view.endswith(
        """FROM "gold"."customer_360" WHERE (pg_has_role('cdc_analyst_emea', 'MEMBER') AND"""
        """ "region" = 'EMEA') OR (pg_has_role('cdc_analyst_amer', 'MEMBER') AND "region" ="""
        """ 'AMER') OR (pg_has_role('cdc_analyst_apac', 'MEMBER') AND "region" = 'APAC')"""
    )
    scientist = by_key["view", "silver_data_scientist.dim_contact"].payload.create[0]
    assert """encode(sha256(convert_to("email"::text, 'UTF8')), 'hex') AS "email\"""" in scientist
    assert " WHERE " not in scientist
    assert by_key["row policy", "gold.customer_360 cdc_analyst_emea"].payload.create == (
        'CREATE POLICY "cdc_analyst_emea" ON "gold"."customer_360" AS PERMISSIVE FOR SELECT TO'
        """ "cdc_analyst_emea" USING ("region" = 'EMEA')""",
    )
    assert by_key["row policy", "gold.customer_360 cdc_engineer"].payload.create == (
        'CREATE POLICY "cdc_engineer" ON "gold"."customer_360" AS PERMISSIVE FOR SELECT TO'
        ' "cdc_engineer" USING (true)',
    )
    assert ("row security", "silver.dim_contact") not in by_key
    clear = by_key["column privilege", "cdc_data_scientist SELECT silver.dim_contact"]
    assert "email" not in clear.spec.split(", ") and "contact_id" in clear.spec.split(", ")
    privileges = sorted(
        k for kind, k in by_key if kind == "privilege" and k.startswith("cdc_analyst ")
    )
    assert privileges == [
        "cdc_analyst SELECT gold.daily_revenue",
        "cdc_analyst SELECT gold_analyst.customer_360",
        "cdc_analyst USAGE schema gold",
        "cdc_analyst USAGE schema gold_analyst",
    ]
    audited = sorted(
        k for kind, k in by_key if kind == "privilege" and k.startswith("cdc_auditor SELECT")
    )
    assert audited == [
        "cdc_auditor SELECT gold.customer_360",
        "cdc_auditor SELECT gold.daily_revenue",
        "cdc_auditor SELECT gold_analyst.customer_360",
        "cdc_auditor SELECT gold_data_scientist.customer_360",
        "cdc_auditor SELECT silver.dim_contact",
        "cdc_auditor SELECT silver_data_scientist.dim_contact",
    ]


# ------------------------------------------------------------------------ Lake Formation


def test_every_lake_formation_request_is_valid_for_the_api(access: Access, policy: Policy) -> None:
    """moto has no data cells filters: their requests (and every other) are checked against
    botocore's model of the Lake Formation API."""
    assert policy.targets.lakeformation is not None
    model = botocore.session.get_session().get_service_model("lakeformation")
    validator = ParamValidator()
    items = lakeformation_items(access, policy.targets.lakeformation, "123456789012")
    calls = [call for item in items for call in (*item.payload.create, *item.payload.drop)]
    assert {c.method for c in calls} >= {
        "create_data_cells_filter",
        "delete_data_cells_filter",
        "grant_permissions",
        "add_lf_tags_to_resource",
    }
    for call in calls:
        name = "".join(part.title() for part in call.method.split("_")).replace("Lf", "LF")
        report = validator.validate(dict(call.request), model.operation_model(name).input_shape)
        assert not report.has_errors(), (call.method, report.generate_report())


def test_lake_formation_grants_for_the_local_policy(access: Access, policy: Policy) -> None:
    assert policy.targets.lakeformation is not None
    items = lakeformation_items(access, policy.targets.lakeformation, "123456789012")
    grants = sorted(f"{i.key}: {i.spec}" for i in items if i.kind == "grant")
    assert [g for g in grants if g.startswith("data_scientist")] == [
        "data_scientist on database cdc_dev_gold: DESCRIBE",
        "data_scientist on databases tagged cdc_layer in (silver): DESCRIBE",
        "data_scientist on table cdc_dev_gold.customer_360 except owner_email: SELECT",
        "data_scientist on table cdc_dev_gold.customer_360: DESCRIBE",
        "data_scientist on table cdc_dev_gold.customer_features: DESCRIBE, SELECT",
        "data_scientist on tables tagged cdc_layer in (silver) and cdc_pii in (no): DESCRIBE,"
        " SELECT",
    ]
    assert [g for g in grants if g.startswith("analyst_emea")] == [
        "analyst_emea on cells filter cdc_analyst_emea of cdc_dev_gold.customer_360: SELECT",
        "analyst_emea on cells filter cdc_analyst_emea of cdc_dev_gold.daily_revenue: SELECT",
        "analyst_emea on database cdc_dev_gold: DESCRIBE",
        "analyst_emea on table cdc_dev_gold.customer_360: DESCRIBE",
        "analyst_emea on table cdc_dev_gold.daily_revenue: DESCRIBE",
        "analyst_emea on table cdc_dev_gold.opportunity_pipeline: DESCRIBE, SELECT",
    ]
    filters = {i.key: i.spec for i in items if i.kind == "cells filter"}
    assert filters["cdc_dev_gold.customer_360 cdc_analyst_emea"] == (
        "rows where region = 'EMEA'; without owner_email"
    )
    assert filters["cdc_dev_gold.daily_revenue cdc_analyst_apac"] == "rows where region = 'APAC'"
    tags = {i.key: i.spec for i in items if i.kind.endswith("tags")}
    assert tags["cdc_dev_silver"] == "cdc_layer=silver"
    assert tags["cdc_dev_silver.dim_contact"] == "cdc_pii=no"
    assert tags["cdc_dev_silver.dim_contact.email"] == "cdc_pii=yes"
    assert "cdc_dev_silver.dim_contact.contact_id" not in tags


def test_a_resource_as_lake_formation_reports_it_compares_equal_to_the_one_granted() -> None:
    reported = {
        "TableWithColumns": {
            "CatalogId": "123456789012",
            "DatabaseName": "db",
            "Name": "t",
            "ColumnWildcard": {},
        }
    }
    assert normalize_resource(reported) == {"Table": {"DatabaseName": "db", "Name": "t"}}
    policy = {
        "LFTagPolicy": {
            "CatalogId": "123456789012",
            "ResourceType": "TABLE",
            "Expression": [
                {"TagKey": "b", "TagValues": ["y", "x"]},
                {"TagKey": "a", "TagValues": ["z"]},
            ],
        }
    }
    assert normalize_resource(policy)["LFTagPolicy"]["Expression"] == [
        {"TagKey": "a", "TagValues": ["z"]},
        {"TagKey": "b", "TagValues": ["x", "y"]},
    ]


# ------------------------------------------------------------------------ Snowflake


NAMES = SnowflakeNames("ANALYTICS", {"gold": "GOLD"}, "CDC_", "CDC_PUBLISHER")


def test_snowflake_masking_and_row_access_policies(access: Access) -> None:
    items = {(i.kind, i.key): i for i in snowflake_items(access, NAMES)}
    mask = items["masking policy", "ANALYTICS.GOLD.CDC_PII_MASK"]
    assert mask.payload[0] == (
        "CREATE MASKING POLICY IF NOT EXISTS ANALYTICS.GOLD.CDC_PII_MASK AS (VAL VARCHAR) RETURNS"
        " VARCHAR -> NULL",
        "ALTER MASKING POLICY ANALYTICS.GOLD.CDC_PII_MASK SET BODY -> CASE WHEN"
        " IS_ROLE_IN_SESSION('CDC_PUBLISHER') THEN VAL WHEN IS_ROLE_IN_SESSION('CDC_ENGINEER')"
        " THEN VAL WHEN IS_ROLE_IN_SESSION('CDC_DATA_SCIENTIST') THEN SHA2(VAL, 256) ELSE NULL"
        " END",
    )
    assert items["tag masking", "ANALYTICS.GOLD.PII ANALYTICS.GOLD.CDC_PII_MASK"].payload[0] == (
        "ALTER TAG ANALYTICS.GOLD.PII SET MASKING POLICY ANALYTICS.GOLD.CDC_PII_MASK FORCE",
    )
    tagged = items["column tag", "ANALYTICS.GOLD.CUSTOMER_360.OWNER_EMAIL ANALYTICS.GOLD.PII"]
    assert tagged.payload[0] == (
        "ALTER TABLE ANALYTICS.GOLD.CUSTOMER_360 MODIFY COLUMN OWNER_EMAIL SET TAG"
        " ANALYTICS.GOLD.PII = 'pii'",
    )
    rows = items["row access policy", "ANALYTICS.GOLD.CDC_ROWS_REGION"]
    assert rows.spec == (
        "IS_ROLE_IN_SESSION('CDC_PUBLISHER') OR IS_ROLE_IN_SESSION('CDC_ENGINEER') OR"
        " IS_ROLE_IN_SESSION('CDC_DATA_SCIENTIST') OR (IS_ROLE_IN_SESSION('CDC_ANALYST_EMEA') AND"
        " VAL = 'EMEA') OR (IS_ROLE_IN_SESSION('CDC_ANALYST_AMER') AND VAL = 'AMER') OR"
        " (IS_ROLE_IN_SESSION('CDC_ANALYST_APAC') AND VAL = 'APAC')"
    )
    attached = sorted(k for kind, k in items if kind == "row access")
    assert attached == [
        "ANALYTICS.GOLD.CUSTOMER_360 ANALYTICS.GOLD.CDC_ROWS_REGION",
        "ANALYTICS.GOLD.DAILY_REVENUE ANALYTICS.GOLD.CDC_ROWS_REGION",
    ]
    assert items["grant", "CDC_ANALYST_EMEA USAGE ROLE CDC_ANALYST"].payload[0] == (
        "GRANT ROLE CDC_ANALYST TO ROLE CDC_ANALYST_EMEA",
    )
    assert ("grant", "CDC_ANALYST SELECT TABLE ANALYTICS.GOLD.CUSTOMER_FEATURES") not in items


class FakeSnowflake(Warehouse):
    """Answers Snowflake's SHOW / DESCRIBE / INFORMATION_SCHEMA queries with rows in its
    documented column layouts; records the statements it is asked to run."""

    dialect = SnowflakeDialect()

    def __init__(self, answers: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        super().__init__("GOLD")
        self.answers = answers
        self.executed: list[str] = []

    def describe(self) -> str:
        return "fake snowflake"

    def connect(self) -> None:
        self._conn = object()

    def close(self) -> None:
        self._conn = None

    def execute(self, statement: Statement) -> int:
        self.executed.append(statement.sql)
        return 0

    def query(self, statement: Statement) -> list[tuple[Any, ...]]:
        for pattern, rows in self.answers:
            if re.search(pattern, statement.sql):
                return rows
        return []

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with nullcontext():
            yield

    def load_staging(self, table: str, rows: Any) -> None:
        raise AssertionError("not used")


GOLD_TABLES = ("CUSTOMER_360", "DAILY_REVENUE", "OPPORTUNITY_PIPELINE", "CUSTOMER_FEATURES")


def _snowflake_in_sync(
    access: Access, tables: tuple[str, ...] = GOLD_TABLES
) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """What Snowflake answers once the policy is applied to the ``tables`` it holds."""
    absent = {f"ANALYTICS.GOLD.{t}" for t in GOLD_TABLES if t not in tables}
    items = [
        i
        for i in snowflake_items(access, NAMES)
        if not (i.kind == "grant" and i.key.rsplit(" ", 1)[1] in absent)
    ]
    roles = sorted(i.key for i in items if i.kind == "role")
    answers: list[tuple[str, list[tuple[Any, ...]]]] = [
        (
            r"^SHOW ROLES",
            [
                ("2026-01-01", r, "N", "N", "N", 0, 0, 0, "SYSADMIN", comment)
                for r, comment in [*((r, "cdc-governance") for r in roles), ("CDC_PUBLISHER", "")]
            ],
        )
    ]
    for role in roles:
        rows: list[tuple[Any, ...]] = [("2026-01-01", "OWNERSHIP", "TABLE", "X", "ROLE", role)]
        for item in items:
            if item.kind == "grant" and item.key.startswith(f"{role} "):
                _, privilege, on, name = item.key.split(" ")
                rows.append(("2026-01-01", privilege, on, name, "ROLE", role))
        answers.append((rf"^SHOW GRANTS TO ROLE {role}$", rows))
    for item in items:
        if item.kind in ("masking policy", "row access policy"):
            answers.append((rf"^DESCRIBE .* {item.key}$", [("N", "(VAL VARCHAR)", "X", item.spec)]))
    answers += [
        (r"^SHOW TAGS LIKE 'PII'", [("2026-01-01", "PII", "ANALYTICS", "GOLD")]),
        (
            r"^SHOW TABLES IN SCHEMA ANALYTICS.GOLD$",
            [("2026-01-01", t) for t in tables],
        ),
        (
            r"REF_ENTITY_DOMAIN => 'tag'",
            [("ANALYTICS", "GOLD", "CDC_PII_MASK")],
        ),
        (
            r"TAG_REFERENCES_ALL_COLUMNS\('ANALYTICS.GOLD.CUSTOMER_360'",
            [("ANALYTICS", "GOLD", "PII", "OWNER_EMAIL", "pii")],
        ),
        (
            r"POLICY_REFERENCES\(REF_ENTITY_NAME => 'ANALYTICS.GOLD.(CUSTOMER_360|DAILY_REVENUE)'",
            [("ANALYTICS", "GOLD", "CDC_ROWS_REGION", "ROW_ACCESS_POLICY", '[ "REGION" ]')],
        ),
    ]
    return answers


def test_snowflake_check_reads_grants_policies_and_attachments(access: Access) -> None:
    answers = _snowflake_in_sync(access)
    target = SnowflakeGovernance(access, NAMES, lambda: FakeSnowflake(answers))
    assert target.check().changes == ()
    # A gold table not published yet: nothing is asked of it, and the plan says so.
    unpublished = _snowflake_in_sync(access, GOLD_TABLES[:3])
    target = SnowflakeGovernance(access, NAMES, lambda: FakeSnowflake(unpublished))
    waiting = target.check()
    assert waiting.changes == ()
    assert waiting.notes == (
        "not in Snowflake yet, governed once they are: ANALYTICS.GOLD.CUSTOMER_FEATURES",
    )
    # A grant revoked by hand, a policy body edited, an extra role granted SELECT.
    edited = [
        (
            p,
            [
                r
                for r in rows
                if not (
                    len(r) > 3 and r[3] == "ANALYTICS.GOLD.DAILY_REVENUE" and r[5] == "CDC_ANALYST"
                )
            ],
        )
        if p.startswith("^SHOW GRANTS TO ROLE CDC_ANALYST$")
        else (p, rows)
        for p, rows in answers
    ]
    edited.insert(0, (r"^DESCRIBE MASKING POLICY", [("N", "(VAL VARCHAR)", "X", "VAL")]))
    engineer = next(rows for p, rows in answers if p == "^SHOW GRANTS TO ROLE CDC_ENGINEER$")
    # A compute warehouse's USAGE is not the policy's: left alone.
    engineer.append(("2026-01-01", "USAGE", "WAREHOUSE", "REPORTING_WH", "ROLE", "CDC_ENGINEER"))
    engineer.append(
        ("2026-01-01", "INSERT", "TABLE", "ANALYTICS.GOLD.CUSTOMER_360", "ROLE", "CDC_ENGINEER")
    )
    fake = FakeSnowflake(edited)
    target = SnowflakeGovernance(access, NAMES, lambda: fake)
    lines = [c.line() for c in target.check().changes]
    assert "- grant CDC_ENGINEER INSERT TABLE ANALYTICS.GOLD.CUSTOMER_360" in lines
    assert "+ grant CDC_ANALYST SELECT TABLE ANALYTICS.GOLD.DAILY_REVENUE" in lines
    assert any(
        line.startswith("~ masking policy ANALYTICS.GOLD.CDC_PII_MASK (is: VAL;") for line in lines
    )
    target.apply()
    assert fake.executed == [
        "REVOKE INSERT ON TABLE ANALYTICS.GOLD.CUSTOMER_360 FROM ROLE CDC_ENGINEER",
        "GRANT SELECT ON TABLE ANALYTICS.GOLD.DAILY_REVENUE TO ROLE CDC_ANALYST",
        "ALTER MASKING POLICY ANALYTICS.GOLD.CDC_PII_MASK SET BODY -> "
        + next(i.spec for i in snowflake_items(access, NAMES) if i.kind == "masking policy"),
    ]


# ------------------------------------------------------------------------ runbook and CLI


def test_the_runbook_is_current() -> None:
    expected = render_runbook(runbook_accesses(CONFIG))
    current = (REPO_ROOT / "docs/runbooks/data-access-governance.md").read_text()
    assert current == expected, "run `cdc governance docs` and commit the runbook"


def test_snowflake_plan_renders_sql_and_apply_needs_the_connector(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAREHOUSE_PASSWORD", "not-used")
    assert (
        main(
            [
                "governance",
                "plan",
                "--env",
                "prod",
                "--target",
                "snowflake",
                "--config-dir",
                str(CONFIG),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(
        "snowflake: 33 statement(s)\n"
        "  CREATE ROLE IF NOT EXISTS CDC_ENGINEER COMMENT = 'cdc-governance';\n"
    )
    assert (
        "  ALTER TAG ANALYTICS.GOLD.PII SET MASKING POLICY ANALYTICS.GOLD.CDC_PII_MASK FORCE;\n"
        in out
    )
    code = main(
        [
            "governance",
            "check",
            "--env",
            "prod",
            "--target",
            "snowflake",
            "--config-dir",
            str(CONFIG),
        ]
    )
    assert code == 2
    assert capsys.readouterr().err == (
        "cdc: error: warehouse.target snowflake needs the Snowflake connector: pip install"
        " 'cdc-service[snowflake]'\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["governance", "plan", "--env", "prod", "--target", "duckdb"],
            "cdc: error: the policy has no targets.duckdb section (configured: lakeformation,"
            " snowflake)\n",
        ),
        (
            ["governance", "plan", "--set", "governance.policy=/nope.yaml"],
            "cdc: error: policy file /nope.yaml does not exist (governance.policy)\n",
        ),
        (
            ["governance", "check", "--target", "postgres"],
            "cdc: error: the policy has no targets.postgres section (configured: duckdb)\n",
        ),
        (
            [
                *("governance", "check", "--env", "dev", "--target", "postgres"),
                *("--set", "warehouse.host=null"),
            ],
            "cdc: error: warehouse.target postgres needs warehouse.dsn or warehouse.host\n",
        ),
    ],
)
def test_governance_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--config-dir", str(CONFIG)]) == 2
    assert capsys.readouterr().err == message
