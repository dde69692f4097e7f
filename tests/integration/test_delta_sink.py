"""Delta sink on real tables on disk: SCD2 MERGE, fact dedup, app-transaction idempotency."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from cdc.core.scd2 import apply_scd2, empty_dimension, merge_source, touches_history
from cdc.pipeline.batch_local import fold_passes
from cdc.store.delta_rs import DeltaSink, Txn
from cdc.store.plan import DIMENSION_LAYOUT, TableLayout, facts_merge_plan, scd2_merge_plan
from tests.support.scd2_events import IDENTITY, SCHEMA, SPEC, apply_all, changes, ev, frame, to_log
from tests.support.scd2_one_pass import scd2_from_events

pytestmark = pytest.mark.integration


def _apply(sink: DeltaSink, batch: pl.DataFrame, version: int) -> None:
    keys = batch.select("contact_id").unique()
    existing = sink.read_keys(keys)
    if existing is None:
        existing = empty_dimension(SPEC, SCHEMA)
    _merge(sink, [apply_scd2(existing, batch, SPEC)], version)


def _merge(sink: DeltaSink, results: list, version: int) -> None:  # type: ignore[type-arg]
    source = pl.concat([merge_source(r) for r in results], how="vertical_relaxed")
    plan = scd2_merge_plan(["contact_id"], current_only=not touches_history(source))
    sink.merge(source.to_arrow(), plan, Txn("t:dim", version))


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
    plan = facts_merge_plan("event_id")
    sink.merge(pa.table({"event_id": ["a", "b"], "v": [1, 2]}), plan, Txn("f", 0))
    sink.merge(pa.table({"event_id": ["b", "c"], "v": [20, 3]}), plan, Txn("f", 1))
    rows = DeltaTable(str(tmp_path / "fact")).to_pyarrow_table().sort_by("event_id").to_pylist()
    assert rows == [{"event_id": "a", "v": 1}, {"event_id": "b", "v": 2}, {"event_id": "c", "v": 3}]


def _apply_with_state(
    sink: DeltaSink, orphans: DeltaSink, batch: pl.DataFrame, received: pl.DataFrame, version: int
) -> None:
    """What ``LocalBatchWriter`` does for one batch: the fold's passes (state reads, history
    for late keys), orphans, one MERGE."""

    def history(keys: pl.DataFrame) -> pl.DataFrame:
        return received.join(keys, on="contact_id", how="semi")

    passes = fold_passes(batch, SPEC, sink, orphans, history)
    found = [p.result.orphans for p in passes if p.result.orphans is not None]
    if found and pl.concat(found).height:
        orphans.append(pl.concat(found).to_arrow(), Txn("t:orphans", version))
    _merge(sink, [p.result for p in passes], version)


@pytest.mark.parametrize("seed", range(6))
def test_current_partitioned_dimension_equals_one_pass(tmp_path: Path, seed: int) -> None:
    """Out-of-order logs through real partitioned and unpartitioned tables give the one-pass
    SCD2; in-order batches never rewrite a history file."""
    rng = random.Random(seed)
    kinds = ["U"] * 6 + ["D", "T"]
    log = to_log(
        [
            {
                "contact_id": f"c{rng.randrange(6)}",
                "kind": rng.choice(kinds),
                "ts": rng.randrange(40) if rng.random() < 0.3 else 40 + i,  # 30% late
                "email": rng.choice("abc"),
                "phone": rng.choice(["1", "2", None]),
            }
            for i in range(60)
        ]
    )
    bounds = sorted({0, len(log), *rng.sample(range(1, len(log)), 7)})
    tables = {}
    for name, layout in (("current", DIMENSION_LAYOUT), ("flat", TableLayout())):
        sink = DeltaSink(str(tmp_path / name))
        sink.append(empty_dimension(SPEC, SCHEMA).to_arrow(), Txn("t:create", 0), layout=layout)
        orphans = DeltaSink(str(tmp_path / f"{name}_orphans"))
        for version, (a, b) in enumerate(itertools.pairwise(bounds)):
            _apply_with_state(sink, orphans, frame(log[a:b]), frame(log[:b]), version)
        tables[name] = _read(tmp_path / name)
    assert DeltaTable(str(tmp_path / "current")).metadata().partition_columns == ["is_current"]
    expected = scd2_from_events(frame(log), SPEC).sort(IDENTITY)
    for table in tables.values():
        assert table.sort(IDENTITY).equals(expected.select(table.columns))


def _history_files(path: Path) -> set[str]:
    files = pa.table(DeltaTable(str(path)).get_add_actions(flatten=True)).to_pylist()
    return {f["path"] for f in files if f["partition.is_current"] is False}


def test_in_order_batches_append_history_and_rewrite_only_current_rows(tmp_path: Path) -> None:
    sink = DeltaSink(str(tmp_path / "dim"))  # created by the first MERGE: DIMENSION_LAYOUT
    orphans = DeltaSink(str(tmp_path / "orphans"))
    history_files: list[set[str]] = []
    received: list[pl.DataFrame] = []
    for round_ in range(4):
        # Key s<r> keeps its round-0 version until round r: every batch closes a row that
        # opened before every history file, so statistics on _seq_open cannot prune history.
        # Keys d0, d1 are deleted in round 1 and created again later (their closed rows,
        # in history, must stay as they are).
        ts = 1000 * (round_ + 1)
        batch = changes(
            *(ev(f"c{k}", ts + k, email=f"e{round_}") for k in range(50)),
            *(ev(f"s{k}", ts + 60 + k, email=f"e{round_}") for k in range(4) if round_ in (0, k)),
            *(
                ev(f"d{k}", ts + 70 + k, op="D" if round_ == 1 else "U", email=f"e{round_}")
                for k in range(2)
                if round_ in (0, 1, 2 + k)
            ),
        )
        received.append(batch)
        _apply_with_state(sink, orphans, batch, pl.concat(received), round_)
        history_files.append(_history_files(tmp_path / "dim"))
        metrics = DeltaTable(str(tmp_path / "dim")).history(1)[0]["operationMetrics"]
        if round_:
            # Only the current partition's files are read and rewritten; history only grows.
            assert history_files[-2] < history_files[-1]
            assert metrics["num_target_files_scanned"] == metrics["num_target_files_removed"] == 1
    table = _read(tmp_path / "dim")
    assert table.height == 200 + 7 + 4 and table.filter("is_current").height == 56
