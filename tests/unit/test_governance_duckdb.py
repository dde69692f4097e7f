"""The policy for the embedded warehouse: one read-only DuckDB file per audience, built from a
delta-rs lake written here (no server)."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from cdc.cli import main
from cdc.config.settings import Settings, load_settings
from cdc.governance.catalog import CatalogTable
from cdc.governance.duckdb import DuckDbGovernance, open_audience
from cdc.governance.run import load_access
from tests.support.paths import REPO_ROOT

EMAILS = {"C1": "jane.doe@acme.example", "C2": "li.wei@borealis.example"}
OWNERS = {"A1": "owner.a1@crm.example", "A2": "owner.a2@crm.example"}
REGIONS = {"A1": "EMEA", "A2": "AMER"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _rows(table: CatalogTable, rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema([pa.field(c.name, c.type) for c in table.columns])
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        "local",
        [f"lake.root={tmp_path}/lake", f"governance.audiences_dir={tmp_path}/audiences"],
        REPO_ROOT / "config",
    )


def _write(
    settings: Settings, ref: str, rows: list[dict[str, Any]], mode: str = "overwrite"
) -> None:
    table = load_access(settings, REPO_ROOT / "config").catalog.table(ref)
    write_deltalake(table.location, _rows(table, rows), mode=mode)


@pytest.fixture()
def lake(settings: Settings) -> Settings:
    _write(
        settings,
        "gold.customer_360",
        [
            {"account_id": a, "name": f"Account {a}", "region": r, "owner_email": OWNERS[a]}
            for a, r in REGIONS.items()
        ],
    )
    _write(
        settings,
        "gold.daily_revenue",
        [
            {
                "order_date": date(2026, 3, 1),
                "region": r,
                "currency": "USD",
                "revenue": Decimal("5.00"),
            }
            for r in REGIONS.values()
        ],
    )
    _write(
        settings, "gold.opportunity_pipeline", [{"month": date(2026, 3, 1), "stage": "proposal"}]
    )
    _write(
        settings,
        "silver.dim_contact",
        [
            {
                "contact_id": c,
                "account_id": "A1",
                "email": e,
                "first_name": "First",
                "valid_from": datetime(2026, 1, 1, tzinfo=UTC),
            }
            for c, e in EMAILS.items()
        ],
    )
    return settings


def governance(
    settings: Settings, command: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    overrides = [
        arg
        for item in (
            f"lake.root={settings.lake.root}",
            f"governance.audiences_dir={settings.governance.audiences_dir}",
        )
        for arg in ("--set", item)
    ]
    code = main(
        [
            "governance",
            command,
            "--target",
            "duckdb",
            "--config-dir",
            str(REPO_ROOT / "config"),
            *overrides,
        ]
    )
    return code, capsys.readouterr().out


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = open_audience(path)
    try:
        return [tuple(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


def test_each_audience_file_holds_what_its_audience_may_read(
    lake: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = Path(str(lake.governance.audiences_dir))
    code, out = governance(lake, "plan", capsys)
    assert code == 0
    assert "+ audience file analyst_emea" in out
    assert "not in the lake yet, left out of the files: gold.customer_features" in out
    code, out = governance(lake, "apply", capsys)
    assert code == 0, out
    assert sorted(p.name for p in folder.iterdir()) == [
        f"{a}.duckdb"
        for a in sorted(
            ["engineer", "data_scientist", "analyst_emea", "analyst_amer", "analyst_apac"]
        )
    ]
    emea = folder / "analyst_emea.duckdb"
    assert stat.S_IMODE(emea.stat().st_mode) == 0o440
    tables = query(
        emea,
        "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        " WHERE table_schema <> '_cdc_governance' ORDER BY 1",
    )
    assert tables == [
        ("gold.customer_360",),
        ("gold.daily_revenue",),
        ("gold.opportunity_pipeline",),
    ]
    assert query(emea, "SELECT account_id, region FROM gold.customer_360") == [("A1", "EMEA")]
    assert query(emea, "SELECT region FROM gold.daily_revenue") == [("EMEA",)]
    assert query(emea, "SELECT count(*) FROM gold.opportunity_pipeline") == [(1,)]
    columns = query(
        emea, "SELECT column_name FROM information_schema.columns WHERE table_name = 'customer_360'"
    )
    assert ("owner_email",) not in columns and ("region",) in columns
    assert query(folder / "analyst_apac.duckdb", "SELECT count(*) FROM gold.customer_360") == [(0,)]

    scientist = folder / "data_scientist.duckdb"
    emails = query(scientist, "SELECT contact_id, email FROM silver.dim_contact ORDER BY 1")
    assert emails == [(c, _sha(e)) for c, e in sorted(EMAILS.items())]
    owners = query(scientist, "SELECT owner_email FROM gold.customer_360 ORDER BY 1")
    assert owners == sorted((_sha(o),) for o in OWNERS.values())
    engineer = folder / "engineer.duckdb"
    assert query(engineer, "SELECT email FROM silver.dim_contact ORDER BY contact_id") == [
        (EMAILS[c],) for c in sorted(EMAILS)
    ]

    # Opened the way readers must: no other file, no writes, the setting locked.
    con = open_audience(emea)
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        con.execute(f"SELECT * FROM delta_scan('{lake.lake.root}/gold/customer_360')")
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("CREATE TABLE gold.copy AS SELECT 1")
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")
    con.close()
    code, out = governance(lake, "check", capsys)
    assert (code, out.splitlines()[0]) == (0, "duckdb: in sync with the policy")


def test_a_newer_lake_is_refreshed_by_apply_but_is_not_drift(
    lake: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert governance(lake, "apply", capsys)[0] == 0
    row = {"account_id": "A3", "name": "Account A3", "region": "EMEA", "owner_email": "x@y.example"}
    _write(lake, "gold.customer_360", [row], mode="append")
    code, out = governance(lake, "check", capsys)
    assert code == 0, out
    code, out = governance(lake, "plan", capsys)
    assert (
        "~ audience data analyst_emea (is: gold.customer_360@0, gold.daily_revenue@0,"
        " gold.opportunity_pipeline@0; policy: gold.customer_360@1, gold.daily_revenue@0,"
        " gold.opportunity_pipeline@0)"
        in out
    )
    assert governance(lake, "apply", capsys)[0] == 0
    emea = Path(str(lake.governance.audiences_dir)) / "analyst_emea.duckdb"
    assert query(emea, "SELECT account_id FROM gold.customer_360 ORDER BY 1") == [("A1",), ("A3",)]


def test_a_file_changed_by_hand_is_drift(
    lake: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert governance(lake, "apply", capsys)[0] == 0
    emea = Path(str(lake.governance.audiences_dir)) / "analyst_emea.duckdb"
    emea.chmod(0o640)
    con = duckdb.connect(str(emea))
    con.execute("ALTER TABLE gold.customer_360 ADD COLUMN owner_email VARCHAR")
    con.close()
    code, out = governance(lake, "check", capsys)
    assert code == 1
    assert "duckdb: DRIFT: 1 difference(s) from the policy" in out
    assert "~ audience file analyst_emea (changed outside the policy)" in out
    assert governance(lake, "apply", capsys)[0] == 0
    assert governance(lake, "check", capsys)[0] == 0


def test_a_policy_change_makes_the_files_drift(
    lake: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert governance(lake, "apply", capsys)[0] == 0
    access = load_access(lake, REPO_ROOT / "config")
    policy = access.policy
    stricter = policy.model_copy(
        update={
            "roles": {
                **policy.roles,
                "data_scientist": policy.roles["data_scientist"].model_copy(
                    update={"columns": {"pii": "null"}}
                ),
            }
        }
    )
    from cdc.governance.access import resolve_access

    target = DuckDbGovernance(
        resolve_access(stricter, access.catalog),
        policy.targets.duckdb,
        Path(str(lake.governance.audiences_dir)),
    )
    drift = target.check()
    assert [c.line() for c in drift.changes] == [
        "~ audience file data_scientist (defined otherwise by the policy now)"
    ]
    target.apply()
    scientist = Path(str(lake.governance.audiences_dir)) / "data_scientist.duckdb"
    assert query(scientist, "SELECT DISTINCT email FROM silver.dim_contact") == [(None,)]
    assert not target.check().changes
