"""``cdc maintain`` on the delta-rs lake: health, OPTIMIZE with Z-ORDER, VACUUM and its floor;
the scheduled all-tables job on every kind of table the service writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cdc.cli import main
from cdc.companions.maintenance import TableRef, maintenance_tables, zorder_columns
from cdc.config.settings import load_settings
from tests.support.lake import (
    existing_tables,
    lake_settings,
    optimized_tables,
    scheduled_arguments,
    table_contents,
    write_small_lake,
)
from tests.support.paths import REPO_ROOT


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


# ------------------------------------------------- the scheduled job on every kind of table


def _batch_job(
    script: str, arguments: list[str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """A ``batch/`` entry point in its own process, on the local config and the test's lake."""
    return subprocess.run(
        [sys.executable, f"batch/{script}", *arguments, *_args(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "CDC_CONFIG_DIR": str(REPO_ROOT / "config")},
        timeout=600,
    )


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every table the service writes (bronze, quarantine, dimensions and their orphans, facts)
    from the writers, and gold from ``cdc gold build`` as its scheduled job runs it."""
    root = tmp_path_factory.mktemp("lake")
    write_small_lake(lake_settings(root))
    built = _batch_job("gold_build.py", [], root)
    assert built.returncode == 0, built.stderr
    return root


def test_the_scheduled_optimize_runs_on_every_kind_of_table(
    small_lake: Path, tmp_path: Path
) -> None:
    """Issue: the nightly job failed whenever gold existed ("Z-order columns cannot be
    partition columns. Found: ["as_of_date"]", exit 2 on every run)."""
    root = tmp_path / "run"
    shutil.copytree(small_lake, root)
    settings = lake_settings(root)
    refs = existing_tables(settings)
    assert {r.role for r in refs} == {"bronze", "quarantine", "silver", "orphans", "gold"}
    assert {r.name for r in refs} >= {
        "silver/dim_contact",  # a dimension, partitioned by is_current
        "silver/_orphans_dim_contact",
        "silver/fact_orders",
        "gold/customer_features",  # partitioned by as_of_date, one of its grain columns
    }
    assert len([r for r in refs if r.role == "gold"]) == 4
    before = table_contents(settings)

    arguments = scheduled_arguments("optimize")
    assert arguments == ["optimize", "--env", "local"]  # every table: no --table
    done = _batch_job("maintain.py", arguments, root)
    assert done.returncode == 0, done.stderr
    by_table = optimized_tables(done.stdout, refs)
    # Z-ORDER columns per table, never a partition column; gold on its grain.
    assert "ZORDER BY (account_id) in " in by_table["gold/customer_features"]
    assert "ZORDER BY (order_date, region, currency)" in by_table["gold/daily_revenue"]
    assert "ZORDER BY (contact_id) in " in by_table["silver/dim_contact"]
    assert "ZORDER BY (key.contact_id) in " in by_table["bronze/crm_contacts"]
    assert "ZORDER" not in by_table["quarantine/crm_contacts"]
    assert "ZORDER" not in by_table["silver/_orphans_dim_contact"]
    for ref in refs:  # compacting one file is nothing to commit; a Z-ORDER rewrites
        if "ZORDER" in by_table[ref.name]:
            assert DeltaTable(ref.uri).history(1)[0]["operation"] == "OPTIMIZE", ref.name
    after = table_contents(settings)
    for name, rows in before.items():
        assert after[name].equals(rows), name  # compaction moves rows, never changes them


def test_one_tables_failure_is_reported_and_the_others_still_run(
    small_lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "run"
    shutil.copytree(small_lake, root)
    settings = lake_settings(root)
    daily = next(r for r in maintenance_tables(settings) if r.name == "gold/daily_revenue")
    for data in Path(daily.uri).rglob("*.parquet"):
        data.write_bytes(b"not parquet")  # a file the OPTIMIZE cannot read
    total = len(existing_tables(settings))

    assert main(["maintain", "optimize", *_args(root)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == total
    failed = [line for line in lines if " -> " not in line]
    assert len(failed) == 1 and failed[0].startswith("OPTIMIZE gold/daily_revenue failed: ")
    # The tables after it in the run were optimized all the same.
    assert lines[-1].startswith("gold/customer_features: ") and " -> " in lines[-1]
    assert captured.err == (
        f"cdc: error: OPTIMIZE failed on 1 of {total} tables (gold/daily_revenue); the others"
        " were done\n"
    )


def test_zorder_columns_follow_the_tables_layout() -> None:
    ref = TableRef("p", "silver", "/x/silver/t", ("account_id", "as_of_date", "key.id", "gone"))
    schema = pa.schema(
        [
            ("account_id", pa.string()),
            ("as_of_date", pa.date32()),
            ("key", pa.struct([("id", pa.string())])),
        ]
    )
    assert zorder_columns(ref, schema, ["as_of_date"]) == ("account_id", "key.id")
    assert zorder_columns(ref, schema, []) == ("account_id", "as_of_date", "key.id")
    only = TableRef("p", "gold", "/x/gold/t", ("as_of_date",))
    assert zorder_columns(only, schema, ["as_of_date"]) == ()  # compaction alone
