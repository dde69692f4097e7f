"""``cdc publish`` on DuckDB (a real file, real Delta tables): incremental per Delta version,
idempotent, all-or-nothing; and the pure parts (the diff by key, key and schema checks)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.cli import main
from cdc.warehouse import (
    PublishConflictError,
    SchemaMismatchError,
    Statement,
    WarehouseUnavailableError,
)
from cdc.warehouse.duckdb import DuckDbDialect, DuckDbWarehouse
from cdc.warehouse.publish import (
    PublishError,
    check_keys,
    check_schema,
    diff_versions,
    publish_table,
    staged_rows,
    widened_fields,
)
from tests.support.paths import REPO_ROOT

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEYS = ("account_id",)


def _table(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


ACCOUNTS = pa.schema(
    [
        ("account_id", pa.string()),
        ("name", pa.string()),
        ("revenue_90d", pa.decimal128(38, 2)),
        ("last_order_at", pa.timestamp("us", "UTC")),
    ]
)


def _accounts(*rows: tuple[str, str, str | None]) -> pa.Table:
    return _table(
        [
            {
                "account_id": a,
                "name": n,
                "revenue_90d": None if r is None else Decimal(r),
                "last_order_at": WHEN,
            }
            for a, n, r in rows
        ],
        ACCOUNTS,
    )


# ------------------------------------------------------------------------ pure parts


def test_diff_by_key_finds_upserts_and_deletes() -> None:
    old = _accounts(("A1", "Acme", "10.00"), ("A2", "Beta", None), ("A3", "Gamma", "3.00"))
    new = _accounts(("A1", "Acme", "10.00"), ("A2", "Beta", "7.50"), ("A4", "Delta", None))
    changes = diff_versions(old, new, KEYS)
    assert changes.upserts.column("account_id").to_pylist() == ["A2", "A4"]
    assert changes.upserts.schema == new.schema
    assert changes.deletes.to_pylist() == [{"account_id": "A3"}]


def test_a_column_added_since_counts_as_null_in_the_old_version() -> None:
    old = _table([{"k": 1, "v": "a"}, {"k": 2, "v": "b"}])
    new = _table([{"k": 1, "v": "a", "x": None}, {"k": 2, "v": "b", "x": 5}])
    changes = diff_versions(old, new, ("k",))
    assert changes.upserts.to_pylist() == [{"k": 2, "v": "b", "x": 5}]
    assert changes.deletes.num_rows == 0


def test_staged_rows_carry_the_operation_and_null_non_key_columns_of_deletes() -> None:
    old = _accounts(("A1", "Acme", "1.00"), ("A2", "Beta", None))
    new = _accounts(("A1", "Acme", "2.00"))
    staged = staged_rows(diff_versions(old, new, KEYS), new.schema)
    assert staged.schema.names == [*ACCOUNTS.names, "_cdc_op"]
    assert [(r["account_id"], r["revenue_90d"], r["_cdc_op"]) for r in staged.to_pylist()] == [
        ("A1", Decimal("2.00"), "U"),
        ("A2", None, "D"),
    ]


_VALUES = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True, width=32))


@settings(max_examples=200, deadline=None)
@given(
    old=st.dictionaries(st.tuples(st.integers(0, 5), st.sampled_from("ab")), _VALUES),
    new=st.dictionaries(st.tuples(st.integers(0, 5), st.sampled_from("ab")), _VALUES),
)
def test_applying_the_diff_to_the_old_version_gives_the_new_one(
    old: dict[tuple[int, str], Any], new: dict[tuple[int, str], Any]
) -> None:
    schema = pa.schema([("k", pa.int64()), ("s", pa.string()), ("v", pa.float64())])

    def table(rows: dict[tuple[int, str], Any]) -> pa.Table:
        return _table(
            [{"k": k, "s": s, "v": None if v is None else float(v)} for (k, s), v in rows.items()],
            schema,
        )

    changes = diff_versions(table(old), table(new), ("k", "s"))
    result = {(r["k"], r["s"]): r["v"] for r in table(old).to_pylist()}
    for key in changes.deletes.to_pylist():
        del result[(key["k"], key["s"])]
    for row in changes.upserts.to_pylist():
        result[(row["k"], row["s"])] = row["v"]
    expected = {k: None if v is None else float(v) for k, v in new.items()}
    assert result.keys() == expected.keys()
    for key, value in expected.items():  # NaN equals NaN here, as in the diff
        assert result[key] == value or (value != value and result[key] != result[key])
    # Minimal: an upsert is a row that is new or differs; a delete is a key that went away.
    same = {k for k in new if k in old and _same(old[k], new[k])}
    upserted = {(r["k"], r["s"]) for r in changes.upserts.to_pylist()}
    assert upserted == set(new) - same
    assert {(r["k"], r["s"]) for r in changes.deletes.to_pylist()} == set(old) - set(new)


def _same(a: Any, b: Any) -> bool:
    a = None if a is None else float(a)
    b = None if b is None else float(b)
    return a == b or (a is not None and b is not None and a != a and b != b)


def test_keys_must_be_present_non_null_and_unique() -> None:
    with pytest.raises(PublishError, match=r"^t: key column\(s\) id not in the table"):
        check_keys(_table([{"k": 1}]), ("id",), "t")
    with pytest.raises(PublishError, match=r"^t: 1 row\(s\) with a null k$"):
        check_keys(_table([{"k": 1}, {"k": None}]), ("k",), "t")
    with pytest.raises(PublishError) as caught:
        check_keys(_table([{"k": 1, "s": "a"}, {"k": 1, "s": "a"}]), ("k", "s"), "t")
    assert str(caught.value) == "t: 2 rows share a key (k, s), e.g. {'k': 1, 's': 'a'}"


def test_schema_changes_the_warehouse_cannot_follow_are_refused() -> None:
    before = pa.schema([("k", pa.int64()), ("n", pa.int32())])
    check_schema(before, before.append(pa.field("x", pa.string())), DuckDbDialect(), "t", (1, 2))
    # string and large_string are one warehouse type: not a change.
    check_schema(
        pa.schema([("s", pa.string())]), pa.schema([("s", pa.large_string())]), DuckDbDialect(),
        "t", (1, 2),
    )  # fmt: skip
    # A widened type is followed (the warehouse column widens): not refused.
    wider = pa.schema([("k", pa.int64()), ("n", pa.int64())])
    check_schema(before, wider, DuckDbDialect(), "t", (1, 2))
    assert [f.name for f in widened_fields(before, wider, DuckDbDialect())] == ["n"]
    with pytest.raises(SchemaMismatchError) as caught:
        check_schema(wider, before, DuckDbDialect(), "t", (1, 2))  # narrowed
    assert str(caught.value) == (
        "t: column 'n' changed from BIGINT to INTEGER between versions 1 and 2; drop the"
        " warehouse table to publish it again in full"
    )
    with pytest.raises(SchemaMismatchError, match="column 'n' was dropped between versions 1"):
        check_schema(before, pa.schema([("k", pa.int64())]), DuckDbDialect(), "t", (1, 2))


# ------------------------------------------------------------------ DuckDB, end to end


@pytest.fixture()
def warehouse(tmp_path: Path) -> Iterator[DuckDbWarehouse]:
    with DuckDbWarehouse(tmp_path / "warehouse.duckdb", "gold") as wh:
        wh.ensure_control()
        yield wh  # type: ignore[misc]


def rows_of(wh: DuckDbWarehouse, table: str, keys: tuple[str, ...] = KEYS) -> list[dict[str, Any]]:
    """The warehouse table's rows, ordered by key."""
    order = ", ".join(f'"{k}"' for k in keys)
    cursor = wh.connection.execute(f'SELECT * FROM "{wh.schema}"."{table}" ORDER BY {order}')
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def delta_rows(uri: str, keys: tuple[str, ...] = KEYS) -> list[dict[str, Any]]:
    """The Delta table's rows at its latest version, ordered by key."""
    table = DeltaTable(uri).to_pyarrow_table()
    return table.sort_by([(k, "ascending") for k in keys]).to_pylist()


