"""The access policy enforced by a real PostgreSQL server, role by role, with pgaudit.

The warehouse holds the gold tables as ``cdc publish`` creates them (the same DDL, from the
catalog's columns) and a silver schema created here (``cdc publish`` copies gold only). The
shipped local policy, with a PostgreSQL target whose role prefix is the test owner's name
(the roles are the test's own), is applied with ``cdc governance apply``; then people log in
as their own users,
each granted one audience, and the server decides what they read. Every read leaves an
audit line in the server log.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
import yaml

from cdc.config.settings import load_settings
from cdc.governance.run import load_catalog
from cdc.warehouse.postgres import PostgresDialect
from tests.support.paths import REPO_ROOT
from tests.support.postgres import PostgresDatabase

pytestmark = pytest.mark.integration

PASSWORD_ENV = "CDC_TEST_GOVERNANCE_PASSWORD"
USER_PASSWORD = "reader-secret"
EMAILS = {
    "C1": "jane.doe@acme.example",
    "C2": "li.wei@borealis.example",
    "C3": "ana@cobalt.example",
}
OWNERS = {"A1": "owner.a1@crm.example", "A2": "owner.a2@crm.example", "A3": "owner.a3@crm.example"}
REGIONS = {"A1": "EMEA", "A2": "AMER", "A3": "APAC"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _create(conn: Any, schema: str, table: Any) -> None:
    """A table as ``cdc publish`` creates it (PostgreSQL dialect, catalog columns)."""
    dialect = PostgresDialect()
    columns = pa.schema([pa.field(c.name, c.type) for c in table.columns])
    keys = table.keys if table.layer == "gold" else ("contact_id", "valid_from")
    conn.execute(dialect.create_schema(schema))
    conn.execute(dialect.create_table(schema, table.name, columns, keys))


@pytest.fixture(scope="module")
def warehouse(
    governed_postgres: PostgresDatabase, tmp_path_factory: Any
) -> Iterator[dict[str, Any]]:
    """The warehouse with rows, the policy applied, and one login per audience."""
    db = governed_postgres
    folder = tmp_path_factory.mktemp("governance")
    policy = yaml.safe_load((REPO_ROOT / "config/governance/local.yaml").read_text())
    # The local policy, enforced by this PostgreSQL: the roles are the test's own (prefix),
    # and the silver schema created below is governed too.
    policy["targets"]["postgres"] = {"role_prefix": f"{db.user}_", "schemas": {"silver": "silver"}}
    policy_file = folder / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    catalog = load_catalog(load_settings("local", config_dir=REPO_ROOT / "config"))
    with db.connect() as conn:
        for ref in ("gold.customer_360", "gold.daily_revenue", "gold.opportunity_pipeline"):
            _create(conn, "gold", catalog.table(ref))
        _create(conn, "silver", catalog.table("silver.dim_contact"))
        for account, region in REGIONS.items():
            conn.execute(
                "INSERT INTO gold.customer_360 (account_id, name, region, owner_email)"
                " VALUES (%s, %s, %s, %s)",
                (account, f"Account {account}", region, OWNERS[account]),
            )
            conn.execute(
                "INSERT INTO gold.daily_revenue (order_date, region, currency, orders, revenue)"
                " VALUES (%s, %s, 'USD', 2, %s)",
                (date(2026, 3, 1), region, Decimal("100.00")),
            )
        conn.execute(
            "INSERT INTO gold.opportunity_pipeline (month, stage, opportunities)"
            " VALUES ('2026-03-01', 'proposal', 3), ('2026-03-01', 'negotiation', 1)"
        )
        for contact, email in EMAILS.items():
            conn.execute(
                "INSERT INTO silver.dim_contact (contact_id, account_id, email, first_name,"
                " valid_from) VALUES (%s, %s, %s, %s, %s)",
                (contact, f"A{contact[1]}", email, "First", datetime(2026, 1, 1, tzinfo=UTC)),
            )
    env = {
        **os.environ,
        PASSWORD_ENV: db.password,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
    }
    overrides = [
        *db.overrides("gold", PASSWORD_ENV),
        f"governance.policy={policy_file}",
    ]
    state = {"db": db, "env": env, "overrides": overrides, "prefix": f"{db.user}_"}
    done = cdc(state, "apply")
    assert done.returncode == 0, done.stderr
    users = {
        "alice": "analyst_emea",
        "bob": "analyst_amer",
        "dan": "data_scientist",
        "eve": "engineer",
    }
    with db.connect() as conn:
        for user, audience in users.items():
            conn.execute(
                f"CREATE ROLE \"{db.user}_{user}\" LOGIN PASSWORD '{USER_PASSWORD}'"
                f' IN ROLE "{db.user}_{audience}"'
            )
    yield state


def cdc(state: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    """``cdc governance <command> --target postgres`` in a subprocess."""
    sets = [arg for item in state["overrides"] for arg in ("--set", item)]
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", "governance", command, "--target", "postgres", *sets],
        capture_output=True,
        text=True,
        env=state["env"],
        cwd=REPO_ROOT,
        timeout=120,
    )


def read(state: dict[str, Any], user: str, sql: str) -> list[tuple[Any, ...]]:
    """Run a query logged in as one of the people."""
    db: PostgresDatabase = state["db"]
    with db.connect(user=f"{db.user}_{user}", password=USER_PASSWORD) as conn:
        return [tuple(row) for row in conn.execute(sql).fetchall()]


def refused(state: dict[str, Any], user: str, sql: str) -> str:
    """The error a query gets (it must be refused)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        read(state, user, sql)
    return str(caught.value).splitlines()[0]


