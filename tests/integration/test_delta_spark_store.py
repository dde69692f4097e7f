"""The delta-spark writer's building blocks on the session's Spark: idempotent appends and
MERGEs, transaction confs that never outlive their write, and the late-key plan."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.batch_spark import late_keys_df
from cdc.scd2 import apply_scd2, empty_dimension, late_keys
from cdc.store.base import Txn
from cdc.store.delta_spark import TXN_APP_ID_CONF, TXN_VERSION_CONF, DeltaSparkStore
from tests.support.tables import read_table
from tests.unit.test_scd2 import SCHEMA, SPEC, changes, ev

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_append_and_merge_are_idempotent_and_leave_no_txn_conf(spark: Any, tmp_path: Path) -> None:
    store = DeltaSparkStore()
    uri = str(tmp_path / "t")
    session = spark.newSession()  # a streaming query's batches come in a session of its own
    rows = session.createDataFrame([(1, "a"), (2, "b")], "k long, v string")
    first = store.append(
        rows, uri, Txn("app/t", 0), properties={"delta.enableDeletionVectors": "true"}
    )
    assert not first.skipped
    assert store.append(rows, uri, Txn("app/t", 0)).skipped  # a re-run batch: skipped
    assert read_table(uri).height == 2

    update = session.createDataFrame([(1, "A"), (3, "c")], "k long, v string")

    def upsert(m: Any) -> Any:
        return m.whenMatchedUpdateAll().whenNotMatchedInsertAll()

    done = store.merge(update, uri, "t.k = s.k", upsert, Txn("app/t", 1))
    assert not done.skipped and done.rows == 2
    again = session.createDataFrame([(1, "WRONG")], "k long, v string")
    assert store.merge(again, uri, "t.k = s.k", upsert, Txn("app/t", 1)).skipped
    assert sorted(read_table(uri).rows()) == [(1, "A"), (2, "b"), (3, "c")]
    assert store.txn_version(uri, "app/t") == 1
    # The confs that made the MERGE idempotent are gone: a later plain write is not skipped
    # (delta-io/delta#1999), and the other sessions never saw them.
    for conf in (TXN_APP_ID_CONF, TXN_VERSION_CONF):
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
    # Delta 4.4.0 on Spark 4.2.0 names the error class without its text ("Cannot find main
    # error class"); the class is what identifies the failure.
    failed = rf"merge into {uri} failed: .*DELTA_MERGE_UNRESOLVED_EXPRESSION"
    with pytest.raises(TableWriteError, match=failed):
        store.merge(
            bad, uri, "t.no_such_column = s.k", lambda m: m.whenMatchedDelete(), Txn("x", 1)
        )
    assert session.conf.get(TXN_VERSION_CONF, None) is None


def _random_dimension(rng: random.Random) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A dimension built from random events, the next batch's changes, and orphan markers."""
    keys = [f"k{i}" for i in range(12)]
    table = empty_dimension(SPEC, SCHEMA)
    for _ in range(3):
        batch = changes(
            *(
                ev(
                    rng.choice(keys),
                    rng.randrange(100) * 10,
                    rng.choice("UUD"),
                    email=rng.choice("ab"),
                )
                for _ in range(15)
            )
        )
        result = apply_scd2(table, batch, SPEC)
        identity = ["contact_id", "_seq_open"]
        table = table.join(result.deletes, on=identity, how="anti")
        table = table.join(result.upserts.select(identity), on=identity, how="anti")
        table = pl.concat([table, result.upserts], how="vertical_relaxed")
    nxt = changes(
        *(
            ev(rng.choice(keys), rng.randrange(100) * 10, rng.choice("UUD"), email="c")
            for _ in range(10)
        )
    ).with_columns(_tombstone=pl.Series([rng.random() < 0.1 for _ in range(10)]))
    seen = pl.DataFrame(
        {"contact_id": ["k3", "k40"], "_seq_max": [nxt.get_column("_seq").max()] * 2}
    )
    return table, nxt, seen


@pytest.mark.parametrize("seed", range(4))
def test_late_keys_plan_equals_the_pure_function(spark: Any, seed: int) -> None:
    rows, nxt, seen = _random_dimension(random.Random(seed))
    expected = late_keys(rows, nxt, SPEC, seen).sort("contact_id")

    def df(frame: pl.DataFrame) -> Any:
        return spark.createDataFrame(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))

    got = late_keys_df(df(rows), df(nxt), df(seen), ["contact_id"]).toArrow()
    assert (
        sorted(pl.from_arrow(got).get_column("contact_id").to_list())
        == expected.get_column("contact_id").to_list()
    )
    assert expected.height > 0  # the data has late keys, so the comparison means something
