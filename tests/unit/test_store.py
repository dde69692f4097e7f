"""The store's table operations on real delta-rs tables (no Spark): fixed snapshots beside the
kept handles, history, files, copies of a version, writes without an app transaction, OPTIMIZE
and VACUUM, and the one commit-metadata shape (with the shapes earlier releases wrote)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

from cdc.errors import TableReadError
from cdc.store import DeltaRsStore
from cdc.store.base import Txn
from cdc.store.files import filesystem, has_log, in_log
from cdc.store.plan import (
    Clause,
    CommitInfo,
    MergePlan,
    TableLayout,
    read_commit_info,
    scd2_merge_plan,
)

ACTION = "_cdc_action"


def rows(*values: int) -> pa.Table:
    return pa.table({"k": pa.array(values, pa.int64()), "v": [f"v{n}" for n in values]})


def append(uri: str, *values: int) -> None:
    write_deltalake(uri, rows(*values), mode="append")


# ------------------------------------------------------------------ commit metadata


def test_commit_info_is_one_json_document_under_cdc() -> None:
    info = CommitInfo("scd2-merge", "delta-rs", "cdc/p/silver/dim", 7, extra={"rows": 3})
    assert info.user_metadata() == (
        '{"cdc":{"app_id":"cdc/p/silver/dim","operation":"scd2-merge","rows":3,"version":7,'
        '"writer":"delta-rs"}}'
    )
    assert read_commit_info({"userMetadata": info.user_metadata()}) == {
        "operation": "scd2-merge",
        "writer": "delta-rs",
        "app_id": "cdc/p/silver/dim",
        "version": 7,
        "rows": 3,
    }


@pytest.mark.parametrize(
    ("commit", "expected"),
    [
        # the delta-rs writer before one shape: commitInfo fields (the batch as int or text)
        (
            {"cdc.operation": "scd2-merge", "cdc.app_id": "cdc/p/silver/dim", "cdc.batch": 4},
            {
                "operation": "scd2-merge",
                "writer": "delta-rs",
                "app_id": "cdc/p/silver/dim",
                "version": 4,
            },
        ),
        (
            {"cdc.operation": "append", "cdc.app_id": "cdc/p/bronze/t", "cdc.batch": "12"},
            {
                "operation": "append",
                "writer": "delta-rs",
                "app_id": "cdc/p/bronze/t",
                "version": 12,
            },
        ),
        ({"cdc.operation": "gold-build"}, {"operation": "gold-build", "writer": "delta-rs"}),
        # the delta-spark writer before one shape: its appends' userMetadata
        (
            {"userMetadata": "cdc cdc/p/bronze/t 31", "operation": "WRITE"},
            {
                "operation": "append",
                "writer": "delta-spark",
                "app_id": "cdc/p/bronze/t",
                "version": 31,
            },
        ),
        # not the service's
        ({"operation": "OPTIMIZE"}, None),
        ({"userMetadata": "nightly fix by hand"}, None),
        ({"userMetadata": "cdc only two"}, None),
        ({"userMetadata": '{"team": "data"}'}, None),
        ({"userMetadata": '["cdc"]'}, None),
        ({"userMetadata": "cdc x notanumber"}, None),
    ],
)
def test_commits_written_before_one_shape_are_still_read(
    commit: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    assert read_commit_info(commit) == expected


def test_every_delta_rs_write_records_the_shape(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    store = DeltaRsStore()
    sink = store.sink(uri)
    sink.append(rows(1, 2), Txn("app/t", 0))
    upsert = MergePlan("upsert", match=("k",), clauses=(Clause("update"), Clause("insert")))
    sink.merge(rows(2, 3), upsert, Txn("app/t", 1))
    sink.merge(rows(4), upsert, None, commit=CommitInfo("gold-build", "delta-rs", extra={"x": 1}))
    sink.replace(rows(5), TableLayout())
    assert [read_commit_info(c) for c in store.history(uri)] == [
        {"operation": "replace", "writer": "delta-rs"},
        {"operation": "gold-build", "writer": "delta-rs", "x": 1},
        {"operation": "upsert-merge", "writer": "delta-rs", "app_id": "app/t", "version": 1},
        {"operation": "append", "writer": "delta-rs", "app_id": "app/t", "version": 0},
    ]
    assert [c["version"] for c in store.history(uri)] == [3, 2, 1, 0]
    assert store.history(uri, 1)[0]["version"] == 3
    assert store.txn_version(uri, "app/t") == 1  # writes without a txn record none
    assert store.history(str(tmp_path / "none")) == []


# ------------------------------------------------------------------------ snapshots


def test_a_snapshot_stays_at_its_version_while_the_kept_handle_moves(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    append(uri, 1, 2)
    store = DeltaRsStore()
    pinned = store.snapshot(uri)
    assert pinned is not None and pinned.version == 0
    kept = store.handle(uri)
    assert kept is not None

    append(uri, 3)
    assert store.version(uri) == 1  # the kept handle caught up with the log
    assert kept.version() == 1
    assert store.query(uri, "SELECT count(*) AS n FROM t").column("n")[0].as_py() == 3
    # The snapshot did not move: every read sees version 0.
    assert pinned.version == 0
    assert sorted(pinned.read().column("k").to_pylist()) == [1, 2]
    assert pinned.query("SELECT max(k) AS m FROM t").column("m")[0].as_py() == 2
    assert pinned.scan().collect().height == 2
    assert pinned.rows() == 2
    assert pinned.files().version == 0 and len(pinned.files().files) == 1
    # A versioned read is a snapshot of its own, never the kept handle moved back.
    at_zero = store.read(uri, 0)
    assert at_zero is not None and at_zero.num_rows == 2
    assert store.handle(uri) is kept and kept.version() == 1
    assert sorted(store.read(uri).column("k").to_pylist()) == [1, 2, 3]  # type: ignore[union-attr]
    assert pinned.table_id == DeltaTable(uri).metadata().id
    assert pinned.columns() == ["k", "v"] and pinned.partition_columns() == []
    assert pinned.schema().names == ["k", "v"]


def test_a_missing_table_or_version_is_one_line(tmp_path: Path) -> None:
    store = DeltaRsStore()
    missing = str(tmp_path / "none")
    assert store.snapshot(missing) is None
    assert store.read(missing, 3) is None
    assert store.version(missing) is None and store.files(missing) is None
    with pytest.raises(TableReadError, match=f"^no Delta table at {missing}$"):
        store.query(missing, "SELECT 1")
    uri = str(tmp_path / "t")
    append(uri, 1)
    with pytest.raises(TableReadError, match=f"^cannot read the Delta table at {uri}: "):
        store.snapshot(uri, 5)
    with pytest.raises(TableReadError, match=f"^cannot read the Delta table at {uri}: .*nope"):
        store.query(uri, "SELECT nope FROM t")
    snapshot = store.snapshot(uri)
    assert snapshot is not None
    with pytest.raises(
        TableReadError, match=f"^cannot read version 0 of the Delta table at {uri}: .*nope"
    ):
        snapshot.query("SELECT nope FROM t")


def test_files_and_rows_of_a_version(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    append(uri, 1, 2, 3)
    append(uri, 4)
    store = DeltaRsStore()
    found = store.files(uri)
    assert found is not None
    assert found.version == 1 and found.deletion_vectors == 0
    assert sorted(f.rows for f in found.files) == [1, 3]  # type: ignore[type-var]
    on_disk = {p.name: p.stat().st_size for p in Path(uri).glob("*.parquet")}
    assert {f.path: f.size for f in found.files} == on_disk
    snapshot = store.snapshot(uri)
    assert snapshot is not None and snapshot.rows() == 4


def test_a_copy_of_a_version_takes_its_data_then_its_log_up_to_it(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    append(uri, 1)
    append(uri, 2)
    write_deltalake(uri, rows(3), mode="overwrite")  # version 2 no longer reads 0's files
    DeltaTable(uri).create_checkpoint()  # _last_checkpoint names version 2
    store = DeltaRsStore()
    first_two = store.snapshot(uri, 1)
    assert first_two is not None
    order = first_two.copy_order()
    data = [p for p in order if not in_log(p)]
    assert order == [*sorted(data), "_delta_log/00000000000000000000.json",
                     "_delta_log/00000000000000000001.json"]  # fmt: skip
    assert sorted(data) == sorted(f.path for f in first_two.files().files)
    latest = store.snapshot(uri)
    assert latest is not None
    logs = [p for p in latest.copy_order() if in_log(p)]
    assert "_delta_log/_last_checkpoint" not in logs
    assert "_delta_log/00000000000000000002.checkpoint.parquet" in logs
    fs, root = filesystem(uri, {})
    assert has_log(fs, root) and not has_log(fs, f"{root}/nothing")


# ------------------------------------------------------------------------- writes


def test_replace_creates_with_the_layout_and_replaces_rows_and_schema(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    store = DeltaRsStore()
    sink = store.sink(uri)
    layout = TableLayout(partition_by=("p",))
    first = sink.replace(pa.table({"k": [1, 2], "p": ["a", "b"]}), layout)
    assert (first.skipped, first.rows, first.table_version) == (False, 2, 0)
    snapshot = store.snapshot(uri)
    assert snapshot is not None and snapshot.partition_columns() == ["p"]
    info = CommitInfo("gold-build", "delta-rs", extra={"table": "t"})
    second = sink.replace(pa.table({"k": [7], "p": ["c"], "extra": ["x"]}), layout, info)
    assert second.table_version == 1
    assert store.read(uri).to_pylist() == [{"k": 7, "p": "c", "extra": "x"}]  # type: ignore[union-attr]
    assert read_commit_info(store.history(uri, 1)[0]) == {
        "operation": "gold-build",
        "writer": "delta-rs",
        "table": "t",
    }


def test_a_merge_without_txn_creates_then_upserts_and_deletes_by_plan(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    store = DeltaRsStore()
    sink = store.sink(uri)
    plan = MergePlan(
        "gold",
        match=("k",),
        clauses=(Clause("delete", "D"), Clause("update", "U"), Clause("insert", "U")),
        source_only=(ACTION,),
        layout=TableLayout(partition_by=("p",)),
    )

    def source(*changes: tuple[int, str, str]) -> pa.Table:
        k, p, action = zip(*changes, strict=True)
        return pa.table({"k": list(k), "p": list(p), ACTION: list(action)})

    created = sink.merge(source((1, "a", "U"), (2, "a", "U"), (9, "a", "D")), plan, None)
    assert created.table_version == 0
    assert store.snapshot(uri).partition_columns() == ["p"]  # type: ignore[union-attr]
    done = sink.merge(source((1, "b", "U"), (2, "a", "D"), (3, "c", "U")), plan, None)
    assert (done.rows, done.table_version) == (3, 1)
    assert sorted(store.read(uri).to_pylist(), key=lambda r: r["k"]) == [  # type: ignore[union-attr]
        {"k": 1, "p": "b"},
        {"k": 3, "p": "c"},
    ]
    # Not a micro-batch's write: the same source again is applied again, not skipped.
    again = sink.merge(source((3, "d", "U")), plan, None)
    assert not again.skipped and again.table_version == 2


# ------------------------------------------------------------------ maintenance


def test_optimize_and_vacuum_commit_the_shape(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    for n in range(4):
        append(uri, n)
    store = DeltaRsStore()
    store.optimize(uri, target_size=1 << 20)
    assert len(store.files(uri).files) == 1  # type: ignore[union-attr]
    assert store.history(uri, 1)[0]["operation"] == "OPTIMIZE"
    assert read_commit_info(store.history(uri, 1)[0]) == {
        "operation": "optimize",
        "writer": "delta-rs",
    }
    append(uri, 9, 3)
    store.optimize(uri, ("v",), target_size=1 << 20)  # Z-ORDER
    assert store.history(uri, 1)[0]["operationMetrics"]["plannerStrategy"] == "zOrder"
    assert read_commit_info(store.history(uri, 1)[0]) == {
        "operation": "optimize",
        "writer": "delta-rs",
    }
    stale = len(list(Path(uri).glob("*.parquet"))) - 1
    assert store.vacuum(uri, 0, dry_run=True) == stale
    assert len(list(Path(uri).glob("*.parquet"))) == stale + 1  # a dry run deletes nothing
    assert store.vacuum(uri, 0, dry_run=False) == stale
    assert len(list(Path(uri).glob("*.parquet"))) == 1
    ops = {c["operation"]: read_commit_info(c) for c in store.history(uri, 2)}
    assert ops == {
        "VACUUM END": {"operation": "vacuum", "writer": "delta-rs"},
        "VACUUM START": {"operation": "vacuum", "writer": "delta-rs"},
    }
    assert sorted(store.read(uri).column("k").to_pylist()) == [0, 1, 2, 3, 3, 9]  # type: ignore[union-attr]


def test_a_legacy_commit_on_disk_reads_like_a_new_one(tmp_path: Path) -> None:
    """A lake written by an earlier release: its delta-rs commits carried the metadata as
    commitInfo fields, which history returns as they were written."""
    uri = str(tmp_path / "t")
    legacy = {"cdc.operation": "append", "cdc.app_id": "cdc/p/bronze/t", "cdc.batch": "5"}
    write_deltalake(uri, rows(1), commit_properties=CommitProperties(custom_metadata=legacy))
    assert read_commit_info(DeltaRsStore().history(uri)[0]) == {
        "operation": "append",
        "writer": "delta-rs",
        "app_id": "cdc/p/bronze/t",
        "version": 5,
    }
    assert json.loads(CommitInfo("append", "delta-rs").user_metadata()) == {
        "cdc": {"operation": "append", "writer": "delta-rs"}
    }


def test_the_delta_spark_store_maintains_only_through_its_session(tmp_path: Path) -> None:
    from cdc.errors import ConfigError
    from cdc.store import store_for

    uri = str(tmp_path / "t")
    append(uri, 1)
    store = store_for("delta-spark")  # no session: reads work, maintenance is refused
    assert store.version(uri) == 0
    refused = "^the delta-spark lake is maintained through Spark: no session given$"
    with pytest.raises(ConfigError, match=refused):
        store.optimize(uri, target_size=1 << 20)
    with pytest.raises(ConfigError, match=refused):
        store.vacuum(uri, 168, dry_run=True)
    assert store.version(uri) == 0


@pytest.mark.parametrize("null_safe", ["<=>", "IS NOT DISTINCT FROM"])
def test_a_merge_matches_every_column_pair_with_one_operator(null_safe: str) -> None:
    # DataFusion builds hash-join keys of one kind only: an `=` beside the null-safe key
    # equalities made delta-rs join on the partition column alone and filter the keys after
    # (a MERGE of 50k rows into 20k keys went from 0.2 s to 21 s).
    plan = scd2_merge_plan(["contact_id"], current_only=True)
    condition = plan.condition(null_safe)
    pairs = re.findall(r"\(t\.`(\w+)` (.+?) s\.`(\w+)`\)", condition)
    assert pairs == [
        ("contact_id", null_safe, "contact_id"),
        ("_seq_open", null_safe, "_seq_open"),
        ("is_current", null_safe, "_cdc_was_current"),
    ]
    assert condition.endswith("(t.`is_current` = true)")  # the literal prunes the partition


# ------------------------------------------------------------------ statistics columns


def _bronze_like(n: int = 3) -> pa.Table:
    key = pa.array(
        [{"id": i, "blob": b"x"} for i in range(n)],
        pa.struct([("id", pa.int64()), ("blob", pa.binary())]),
    )
    value = pa.array(
        [{"name": f"n{i}", "flag": True, "tags": ["a"]} for i in range(n)],
        pa.struct([("name", pa.string()), ("flag", pa.bool_()), ("tags", pa.list_(pa.string()))]),
    )
    return pa.table(
        {
            "topic": ["t"] * n,
            "partition": pa.array([0] * n, pa.int32()),
            "offset": pa.array(range(n), pa.int64()),
            "timestamp": pa.array([0] * n, pa.timestamp("ms", tz="UTC")),
            "key": key,
            "value": value,
            "value_raw": pa.array([b"v"] * n, pa.binary()),
            "_batch_id": pa.array([7] * n, pa.int64()),
        }
    )


def test_a_layout_names_only_the_prunable_leaves_of_its_stats_columns() -> None:
    from cdc.store.plan import BRONZE_LAYOUT, STATS_COLUMNS_PROPERTY, dimension_layout

    props = BRONZE_LAYOUT.table_properties(_bronze_like().schema)
    # key.blob (binary) and every payload column are left out; order follows the schema.
    assert props == {STATS_COLUMNS_PROPERTY: "topic,partition,offset,timestamp,key.id,_batch_id"}
    assert TableLayout().table_properties(_bronze_like().schema) == {}  # Delta's default
    odd = pa.schema([("a.b", pa.int64()), ("is_current", pa.bool_()), ("valid_from", pa.int64())])
    dim = dimension_layout(["a.b"]).table_properties(odd)
    assert dim == {
        "delta.enableDeletionVectors": "true",
        STATS_COLUMNS_PROPERTY: "`a.b`,valid_from",
    }
    nothing = TableLayout(stats=("value",)).table_properties(pa.schema([("value", pa.bool_())]))
    assert nothing == {}  # no eligible leaf: Delta's default, never an empty list


def test_a_delta_rs_table_keeps_the_default_stats_its_key_reads_prune_by(tmp_path: Path) -> None:
    """delta-rs takes statistics from the Parquet footer (free) and collects none for a nested
    leaf named in the property: a bronze it creates keeps them all, ``key`` included."""
    from cdc.store.plan import BRONZE_LAYOUT, STATS_COLUMNS_PROPERTY

    uri = str(tmp_path / "bronze")
    DeltaRsStore().sink(uri).append(_bronze_like(), Txn("app/b", 0), layout=BRONZE_LAYOUT)
    assert STATS_COLUMNS_PROPERTY not in DeltaTable(uri).metadata().configuration
    log = (tmp_path / "bronze" / "_delta_log" / f"{0:020d}.json").read_text().splitlines()
    stats = json.loads(next(json.loads(x)["add"]["stats"] for x in log if '"add"' in x))
    assert stats["minValues"]["key"] == {"id": 0}
    assert stats["minValues"]["value"]["name"] == "n0"


def test_a_merge_that_adds_columns_keeps_the_table_id(tmp_path: Path) -> None:
    """deltalake 1.6's MERGE with merge_schema writes a new table id; the sink adds the
    columns by an append first, so the table stays the table the checkpoint knows."""
    uri = str(tmp_path / "dim")
    sink = DeltaRsStore().sink(uri)
    upsert = MergePlan("upsert", match=("k",), clauses=(Clause("update"), Clause("insert")))
    sink.merge(rows(1, 2), upsert, Txn("app/d", 0))
    before = DeltaTable(uri).metadata().id
    wider = rows(2, 3).append_column("tier", pa.array(["a", "b"]))
    sink.merge(wider, upsert, Txn("app/d", 1))
    table = DeltaTable(uri)
    assert table.metadata().id == before
    assert sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["k"]) == [
        {"k": 1, "v": "v1", "tier": None},
        {"k": 2, "v": "v2", "tier": "a"},
        {"k": 3, "v": "v3", "tier": "b"},
    ]
    assert sink.merge(wider, upsert, Txn("app/d", 1)).skipped  # a re-run batch


def test_widening_rewrites_the_table_once_and_keeps_what_knows_it(tmp_path: Path) -> None:
    """delta-rs writes no Delta type widening: the sink rewrites the table with the wider
    types (nested in a struct too) in one commit that keeps its id, partitions, properties
    and app transactions; a second call finds nothing to widen."""
    uri = str(tmp_path / "bronze")
    row = pa.struct([("score", pa.int32()), ("amount", pa.decimal128(10, 2)), ("n", pa.string())])
    data = pa.table(
        {
            "is_current": [True, False],
            "value": pa.array(
                [{"score": 1, "amount": 1, "n": "a"}, {"score": -2, "amount": 2, "n": "b"}], row
            ),
        }
    )
    layout = TableLayout(partition_by=("is_current",), stats=("is_current",))
    sink = DeltaRsStore().sink(uri)
    sink.append(data, Txn("app/b", 3), layout=layout)
    before = DeltaTable(uri).metadata()
    wider = pa.struct(
        [("score", pa.int64()), ("amount", pa.decimal128(12, 2)), ("n", pa.large_string())]
    )
    incoming = pa.schema([("value", wider), ("extra", pa.int8())])
    widened = sink.widen(incoming)
    assert widened is not None
    assert widened.field("value").type == pa.struct(
        [("score", pa.int64()), ("amount", pa.decimal128(12, 2)), ("n", pa.string())]
    )
    table = DeltaTable(uri)
    meta = table.metadata()
    assert (meta.id, meta.partition_columns, meta.configuration) == (
        before.id,
        before.partition_columns,
        before.configuration,
    )
    assert table.transaction_version("app/b") == 3
    assert read_commit_info(table.history(1)[0]) == {"operation": "widen", "writer": "delta-rs"}
    got = sorted(table.to_pyarrow_table().to_pylist(), key=lambda r: r["value"]["score"])
    assert [r["value"]["score"] for r in got] == [-2, 1]
    assert sink.widen(incoming) is None  # wide already: nothing written
    assert DeltaTable(uri).version() == table.version()