def test_an_analyst_reads_gold_of_their_region_without_personal_data(
    warehouse: dict[str, Any],
) -> None:
    assert read(warehouse, "alice", "SELECT account_id, region FROM gold.customer_360") == [
        ("A1", "EMEA")
    ]
    assert read(warehouse, "bob", "SELECT account_id FROM gold.customer_360") == [("A2",)]
    assert read(warehouse, "alice", "SELECT region FROM gold.daily_revenue") == [("EMEA",)]
    # The pipeline per month and stage has no region: every analyst reads it whole.
    assert len(read(warehouse, "alice", "SELECT * FROM gold.opportunity_pipeline")) == 2
    # Its clear columns are readable (above); the personal one is refused, so is SELECT *.
    denied = "permission denied for table customer_360"
    assert refused(warehouse, "alice", "SELECT owner_email FROM gold.customer_360") == denied
    assert refused(warehouse, "alice", "SELECT * FROM gold.customer_360") == denied
    # The masked view: every column it may see, its region's rows.
    rows = read(warehouse, "alice", "SELECT * FROM gold_analyst.customer_360")
    assert [r[0] for r in rows] == ["A1"]
    columns = read(
        warehouse,
        "alice",
        "SELECT column_name FROM information_schema.columns WHERE table_schema ="
        " 'gold_analyst' AND table_name = 'customer_360'",
    )
    assert ("owner_email",) not in columns and ("region",) in columns
    assert refused(warehouse, "alice", "SELECT contact_id FROM silver.dim_contact") == (
        "permission denied for schema silver"
    )


def test_a_data_scientist_reads_silver_with_emails_hashed(warehouse: dict[str, Any]) -> None:
    rows = read(
        warehouse,
        "dan",
        "SELECT contact_id, email, first_name FROM silver_data_scientist.dim_contact"
        " ORDER BY contact_id",
    )
    assert rows == [(c, _sha(e), _sha("First")) for c, e in sorted(EMAILS.items())]
    assert refused(warehouse, "dan", "SELECT email FROM silver.dim_contact") == (
        "permission denied for table dim_contact"
    )
    assert len(read(warehouse, "dan", "SELECT contact_id FROM silver.dim_contact")) == 3
    owners = read(
        warehouse, "dan", "SELECT owner_email FROM gold_data_scientist.customer_360 ORDER BY 1"
    )
    assert owners == sorted((_sha(o),) for o in OWNERS.values())
    assert refused(warehouse, "dan", "SELECT * FROM gold.daily_revenue") == (
        "permission denied for table daily_revenue"
    )


def test_an_engineer_reads_everything_in_the_clear(warehouse: dict[str, Any]) -> None:
    emails = read(warehouse, "eve", "SELECT email FROM silver.dim_contact ORDER BY contact_id")
    assert emails == [(EMAILS[c],) for c in sorted(EMAILS)]
    owners = read(warehouse, "eve", "SELECT account_id, owner_email FROM gold.customer_360")
    assert sorted(owners) == sorted(OWNERS.items())
    assert len(read(warehouse, "eve", "SELECT * FROM gold.daily_revenue")) == 3


def _audit_lines(log: Path, start: int, wanted: list[tuple[str, str]]) -> list[str]:
    """The AUDIT lines written since ``start`` once every (user, object) pair has one."""
    deadline = time.monotonic() + 15
    while True:
        with log.open("rb") as handle:
            handle.seek(start)
            lines = [ln.decode(errors="replace") for ln in handle if b"AUDIT: OBJECT" in ln]
        missing = [
            (who, what)
            for who, what in wanted
            if not any(f"{who}@" in ln and f",{what}," in ln for ln in lines)
        ]
        if not missing:
            return lines
        assert time.monotonic() < deadline, f"no audit line for {missing} in {log}"
        time.sleep(0.1)