def control_of(wh: DuckDbWarehouse) -> dict[str, tuple[int, int, datetime]]:
    rows = wh.query(
        Statement(
            'SELECT "table_name", "delta_version", "rows", "published_at"'
            ' FROM "gold"."_cdc_publish_state"'
        )
    )
    return {name: (version, count, at) for name, version, count, at in rows}


def test_publish_is_incremental_per_version_and_a_rerun_publishes_nothing(
    warehouse: DuckDbWarehouse, tmp_path: Path
) -> None:
    uri = str(tmp_path / "customer_360")
    write_deltalake(uri, _accounts(("A1", "Acme", "10.00"), ("A2", "Beta", None)))
    first = publish_table(warehouse, "customer_360", uri, KEYS, now=lambda: WHEN)
    assert (first.mode, first.version, first.upserted, first.deleted) == ("full", 0, 2, 0)
    assert first.line().startswith(
        "customer_360: published version 0 in full (nothing published yet): 2 rows upserted,"
        " 0 deleted in "
    )
    assert rows_of(warehouse, "customer_360") == delta_rows(uri)
    again = publish_table(warehouse, "customer_360", uri, KEYS)
    assert again.line() == "customer_360: up to date at version 0"
    assert control_of(warehouse) == {"customer_360": (0, 2, WHEN)}

    # Version 1 updates A2 and adds A3; version 2 deletes A1; version 3 adds a column.
    table = DeltaTable(uri)
    table.update(
        updates={"revenue_90d": "CAST(7.5 AS DECIMAL(38,2))"}, predicate="account_id = 'A2'"
    )
    write_deltalake(uri, _accounts(("A3", "Gamma", "1.00")), mode="append")
    DeltaTable(uri).delete("account_id = 'A1'")
    extra = _accounts(("A4", "Delta", "4.00")).append_column("tier", pa.array(["gold"]))
    write_deltalake(uri, extra, mode="append", schema_mode="merge")
    later = datetime(2026, 3, 2, tzinfo=UTC)
    result = publish_table(warehouse, "customer_360", uri, KEYS, now=lambda: later)
    assert (result.mode, result.previous, result.version) == ("incremental", 0, 4)
    assert (result.upserted, result.deleted, result.added_columns) == (3, 1, ("tier",))
    assert rows_of(warehouse, "customer_360") == delta_rows(uri)
    assert [r["tier"] for r in rows_of(warehouse, "customer_360")] == [None, None, "gold"]
    assert control_of(warehouse) == {"customer_360": (4, 3, later)}
    assert publish_table(warehouse, "customer_360", uri, KEYS).mode == "up to date"


