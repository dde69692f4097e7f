"""Delta sink on real tables on disk: SCD2 MERGE, fact dedup, app-transaction idempotency."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from cdc.scd2 import apply_scd2, empty_dimension
from cdc.sinks.delta import DeltaSink, Txn
from tests.unit.test_scd2 import SCHEMA, SPEC, apply_all, changes, ev


def _apply(sink: DeltaSink, batch: pl.DataFrame, version: int) -> None:
    keys = batch.select("contact_id").unique()
    existing = sink.read_keys(keys)
    if existing is None:
        existing = empty_dimension(SPEC, SCHEMA)
    sink.merge_scd2(apply_scd2(existing, batch, SPEC), ["contact_id"], Txn("t:dim", version))


def _read(path: Path) -> pl.DataFrame:
    df = pl.from_arrow(DeltaTable(str(path)).to_pyarrow_table())
    assert isinstance(df, pl.DataFrame)
    return df.sort(["contact_id", "_seq_open"])


def test_scd2_merge_matches_pure_function(tmp_path: Path) -> None:
    batches = [
        changes(ev("c1", 1000, email="a"), ev("c2", 1000, email="q")),
        changes(ev("c1", 2000, email="a", phone="9"), ev("c2", 2500, op="D")),
        changes(ev("c1", 3000, email="b"), ev("c2", 4000, email="r")),
        changes(ev("c1", 2500, email="z")),  # late
    ]
    sink = DeltaSink(str(tmp_path / "dim"))
    for version, batch in enumerate(batches):
        _apply(sink, batch, version)
    assert _read(tmp_path / "dim").equals(
        apply_all(*batches).select(_read(tmp_path / "dim").columns)
    )


def test_replayed_batch_version_is_skipped(tmp_path: Path) -> None:
    sink = DeltaSink(str(tmp_path / "dim"))
    _apply(sink, changes(ev("c1", 1000, email="a")), 0)
    before = DeltaTable(str(tmp_path / "dim")).version()
    # Same batch id again, even with different content, must not be applied twice.
    _apply(sink, changes(ev("c1", 2000, email="b")), 0)
    assert DeltaTable(str(tmp_path / "dim")).version() == before
    assert DeltaTable(str(tmp_path / "dim")).transaction_version("t:dim") == 0


def test_append_is_idempotent_per_version(tmp_path: Path) -> None:
    sink = DeltaSink(str(tmp_path / "bronze"))
    data = pa.table({"x": [1, 2, 3]})
    assert not sink.append(data, Txn("p:bronze", 7)).skipped
    assert sink.append(data, Txn("p:bronze", 7)).skipped
    assert sink.append(data, Txn("p:bronze", 6)).skipped
    assert DeltaTable(str(tmp_path / "bronze")).to_pyarrow_table().num_rows == 3


def test_facts_insert_only_new_event_ids(tmp_path: Path) -> None:
    sink = DeltaSink(str(tmp_path / "fact"))
    sink.insert_new(pl.DataFrame({"event_id": ["a", "b"], "v": [1, 2]}), "event_id", Txn("f", 0))
    sink.insert_new(pl.DataFrame({"event_id": ["b", "c"], "v": [20, 3]}), "event_id", Txn("f", 1))
    rows = DeltaTable(str(tmp_path / "fact")).to_pyarrow_table().sort_by("event_id").to_pylist()
    assert rows == [{"event_id": "a", "v": 1}, {"event_id": "b", "v": 2}, {"event_id": "c", "v": 3}]
