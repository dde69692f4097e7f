"""The delta-rs writer's SCD2 path with its tables in memory: no Delta, no files.

:class:`MemoryTable` answers what :func:`cdc.pipeline.batch_local.fold_passes` asks a table
(``partition_columns``, ``read_keys``) and applies a :class:`cdc.store.plan.MergePlan` the way
the stores render it: a source row matches the target row equal on the plan's ``match``
columns (null-safe), its ``match_source`` columns and its ``prune`` literals; the clauses
delete, update or insert; a source row that matches more than one row is an error, as in
Delta. So a fold result that names the wrong partition of a row (``_cdc_was_current``), or
keeps the MERGE to the current partition while it rewrites history, shows as a duplicate
version rather than passing unseen.

:func:`fold_and_merge` is one batch of :class:`cdc.pipeline.batch_local.LocalBatchWriter`: the fold
in passes, the orphan markers appended, one MERGE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from cdc.core.scd2 import ACTION_COLUMN, FoldPass, Scd2Spec, merge_source, touches_history
from cdc.pipeline.batch_local import fold_passes
from cdc.store.plan import MergePlan, scd2_merge_plan

__all__ = ["MemoryTable", "fold_and_merge"]

_ROW_ID, _SOURCE_ID = "__row", "__source"


class MemoryTable:
    """One table, as a Polars frame; None until its first write creates it."""

    def __init__(self, partition_by: Sequence[str] = ()) -> None:
        self.rows: pl.DataFrame | None = None
        self._partition_by = list(partition_by)

    def partition_columns(self) -> list[str]:
        """The table's partition columns (none while it does not exist)."""
        return list(self._partition_by) if self.rows is not None else []

    def read_keys(self, keys: pl.DataFrame, current: bool | None = None) -> pl.DataFrame | None:
        """Rows of the keys in ``keys`` (only those with ``is_current == current`` if given)."""
        if self.rows is None:
            return None
        found = self.rows.join(keys.unique(), on=keys.columns, how="semi", nulls_equal=True)
        return found if current is None else found.filter(pl.col("is_current") == current)

    def append(self, rows: pl.DataFrame) -> None:
        """Append rows (the schema may gain columns)."""
        self.rows = rows if self.rows is None else pl.concat([self.rows, rows], how="diagonal")

    def merge(self, source: pl.DataFrame, plan: MergePlan) -> None:
        """Apply one MERGE of ``source`` as ``plan`` says."""
        written = [c for c in source.columns if c not in plan.source_only]
        if self.rows is None:  # the first write creates the table with what it inserts
            inserted = plan.inserted()
            new = source if inserted is None else source.filter(pl.col(ACTION_COLUMN) == inserted)
            self.rows = new.select(written)
            return
        target = self.rows.with_row_index(_ROW_ID)
        src = source.with_row_index(_SOURCE_ID)
        pairs = target.join(
            src.select(_SOURCE_ID, *plan.match, *plan.match_source.values()).rename(
                {s: f"{s}__s" for s in plan.match_source.values()}
            ),
            on=list(plan.match),
            how="inner",
            nulls_equal=True,
        )
        for t, s in plan.match_source.items():
            pairs = pairs.filter(pl.col(t) == pl.col(f"{s}__s"))
        for c, v in plan.prune.items():
            pairs = pairs.filter(pl.col(c) == v)
        pairs = pairs.select(_ROW_ID, _SOURCE_ID)
        if pairs.get_column(_SOURCE_ID).is_duplicated().any():
            raise AssertionError("MERGE: a source row matches more than one target row")
        if pairs.get_column(_ROW_ID).is_duplicated().any():
            raise AssertionError("MERGE: a target row is matched by more than one source row")
        matched = src.join(pairs, on=_SOURCE_ID, how="left")
        drop: set[int] = set()
        new_rows: list[pl.DataFrame] = []
        for clause in plan.clauses:
            hit = pl.col(_ROW_ID).is_not_null()
            wanted = ~hit if clause.kind == "insert" else hit
            if clause.action is not None:
                wanted = wanted & (pl.col(ACTION_COLUMN) == clause.action)
            chosen = matched.filter(wanted)
            matched = matched.join(chosen.select(_SOURCE_ID), on=_SOURCE_ID, how="anti")
            if clause.kind in ("delete", "update"):
                drop.update(chosen.get_column(_ROW_ID).to_list())
            if clause.kind in ("update", "insert"):
                new_rows.append(chosen.select(written))
        kept = target.filter(~pl.col(_ROW_ID).is_in(list(drop))).drop(_ROW_ID)
        self.rows = pl.concat([kept, *new_rows], how="diagonal_relaxed")


def fold_and_merge(
    changes: pl.DataFrame,
    spec: Scd2Spec,
    silver: MemoryTable,
    orphans: MemoryTable,
    history: Callable[[pl.DataFrame], pl.DataFrame | None],
) -> list[FoldPass]:
    """One SCD2 batch as the delta-rs writer runs it (``LocalBatchWriter._scd2``): the fold
    in passes (:func:`cdc.pipeline.batch_local.fold_passes`), orphan markers appended, one MERGE.

    Args:
        changes: the batch's change events.
        spec: the dimension's spec.
        silver: the dimension (created partitioned by ``is_current``, as the writers do).
        orphans: the orphan markers.
        history: every event received for some keys (bronze, which already holds the batch).
    """
    any_sink: Any = silver  # duck-typed: what fold_passes reads of a DeltaSink
    any_orphans: Any = orphans
    passes = fold_passes(changes, spec, any_sink, any_orphans, history)
    found = [fp.result.orphans for fp in passes if fp.result.orphans is not None]
    if found and (markers := pl.concat(found, how="vertical_relaxed")).height:
        orphans.append(markers)
    source = pl.concat([merge_source(fp.result) for fp in passes], how="vertical_relaxed")
    if source.height:
        plan = scd2_merge_plan(spec.keys, current_only=not touches_history(source))
        silver.merge(source, plan)
    return passes