def test_a_vacuumed_version_means_a_full_load_said_in_the_log(
    warehouse: DuckDbWarehouse, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, _accounts(("A1", "Acme", "1.00"), ("A2", "Beta", "2.00")))
    publish_table(warehouse, "t", uri, KEYS)
    write_deltalake(uri, _accounts(("A2", "Beta", "9.00"), ("A3", "Gamma", None)), mode="overwrite")
    DeltaTable(uri).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with caplog.at_level(logging.WARNING, logger="cdc.warehouse.publish"):
        result = publish_table(warehouse, "t", uri, KEYS)
    assert result.mode == "full" and result.reason.startswith(
        "version 0 is no longer readable, vacuumed? ("
    )
    assert (result.upserted, result.deleted) == (2, 1)  # A1 is gone from the warehouse too
    assert rows_of(warehouse, "t") == delta_rows(uri)
    # The overwrite is version 1; delta-rs's VACUUM commits versions 2 and 3.
    assert result.version == 3
    assert "t: full load of version 3: version 0 is no longer readable" in caplog.text


def test_a_dropped_warehouse_table_or_a_recreated_delta_table_is_loaded_in_full(
    warehouse: DuckDbWarehouse, tmp_path: Path
) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, _accounts(("A1", "Acme", "1.00")))
    write_deltalake(uri, _accounts(("A2", "Beta", "2.00")), mode="append")
    publish_table(warehouse, "t", uri, KEYS)
    warehouse.execute(Statement('DROP TABLE "gold"."t"'))
    result = publish_table(warehouse, "t", uri, KEYS)
    assert (result.mode, result.upserted) == ("full", 2)
    assert result.reason == "the warehouse table is missing (control table: version 1)"
    shutil.rmtree(uri)
    write_deltalake(uri, _accounts(("A9", "Zed", None)))
    result = publish_table(warehouse, "t", uri, KEYS)
    assert result.reason == "version 1 was published, the table is at 0: re-created"
    assert (result.upserted, result.deleted) == (1, 2)
    assert rows_of(warehouse, "t") == delta_rows(uri)
    assert control_of(warehouse)["t"][:2] == (0, 1)


