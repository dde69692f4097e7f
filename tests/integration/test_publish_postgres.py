"""``cdc publish`` against a real PostgreSQL server: the rows DuckDB gets, a ``kill -9`` at
every stage of a publish, and the one-line errors of an unreachable or refusing server."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cdc.cli import main
from cdc.gold import GOLD_KEYS
from cdc.runtime.faults import FAULT_ENV, FAULT_STAGES
from cdc.warehouse.duckdb import DuckDbWarehouse
from cdc.warehouse.postgres import PostgresWarehouse
from cdc.warehouse.publish import publish_table
from tests.support.endpoints import free_port
from tests.support.paths import REPO_ROOT
from tests.support.postgres import PostgresDatabase

pytestmark = pytest.mark.integration

TABLE = "daily_revenue"
KEYS = GOLD_KEYS[TABLE]
PASSWORD_ENV = "CDC_TEST_WAREHOUSE_PASSWORD"
SCHEMA = pa.schema(
    [
        ("order_date", pa.date32()),
        ("region", pa.string()),
        ("currency", pa.string()),
        ("orders", pa.int64()),
        ("revenue", pa.decimal128(38, 2)),
        ("updated_at", pa.timestamp("us", "UTC")),
        ("channels", pa.list_(pa.string())),
    ]
)
DAY = date(2026, 1, 1)


def _revenue(days: range, regions: tuple[str, ...] = ("EMEA", "AMER", "APAC")) -> pa.Table:
    rows = [
        {
            "order_date": DAY + timedelta(days=d),
            "region": region,
            "currency": "EUR",
            "orders": d * 10 + i,
            "revenue": Decimal(f"{d * 100 + i}.25"),
            "updated_at": datetime(2026, 2, 1, tzinfo=UTC) + timedelta(minutes=d),
            "channels": None if d % 3 == 0 else ["web", region.lower()],
        }
        for d in days
        for i, region in enumerate(regions)
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _change(uri: str) -> int:
    """Three commits: an update, a delete, an append; returns the table's version."""
    table = DeltaTable(uri)
    table.update(
        updates={"orders": "orders + 1000", "channels": "NULL"}, predicate="region = 'APAC'"
    )
    DeltaTable(uri).delete(f"order_date = '{DAY + timedelta(days=2)}'")
    write_deltalake(uri, _revenue(range(10, 12), ("EMEA",)), mode="append")
    return int(DeltaTable(uri).version())


def _delta_rows(uri: str) -> list[dict[str, Any]]:
    table = DeltaTable(uri).to_pyarrow_table()
    return table.sort_by([(k, "ascending") for k in KEYS]).to_pylist()


def _pg_rows(postgres: PostgresDatabase, schema: str) -> list[dict[str, Any]]:
    order = ", ".join(f'"{k}"' for k in KEYS)
    with postgres.connect() as conn:
        cursor = conn.execute(f'SELECT * FROM "{schema}"."{TABLE}" ORDER BY {order}')
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _control(postgres: PostgresDatabase, schema: str) -> list[tuple[Any, ...]]:
    with postgres.connect() as conn:
        return conn.execute(
            f'SELECT table_name, delta_version, "rows" FROM "{schema}"._cdc_publish_state'
        ).fetchall()


def _warehouse(postgres: PostgresDatabase, schema: str) -> PostgresWarehouse:
    """The test server as a warehouse publishing into ``schema``."""
    return PostgresWarehouse(
        schema,
        host=postgres.host,
        port=postgres.port,
        database=postgres.database,
        user=postgres.user,
        password=postgres.password,
    )


def _staging_tables(postgres: PostgresDatabase) -> list[str]:
    with postgres.connect() as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE %s", ("\\_cdc\\_stage\\_%",)
        ).fetchall()
    return [r[0] for r in rows]


