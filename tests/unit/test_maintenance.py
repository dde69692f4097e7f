"""``cdc maintain`` on the delta-rs lake: health, OPTIMIZE with Z-ORDER, VACUUM and its floor."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cdc.cli import main
from cdc.config import load_settings
from cdc.maintenance import maintenance_tables
from tests.conftest import REPO_ROOT


def _args(tmp_path: Path, *extra: str) -> list[str]:
    out = []
    for item in (
        f"lake.root={tmp_path / 'lake'}",
        f"checkpoints.root={tmp_path / 'cp'}",
        "maintenance.min_files_judged=3",
        *extra,
    ):
        out += ["--set", item]
    return out


def _bronze(tmp_path: Path) -> str:
    uri = str(tmp_path / "lake" / "bronze" / "crm_contacts")
    for i in range(6):  # six small appends: six small files
        rows = [{"contact_id": f"c{(i * 7 + j) % 13}"} for j in range(5)]
        write_deltalake(
            uri,
            pa.table({"key": pa.array(rows), "offset": pa.array(range(i * 5, i * 5 + 5))}),
            mode="append",
        )
    return uri


def test_tables_and_their_zorder_columns() -> None:
    settings = load_settings("local", config_dir=REPO_ROOT / "config", environ={})
    by_name = {t.name: t for t in maintenance_tables(settings)}
    assert by_name["bronze/crm_contacts"].zorder == ("key.contact_id",)
    assert by_name["silver/dim_contact"].zorder == ("contact_id",)
    assert by_name["silver/fact_orders"].zorder == ("ordered_at",)
    assert by_name["bronze/events_orders"].zorder == ("key.order_id",)
    assert [t.name for t in maintenance_tables(settings, "crm_contacts")] == [
        "bronze/crm_contacts",
        "quarantine/crm_contacts",
        "silver/dim_contact",
        "silver/_orphans_dim_contact",
    ]
    # Gold tables are maintained (and snapshotted for DR) too, clustered on their grain.
    assert [t.name for t in maintenance_tables(settings, "gold")] == [
        "gold/customer_360",
        "gold/daily_revenue",
        "gold/opportunity_pipeline",
        "gold/customer_features",
    ]
    assert by_name["gold/daily_revenue"].zorder == ("order_date", "region", "currency")


def test_health_optimize_vacuum(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = _bronze(tmp_path)
    rows_before = DeltaTable(uri).to_pyarrow_table().sort_by("offset")
    table = ["--table", "bronze/crm_contacts"]

    assert main(["maintain", "health", *table, *_args(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("bronze/crm_contacts: 6 files, ")
    assert "100% small" in out and "UNHEALTHY: 100% of files are small" in out

    assert main(["maintain", "optimize", *_args(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("bronze/crm_contacts: 6 files, ")
    assert " -> 1 files, " in out and "ZORDER BY (key.contact_id)" in out
    latest = DeltaTable(uri)
    assert latest.history(1)[0]["operation"] == "OPTIMIZE"
    assert latest.to_pyarrow_table().sort_by("offset").equals(rows_before)

    assert main(["maintain", "health", *table, *_args(tmp_path)]) == 0
    assert "(0 since OPTIMIZE), last OPTIMIZE 20" in capsys.readouterr().out

    # The floor: a retention below it is refused in one line unless forced.
    assert main(["maintain", "vacuum", "--retention-hours", "0", *_args(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "cdc: error: --retention-hours 0 is below maintenance.min_retention_hours (168): files"
        " a running query, a replay or a DR snapshot may still read would go; pass --force if"
        " nothing reads older versions"
    )
    assert main(["maintain", "vacuum", "--dry-run", *_args(tmp_path)]) == 0
    assert "would delete 0 files" in capsys.readouterr().out  # all younger than 168 h
    vacuum = ["maintain", "vacuum", "--retention-hours", "0", "--force", *table]
    assert main([*vacuum, "--dry-run", *_args(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == (
        "bronze/crm_contacts: would delete 6 files no version of the last 0 hours needs"
    )
    assert main([*vacuum, *_args(tmp_path)]) == 0
    assert "deleted 6 files" in capsys.readouterr().out
    assert len(list(Path(uri).glob("*.parquet"))) == 1
    assert DeltaTable(uri).to_pyarrow_table().sort_by("offset").equals(rows_before)
    assert main(["maintain", "health", *table, *_args(tmp_path)]) == 0
    assert ", last VACUUM 20" in capsys.readouterr().out


def test_an_unknown_table_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["maintain", "optimize", "--table", "silver/nope", *_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdc: error: --table 'silver/nope' names no table or pipeline; tables: ")