def test_an_incompatible_change_is_one_line_and_changes_nothing(
    warehouse: DuckDbWarehouse, tmp_path: Path
) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(
        uri, _table([{"k": 1, "n": 1}], pa.schema([("k", pa.int64()), ("n", pa.int32())]))
    )
    publish_table(warehouse, "t", uri, ("k",))
    write_deltalake(
        uri,
        _table([{"k": 1, "n": "2"}], pa.schema([("k", pa.int64()), ("n", pa.string())])),
        mode="overwrite",
        schema_mode="overwrite",
    )
    with pytest.raises(
        SchemaMismatchError, match=r"^t: column 'n' changed from INTEGER to VARCHAR"
    ):
        publish_table(warehouse, "t", uri, ("k",))
    assert rows_of(warehouse, "t", ("k",)) == [{"k": 1, "n": 1}]
    assert control_of(warehouse)["t"][0] == 0


def test_a_widened_column_widens_in_the_warehouse_and_takes_the_wider_values(
    warehouse: DuckDbWarehouse, tmp_path: Path
) -> None:
    uri = str(tmp_path / "t")
    narrow = pa.schema([("k", pa.int64()), ("n", pa.int32()), ("d", pa.decimal128(6, 2))])
    write_deltalake(uri, _table([{"k": 1, "n": 1, "d": Decimal("1.50")}], narrow))
    publish_table(warehouse, "t", uri, ("k",))
    wide = pa.schema([("k", pa.int64()), ("n", pa.int64()), ("d", pa.decimal128(12, 2))])
    rows = [{"k": 1, "n": 1, "d": Decimal("1.50")}, {"k": 2, "n": 2**40, "d": Decimal("1e9")}]
    write_deltalake(uri, _table(rows, wide), mode="overwrite", schema_mode="overwrite")
    result = publish_table(warehouse, "t", uri, ("k",))
    assert (result.mode, result.upserted) == ("incremental", 1)
    assert rows_of(warehouse, "t", ("k",)) == rows
    types = warehouse.query(
        Statement(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'gold' AND table_name = 't' ORDER BY column_name"
        )
    )
    assert sorted(types) == [("d", "DECIMAL(12,2)"), ("k", "BIGINT"), ("n", "BIGINT")]


def test_duplicate_keys_are_refused_before_anything_is_written(
    warehouse: DuckDbWarehouse, tmp_path: Path
) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, _accounts(("A1", "Acme", None), ("A1", "Acme again", None)))
    with pytest.raises(PublishError, match=r"^t: 2 rows share a key \(account_id\)"):
        publish_table(warehouse, "t", uri, KEYS)
    assert warehouse.columns("t") is None and control_of(warehouse) == {}


class _Crash(Exception):
    """Stands in for the process dying at a stage."""


@pytest.mark.parametrize("stage", ["before-commit", "mid-commit"])
def test_a_publish_that_dies_before_its_commit_changes_nothing(
    warehouse: DuckDbWarehouse, tmp_path: Path, stage: str
) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, _accounts(("A1", "Acme", "1.00"), ("A2", "Beta", "2.00")))
    publish_table(warehouse, "t", uri, KEYS, now=lambda: WHEN)
    before = rows_of(warehouse, "t")
    write_deltalake(uri, _accounts(("A2", "Beta", "5.00"), ("A3", "Gamma", None)), mode="overwrite")

    def crash(at: str, version: int) -> None:
        if at == stage:
            raise _Crash(f"{at}:{version}")

    with pytest.raises(_Crash, match=f"^{stage}:1$"):
        publish_table(warehouse, "t", uri, KEYS, fault_hook=crash)
    assert rows_of(warehouse, "t") == before
    assert control_of(warehouse) == {"t": (0, 2, WHEN)}
    result = publish_table(warehouse, "t", uri, KEYS, now=lambda: WHEN)
    assert (result.mode, result.upserted, result.deleted) == ("incremental", 2, 1)
    with DuckDbWarehouse(tmp_path / "clean.duckdb", "gold") as clean:
        clean.ensure_control()
        publish_table(clean, "t", uri, KEYS, now=lambda: WHEN)
        assert rows_of(warehouse, "t") == rows_of(clean, "t") == delta_rows(uri)
        assert control_of(warehouse) == control_of(clean)


