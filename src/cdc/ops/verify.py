"""The invariants of :mod:`cdc.core.invariants` on committed tables: after each batch, and on
demand (``cdc verify``).

* After each batch, a writer checks the rows the batch's keys hold once merged
  (:mod:`cdc.pipeline.batch_check`): one warning line naming the kinds and example keys,
  counted in the batch's stats. The data is committed either way; the query goes on.
* ``cdc verify`` (:func:`verify`) checks whole silver tables: every SCD2 dimension of the
  selected pipelines (valid times against the pipeline's accepted source times too), and
  facts tables for repeated event ids. Tables are read through
  :class:`cdc.store.DeltaRsStore` (deletion vectors honoured, whichever writer wrote them),
  only the columns the checks need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from cdc.config.lake import table_paths
from cdc.config.settings import PipelineSettings, Settings
from cdc.core.invariants import (
    CheckReport,
    check_facts,
    check_scd2,
    summarize,
)
from cdc.errors import CdcError, ConfigError
from cdc.pipeline.batch_check import valid_time_bounds
from cdc.store import DeltaRsStore

__all__ = [
    "MAX_LISTED",
    "InvariantCheckError",
    "TableCheck",
    "verify",
]

log = logging.getLogger(__name__)

MAX_LISTED = 10
"""Violations ``cdc verify`` lists per kind and table (the rest are counted)."""

_SCD2_READ = ("valid_from", "valid_to", "is_current", "_seq_open", "_seq_close", "_seq_max")


class InvariantCheckError(CdcError):
    """A table cannot be checked (it lacks the columns its kind of table has)."""


# -------------------------------------------------------------------------------- cdc verify


@dataclass(frozen=True)
class TableCheck:
    """``cdc verify``'s finding on one silver table.

    Attributes:
        table: ``silver/<target>``.
        pipeline: the pipeline that writes it.
        kind: ``scd2`` or ``facts``.
        report: violations per kind with up to :data:`MAX_LISTED` of each; None when the
            table does not exist yet.
        seconds: time to read and check it.
    """

    table: str
    pipeline: str
    kind: str
    report: CheckReport | None
    seconds: float

    @property
    def sound(self) -> bool:
        """No violation (a table not created yet is sound)."""
        return self.report is None or self.report.total == 0

    def lines(self) -> list[str]:
        """The table's line, then one line per listed violation and per unlisted rest."""
        report = self.report
        if report is None:
            return [f"{self.table}: no table yet"]
        unit = "keys" if self.kind == "scd2" else "event ids"
        plural = "" if report.total == 1 else "s"
        head = (
            f"{self.table}: {report.rows:,} rows, {report.keys:,} {unit},"
            f" {report.total:,} violation{plural}"
        )
        if not report.total:
            return [f"{head}: sound ({self.seconds:.2f}s)"]
        counts = ", ".join(f"{kind} {n:,}" for kind, n in report.counts.items())
        out = [f"{head}: {counts} ({self.seconds:.2f}s)"]
        for kind, count in report.counts.items():
            listed = report.examples.get(kind, [])
            out += [f"  {v.line()}" for v in listed]
            if count > len(listed):
                out.append(f"  ... and {count - len(listed):,} more {kind}")
        return out

    def to_json(self) -> dict[str, Any]:
        """The finding as JSON-ready data (``cdc verify --json``)."""
        report = self.report
        return {
            "table": self.table,
            "pipeline": self.pipeline,
            "kind": self.kind,
            "exists": report is not None,
            "rows": None if report is None else report.rows,
            "keys": None if report is None else report.keys,
            "violations": 0 if report is None else report.total,
            "counts": {} if report is None else dict(report.counts),
            "listed": []
            if report is None
            else [v.to_json() for kind in report.counts for v in report.examples.get(kind, [])],
            "seconds": round(self.seconds, 3),
        }


def _selection(
    settings: Settings, tables: Sequence[str], pipeline: str | None
) -> list[tuple[str, PipelineSettings]]:
    """The pipelines whose silver table to check, in config order."""
    chosen = settings.selected(pipeline)
    if not tables:
        return list(chosen.items())
    names = {f"silver/{p.target}": name for name, p in chosen.items()}
    picked: list[str] = []
    for table in tables:
        name = names.get(table) or names.get(f"silver/{table}")
        if name is None:
            scope = f" of pipeline {pipeline}" if pipeline else ""
            valid = ", ".join(sorted(names)) or "(none)"
            raise ConfigError(f"--table {table!r} names no silver table{scope}; tables: {valid}")
        if name not in picked:
            picked.append(name)
    return [(name, p) for name, p in chosen.items() if name in picked]


def verify(
    settings: Settings,
    tables: Sequence[str] = (),
    pipeline: str | None = None,
    now_ms: int | None = None,
) -> list[TableCheck]:
    """Check whole silver tables: SCD2 invariants, and repeated event ids in facts.

    Args:
        settings: service settings (the lake and its storage options).
        tables: ``silver/<target>`` (or ``<target>``) names; none: every selected table.
        pipeline: only this pipeline's table (None: every enabled pipeline's).
        now_ms: the clock for the accepted source times (epoch ms; None: now).

    Returns:
        One finding per table, in config order.

    Raises:
        ConfigError: a table or pipeline name is unknown (the message lists the valid ones).
        TableReadError: a table's log cannot be read.
        InvariantCheckError: a table lacks the columns its pipeline's kind of table has.
    """
    store = DeltaRsStore(settings.lake.resolved_storage_options())
    return [
        _verify_table(store, settings, name, p, now_ms)
        for name, p in _selection(settings, tables, pipeline)
    ]


def _verify_table(
    store: DeltaRsStore,
    settings: Settings,
    name: str,
    pipeline: PipelineSettings,
    now_ms: int | None,
) -> TableCheck:
    started = time.perf_counter()
    uri = table_paths(settings, pipeline)["silver"]
    table = f"silver/{pipeline.target}"
    present = store.columns(uri)
    if not present:
        return TableCheck(table, name, pipeline.kind, None, time.perf_counter() - started)
    if pipeline.kind == "scd2":
        wanted = [*pipeline.keys, *_SCD2_READ]
    else:
        assert pipeline.event_id is not None
        wanted = [pipeline.event_id]
    selected = ", ".join(_quoted(c) for c in wanted if c in present)
    frame = pl.from_arrow(store.query(uri, f"SELECT {selected} FROM t"))
    assert isinstance(frame, pl.DataFrame)
    try:
        if pipeline.kind == "scd2":
            bounds = valid_time_bounds(settings, pipeline, now_ms)
            found = check_scd2(frame, pipeline.keys, bounds)
            keys = frame.select(list(pipeline.keys)).n_unique() if frame.height else 0
        else:
            assert pipeline.event_id is not None
            found = check_facts(frame, pipeline.event_id)
            keys = frame.get_column(pipeline.event_id).n_unique()
    except ValueError as exc:
        raise InvariantCheckError(f"{table} ({uri}): {exc}") from None
    report = summarize(found, MAX_LISTED, rows=frame.height, keys=keys)
    return TableCheck(table, name, pipeline.kind, report, time.perf_counter() - started)


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'
