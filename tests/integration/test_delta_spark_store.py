"""The delta-spark store on the session's Spark: idempotent appends and MERGEs rendered from a
plan, one commit-metadata shape, and transaction confs that never outlive their write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdc.store.base import Txn
from cdc.store.delta_spark import (
    TXN_APP_ID_CONF,
    TXN_VERSION_CONF,
    USER_METADATA_CONF,
    DeltaSparkStore,
)
from cdc.store.plan import Clause, MergePlan, TableLayout, read_commit_info
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_append_and_merge_are_idempotent_and_leave_no_txn_conf(spark: Any, tmp_path: Path) -> None:
    store = DeltaSparkStore()
    uri = str(tmp_path / "t")
    session = spark.newSession()  # a streaming query's batches come in a session of its own
    rows = session.createDataFrame([(1, "a"), (2, "b")], "k long, v string")
    layout = TableLayout(properties={"delta.enableDeletionVectors": "true"})
    first = store.append(rows, uri, Txn("app/t", 0), layout=layout)
    assert not first.skipped
    assert store.append(rows, uri, Txn("app/t", 0)).skipped  # a re-run batch: skipped
    assert read_table(uri).height == 2

    update = session.createDataFrame([(1, "A"), (3, "c")], "k long, v string")

    upsert = MergePlan("upsert", match=("k",), clauses=(Clause("update"), Clause("insert")))
    done = store.merge(update, uri, upsert, Txn("app/t", 1))
    assert not done.skipped and done.rows == 2
    again = session.createDataFrame([(1, "WRONG")], "k long, v string")
    assert store.merge(again, uri, upsert, Txn("app/t", 1)).skipped
    assert sorted(read_table(uri).rows()) == [(1, "A"), (2, "b"), (3, "c")]
    assert store.txn_version(uri, "app/t") == 1
    handle = store.handle(uri)
    assert handle is not None
    commits = [read_commit_info(c) for c in handle.history()]
    assert commits[:2] == [
        {"operation": "upsert-merge", "writer": "delta-spark", "app_id": "app/t", "version": 1},
        {"operation": "append", "writer": "delta-spark", "app_id": "app/t", "version": 0},
    ]
    # The confs that made the MERGE idempotent are gone: a later plain write is not skipped
    # (delta-io/delta#1999), and the other sessions never saw them.
    for conf in (TXN_APP_ID_CONF, TXN_VERSION_CONF, USER_METADATA_CONF):
        assert session.conf.get(conf, None) is None
        assert spark.conf.get(conf, None) is None
    later = session.createDataFrame([(4, "d")], "k long, v string")
    later.write.format("delta").mode("append").save(uri)
    assert read_table(uri).height == 4
    info = store.info(uri)
    assert info is not None and info.rows == 4


def test_a_failed_merge_also_removes_its_txn_conf(spark: Any, tmp_path: Path) -> None:
    from cdc.errors import TableWriteError

    store = DeltaSparkStore()
    uri = str(tmp_path / "t")
    session = spark.newSession()
    store.append(session.createDataFrame([(1, "a")], "k long, v string"), uri, Txn("x", 0))
    bad = session.createDataFrame([(1, "a")], "k long, v string")
    # Delta 4.4.0 on Spark 4.2.0 cannot build this error ("Cannot find main error class"):
    # the line names Delta's condition and its message template instead.
    failed = (
        rf"^merge into {uri} failed: DELTA_MERGE_UNRESOLVED_EXPRESSION: Cannot resolve <sqlExpr>"
        r" in <clause> given columns <cols>\.$"
    )
    plan = MergePlan("bad", match=("no_such_column",), clauses=(Clause("delete"),))
    with pytest.raises(TableWriteError, match=failed) as raised:
        store.merge(bad, uri, plan, Txn("x", 1))
    assert "Cannot find main error class" not in str(raised.value)
    assert session.conf.get(TXN_VERSION_CONF, None) is None


def test_a_table_created_by_a_layout_collects_only_its_stats_columns(
    spark: Any, tmp_path: Path
) -> None:
    """Bronze on delta-spark: statistics on the Kafka coordinates, the batch and the key's
    prunable leaves; none on the payload (a pass over every value of every write)."""
    from cdc.store.plan import BRONZE_LAYOUT, STATS_COLUMNS_PROPERTY

    uri = str(tmp_path / "bronze")
    rows = spark.createDataFrame(
        [("t", 0, 5, (1, b"x"), ("a", True), 9), ("t", 1, 6, (2, b"y"), ("b", False), 9)],
        "topic string, partition int, offset long, key struct<id: long, blob: binary>,"
        " value struct<name: string, flag: boolean>, _batch_id long",
    )
    DeltaSparkStore().append(rows, uri, Txn("app/b", 0), layout=BRONZE_LAYOUT)
    handle = DeltaSparkStore().handle(uri)
    assert handle is not None
    assert handle.metadata().configuration[STATS_COLUMNS_PROPERTY] == (
        "topic,partition,offset,key.id,_batch_id"
    )
    log = (tmp_path / "bronze" / "_delta_log" / f"{0:020d}.json").read_text().splitlines()
    adds = [json.loads(json.loads(x)["add"]["stats"]) for x in log if '"add"' in x]
    assert adds and all(
        set(s["minValues"]) == {"topic", "partition", "offset", "key", "_batch_id"} for s in adds
    )
    assert all(set(s["minValues"]["key"]) == {"id"} for s in adds)
    assert sum(s["numRecords"] for s in adds) == 2