def test_a_publish_that_lost_a_race_for_the_control_row_changes_nothing(
    warehouse: DuckDbWarehouse, tmp_path: Path
) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, _accounts(("A1", "Acme", "1.00")))
    publish_table(warehouse, "t", uri, KEYS)
    write_deltalake(uri, _accounts(("A2", "Beta", None)), mode="append")

    def another_publisher_commits(at: str, version: int) -> None:
        if at == "before-commit":
            warehouse.execute(
                Statement('UPDATE "gold"."_cdc_publish_state" SET "delta_version" = 7')
            )

    with pytest.raises(PublishConflictError) as caught:
        publish_table(warehouse, "t", uri, KEYS, fault_hook=another_publisher_commits)
    assert str(caught.value) == (
        "t: another publish moved gold._cdc_publish_state past version 0 first; nothing was"
        " changed (run again)"
    )
    assert [r["account_id"] for r in rows_of(warehouse, "t")] == ["A1"]


def test_no_delta_table_is_one_line(warehouse: DuckDbWarehouse, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match=f"^no Delta table at {tmp_path / 'none'}$"):
        publish_table(warehouse, "t", str(tmp_path / "none"), KEYS)


def test_a_duckdb_file_another_process_writes_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(path)!r}); print('open', flush=True);"
            " sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(WarehouseUnavailableError) as caught:
            DuckDbWarehouse(path, "gold").connect()
        message = str(caught.value)
        assert message.startswith(f"cannot open the DuckDB warehouse {path}: ")
        assert "lock" in message and "\n" not in message
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


# ------------------------------------------------------------------------------ CLI


def _cdc(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--config-dir", str(REPO_ROOT / "config")])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_publishes_to_the_embedded_duckdb_and_says_so_per_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    sets = ["--set", f"lake.root={lake}", "--set", f"checkpoints.root={tmp_path / 'ck'}"]
    code, _, err = _cdc(capsys, "publish", "--table", "customer_360", "nope", *sets)
    assert (code, err) == (
        2,
        "cdc: error: unknown gold table(s) nope; valid: customer_360, daily_revenue,"
        " opportunity_pipeline, customer_features\n",
    )
    code, _, err = _cdc(capsys, "publish", *sets)
    assert (code, err) == (
        2,
        "cdc: error: gold table(s) customer_360, daily_revenue, opportunity_pipeline,"
        f" customer_features not built yet under {lake / 'gold'} (run 'cdc gold build')\n",
    )
    write_deltalake(str(lake / "gold" / "customer_360"), _accounts(("A1", "Acme", "1.00")))
    code, out, err = _cdc(capsys, "publish", "--table", "customer_360", *sets)
    assert code == 0, err
    assert out.startswith(
        "customer_360: published version 0 in full (nothing published yet): 1 rows upserted,"
        " 0 deleted in "
    )
    code, out, _ = _cdc(capsys, "publish", "--table", "customer_360", "--target", "duckdb", *sets)
    assert (code, out) == (0, "customer_360: up to date at version 0\n")
    with DuckDbWarehouse(tmp_path / "warehouse.duckdb", "gold") as wh:
        assert [r["account_id"] for r in rows_of(wh, "customer_360")] == ["A1"]


def test_cli_refuses_fault_injection_in_prod(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDC_FAULT_INJECT", "mid-commit:1")
    code, _, err = _cdc(capsys, "publish", "--env", "prod")
    assert (code, err) == (2, "cdc: error: CDC_FAULT_INJECT is for tests and refused in env prod\n")