def test_every_read_leaves_an_audit_line(warehouse: dict[str, Any]) -> None:
    db: PostgresDatabase = warehouse["db"]
    assert db.log is not None, "set CDC_TEST_POSTGRES_LOG to the server's log file"
    start = db.log.stat().st_size
    read(warehouse, "alice", "SELECT account_id FROM gold.customer_360")
    read(warehouse, "dan", "SELECT email FROM silver_data_scientist.dim_contact")
    read(warehouse, "eve", "SELECT email FROM silver.dim_contact")
    prefix = warehouse["prefix"]
    lines = _audit_lines(
        db.log,
        start,
        [
            (f"{prefix}alice", "gold.customer_360"),
            (f"{prefix}dan", "silver_data_scientist.dim_contact"),
            (f"{prefix}eve", "silver.dim_contact"),
        ],
    )
    assert any("READ,SELECT,TABLE,gold.customer_360" in ln for ln in lines)


def test_check_reports_a_change_made_behind_its_back_and_apply_restores(
    warehouse: dict[str, Any],
) -> None:
    db: PostgresDatabase = warehouse["db"]
    prefix = warehouse["prefix"]
    with db.connect() as conn:  # another team's table in the schema is not the policy's
        conn.execute("CREATE TABLE gold.other_team (x int)")
        conn.execute("GRANT SELECT ON gold.other_team TO PUBLIC")
    assert cdc(warehouse, "check").returncode == 0
    with db.connect() as conn:
        conn.execute(f'GRANT SELECT ON silver.dim_contact TO "{prefix}analyst"')
        conn.execute(f'ALTER POLICY "{prefix}analyst_emea" ON gold.customer_360 USING (true)')
    assert read(warehouse, "alice", "SELECT count(*) FROM gold.customer_360") == [(3,)]
    drift = cdc(warehouse, "check")
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert f"- privilege {prefix}analyst SELECT silver.dim_contact" in drift.stdout
    assert (
        f"~ row policy gold.customer_360 {prefix}analyst_emea (changed outside the policy)"
        in drift.stdout
    )
    assert cdc(warehouse, "apply").returncode == 0
    assert cdc(warehouse, "check").returncode == 0
    assert read(warehouse, "alice", "SELECT account_id FROM gold.customer_360") == [("A1",)]
    assert read(warehouse, "alice", "SELECT x FROM gold.other_team") == []
    refused(warehouse, "alice", "SELECT contact_id FROM silver.dim_contact")


@pytest.mark.parametrize("value", ["jane.doe@acme.example", "+44 20 7946 0000", "ÿ@ü.example"])
def test_postgres_masks_a_value_as_duckdb_does(
    governed_postgres: PostgresDatabase, value: str
) -> None:
    """The same masked value in every target: a hash joins across them."""
    import duckdb

    from cdc.governance.masks import DUCKDB, POSTGRES

    literal = "'" + value + "'"
    masks = ("hash", "partial")
    with governed_postgres.connect() as conn:
        row = conn.execute(
            "SELECT " + ", ".join(str(POSTGRES.expression(literal, m, "text")) for m in masks)
        ).fetchone()
    expected = (
        duckdb.connect()
        .execute(
            "SELECT " + ", ".join(str(DUCKDB.expression(literal, m, "VARCHAR")) for m in masks)
        )
        .fetchall()
    )
    assert [tuple(row or ())] == expected
    assert expected[0][0] == _sha(value)


def test_a_table_rebuilt_under_the_policy_is_drift_until_apply(warehouse: dict[str, Any]) -> None:
    """A publish that rebuilds a table (a column dropped and added again) drops the masked
    views on it and its column grants: check reports them, apply brings them back. A column
    the catalog does not know is denied to every role without a whole-table grant."""
    db: PostgresDatabase = warehouse["db"]
    with db.connect() as conn:
        conn.execute("ALTER TABLE gold.customer_360 DROP COLUMN tier CASCADE")
        conn.execute("ALTER TABLE gold.customer_360 ADD COLUMN tier VARCHAR(65535)")
        conn.execute("ALTER TABLE gold.customer_360 ADD COLUMN segment VARCHAR(65535)")
    drift = cdc(warehouse, "check")
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "+ view gold_analyst.customer_360" in drift.stdout
    assert "+ view gold_data_scientist.customer_360" in drift.stdout
    assert f"~ column privilege {warehouse['prefix']}analyst SELECT gold.customer_360" in (
        drift.stdout
    )
    assert cdc(warehouse, "apply").returncode == 0
    assert cdc(warehouse, "check").returncode == 0
    assert read(warehouse, "alice", "SELECT account_id, tier FROM gold_analyst.customer_360") == [
        ("A1", None)
    ]
    assert read(warehouse, "alice", "SELECT tier FROM gold.customer_360") == [(None,)]
    refused(warehouse, "alice", "SELECT segment FROM gold.customer_360")
    assert read(warehouse, "eve", "SELECT count(segment) FROM gold.customer_360") == [(0,)]