def _publish(
    postgres: PostgresDatabase,
    lake: Path,
    schema: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``cdc publish --table daily_revenue`` to ``schema``: in this process, or in a process
    of its own when a fault is injected (it dies of it)."""
    sets = [
        f"lake.root={lake}",
        f"checkpoints.root={lake.parent / 'checkpoints'}",
        *postgres.overrides(schema, PASSWORD_ENV),
    ]
    argv = ["publish", "--table", TABLE, *[a for s in sets for a in ("--set", s)], *args]
    environ = {PASSWORD_ENV: postgres.password, **(env or {})}
    if FAULT_ENV in environ:
        return subprocess.run(
            [sys.executable, "-m", "cdc.cli", *argv],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, **environ},
            timeout=180,
        )
    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in environ}
    os.environ.update(environ)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def test_postgres_gets_the_rows_duckdb_gets_at_every_version(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    uri = str(tmp_path / TABLE)
    write_deltalake(uri, _revenue(range(6)))
    pg = _warehouse(postgres, "same_rows")
    with pg, DuckDbWarehouse(tmp_path / "w.duckdb", "same_rows") as duck:
        for warehouse in (pg, duck):
            warehouse.ensure_control()
        for step in range(3):
            if step == 1:
                _change(uri)
            if step == 2:  # a column added, filled for some rows only
                extra = _revenue(range(20, 21)).append_column(
                    "tier", pa.array(["gold"] * 3, pa.string())
                )
                write_deltalake(uri, extra, mode="append", schema_mode="merge")
            results = [publish_table(w, TABLE, uri, KEYS) for w in (pg, duck)]
            pg_line, duck_line = (r.line().rsplit(" in ", 1)[0] for r in results)
            assert pg_line == duck_line
            expected = _delta_rows(uri)
            assert _pg_rows(postgres, "same_rows") == expected
            order = ", ".join(f'"{k}"' for k in KEYS)
            cursor = duck.connection.execute(f"SELECT * FROM same_rows.{TABLE} ORDER BY {order}")
            names = [d[0] for d in cursor.description]
            assert [dict(zip(names, r, strict=True)) for r in cursor.fetchall()] == expected
        assert results[0].added_columns == ("tier",)
        assert [publish_table(w, TABLE, uri, KEYS).mode for w in (pg, duck)] == ["up to date"] * 2


CRASHES = [(stage, False) for stage in FAULT_STAGES] + [("mid-commit", True)]


@pytest.mark.parametrize(
    ("stage", "first"), CRASHES, ids=[f"{s}{'-first' * f}" for s, f in CRASHES]
)
def test_kill9_mid_publish_then_a_rerun_equals_a_clean_publish(
    postgres: PostgresDatabase, tmp_path: Path, stage: str, first: bool
) -> None:
    lake = tmp_path / "lake"
    uri = str(lake / "gold" / TABLE)
    schema = f"crash_{stage.replace('-', '_')}{'_first' * first}"
    write_deltalake(uri, _revenue(range(8)))
    published: int | None = None
    if not first:
        done = _publish(postgres, lake, schema)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(
            f"{TABLE}: published version 0 in full (nothing published yet): 24 rows upserted,"
            " 0 deleted in "
        )
        published = 0
        version = _change(uri)
    else:
        version = 0
    before = None if first else _pg_rows(postgres, schema)

    killed = _publish(postgres, lake, schema, env={FAULT_ENV: f"{stage}:{version}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if stage == "after-commit":
        assert _control(postgres, schema) == [(TABLE, version, len(_delta_rows(uri)))]
    elif first:
        assert _control(postgres, schema) == []
        assert _pg_rows(postgres, schema) == []  # created before the transaction, still empty
    else:
        assert _control(postgres, schema) == [(TABLE, published, 24)]
        assert _pg_rows(postgres, schema) == before
    # The killed session's temporary staging table goes when the server sees it closed.
    deadline = time.monotonic() + 30
    while _staging_tables(postgres):
        assert time.monotonic() < deadline, _staging_tables(postgres)
        time.sleep(0.1)

    rerun = _publish(postgres, lake, schema)
    assert rerun.returncode == 0, rerun.stderr
    if stage == "after-commit":
        assert rerun.stdout == f"{TABLE}: up to date at version {version}\n"
    elif first:
        assert "published version 0 in full (nothing published yet): 24 rows upserted" in (
            rerun.stdout
        )
    else:
        # 8 APAC rows updated (one of them deleted since), 2 EMEA rows appended; one day gone.
        assert f"published version {version} (from version 0): 9 rows upserted, 3 deleted" in (
            rerun.stdout
        )
    clean = _publish(postgres, lake, f"{schema}_clean")
    assert clean.returncode == 0, clean.stderr
    assert _pg_rows(postgres, schema) == _pg_rows(postgres, f"{schema}_clean") == _delta_rows(uri)
    assert _control(postgres, schema) == _control(postgres, f"{schema}_clean")
    again = _publish(postgres, lake, schema)
    assert again.stdout == f"{TABLE}: up to date at version {version}\n", again.stderr


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cdc: error: "), done.stderr
    return lines[0]


def test_an_unreachable_or_refusing_warehouse_is_one_line_and_exit_2(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    write_deltalake(str(lake / "gold" / TABLE), _revenue(range(1)))
    port = free_port()
    line = _one_line_error(_publish(postgres, lake, "nowhere", "--set", f"warehouse.port={port}"))
    assert line.startswith(
        f"cdc: error: cannot reach the postgres warehouse at 127.0.0.1:{port}/{postgres.database}:"
        " connection failed:"
    )
    refused = _publish(postgres, lake, "nowhere", env={PASSWORD_ENV: "not-the-password-1234"})
    line = _one_line_error(refused)
    assert "password authentication failed" in line
    assert "not-the-password-1234" not in refused.stderr + refused.stdout
    unset = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "cdc.cli", "publish", "--table", TABLE, "--target", "postgres",
         "--set", f"lake.root={lake}", "--set", "warehouse.host=127.0.0.1",
         "--set", f"warehouse.password=env:{PASSWORD_ENV}"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=unset, timeout=120,
    )  # fmt: skip
    assert _one_line_error(done) == (
        f"cdc: error: secret reference 'env:{PASSWORD_ENV}': environment variable is not set"
    )


def test_awkward_values_arrive_in_postgres_as_they_are_in_delta(
    postgres: PostgresDatabase, tmp_path: Path
) -> None:
    uri = str(tmp_path / "awkward")
    schema = pa.schema(
        [
            ("k", pa.int32()),
            ("text", pa.string()),
            ("ratio", pa.float64()),
            ("flag", pa.bool_()),
            ("raw", pa.binary()),
            ("attrs", pa.map_(pa.string(), pa.int64())),
            ("point", pa.struct([("x", pa.int64()), ("label", pa.string())])),
            ("at", pa.timestamp("us")),
        ]
    )
    rows = [
        {"k": 1, "text": "", "ratio": float("nan"), "flag": True, "raw": b"\x00\xff,\n"},
        {"k": 2, "text": None, "ratio": float("-inf"), "flag": None, "raw": None},
        {"k": 3, "text": 'a,"b"\r\nc', "ratio": -0.0, "flag": False, "raw": b""},
        {"k": 4, "text": "\\N \\. ünï", "ratio": 1e300, "attrs": [("a", 1)]},
    ]
    for row in rows:
        row.setdefault("attrs", None)
        row["point"] = {"x": row["k"], "label": row["text"]}
        row["at"] = datetime(2026, 1, 1, 12, 30, 15, 123456)
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=schema))
    with _warehouse(postgres, "awkward") as pg:
        pg.ensure_control()
        assert publish_table(pg, "t", uri, ("k",)).upserted == 4
    with postgres.connect() as conn:
        got = conn.execute('SELECT * FROM awkward.t ORDER BY "k"').fetchall()
    assert [r[1] for r in got] == ["", None, 'a,"b"\r\nc', "\\N \\. ünï"]
    assert math.isnan(got[0][2]) and got[1][2] == float("-inf") and got[3][2] == 1e300
    assert str(got[2][2]) == "-0.0"
    assert [r[3] for r in got] == [True, None, False, None]
    assert [r[4] for r in got] == [b"\x00\xff,\n", None, b"", None]
    assert [r[5] for r in got] == [None, None, None, {"a": 1}]
    assert [r[6] for r in got] == [{"x": r["k"], "label": r["text"]} for r in rows]
    assert {r[7] for r in got} == {datetime(2026, 1, 1, 12, 30, 15, 123456)}


def test_a_widened_column_widens_in_postgres(postgres: PostgresDatabase, tmp_path: Path) -> None:
    uri = str(tmp_path / "widening")
    narrow = pa.schema([("k", pa.int64()), ("n", pa.int32()), ("d", pa.decimal128(6, 2))])
    write_deltalake(uri, pa.Table.from_pylist([{"k": 1, "n": 1, "d": Decimal("1.50")}], narrow))
    wide = pa.schema([("k", pa.int64()), ("n", pa.int64()), ("d", pa.decimal128(14, 3))])
    rows = [
        {"k": 1, "n": 1, "d": Decimal("1.500")},
        {"k": 2, "n": 2**40, "d": Decimal("12345678901.125")},
    ]
    with _warehouse(postgres, "widening") as pg:
        pg.ensure_control()
        publish_table(pg, "t", uri, ("k",))
        write_deltalake(
            uri, pa.Table.from_pylist(rows, wide), mode="overwrite", schema_mode="overwrite"
        )
        result = publish_table(pg, "t", uri, ("k",))
        assert (result.mode, result.upserted) == ("incremental", 1)
    with postgres.connect() as conn:
        got = conn.execute('SELECT "k", "n", "d" FROM widening.t ORDER BY "k"').fetchall()
        types = conn.execute(
            "SELECT column_name, data_type, numeric_precision, numeric_scale"
            " FROM information_schema.columns WHERE table_schema = 'widening'"
            " AND table_name = 't' ORDER BY column_name"
        ).fetchall()
    assert [tuple(r) for r in got] == [(r["k"], r["n"], r["d"]) for r in rows]
    assert [tuple(r) for r in types] == [
        ("d", "numeric", 14, 3),
        ("k", "bigint", 64, 0),
        ("n", "bigint", 64, 0),
    ]
