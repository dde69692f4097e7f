"""The after-batch invariant check: what a writer does with the report of a batch's keys.

After each batch, a writer checks the rows the batch's keys hold once merged, from the rows
its fold was given and wrote (:func:`cdc.core.scd2.post_merge_rows`; no second read of the
table; on delta-spark inside the fold's tasks, only counts and a few examples coming back),
with the pure checks of :mod:`cdc.core.invariants`, and hands the result to
:func:`record_batch_check`: one warning line naming the kinds and example keys, counted in the
batch's stats (and so in the metrics). The data is committed either way; the query goes on.
``cdc verify`` (:mod:`cdc.ops.verify`) runs the same checks on whole tables on demand.
"""

from __future__ import annotations

import logging
import time

from cdc.config.settings import PipelineSettings, Settings
from cdc.core.invariants import FACT_KINDS, SCD2_KINDS, CheckReport
from cdc.core.sequence import SequenceCheck
from cdc.pipeline.batch import BatchStats

__all__ = ["BATCH_EXAMPLES", "in_kind_order", "record_batch_check", "valid_time_bounds"]

log = logging.getLogger(__name__)

BATCH_EXAMPLES = 3
"""Keys the warning of a batch names per kind."""


def valid_time_bounds(
    settings: Settings, pipeline: PipelineSettings, now_ms: int | None = None
) -> tuple[int, int] | None:
    """The valid times a pipeline's dimension may hold now: its accepted source times.

    Args:
        settings: service settings (``defaults.source_time_window``).
        pipeline: the pipeline (its own ``source_time_window``).
        now_ms: the clock (epoch ms; None: now).

    Returns:
        ``(earliest, latest)`` in epoch ms, or None for a pipeline without a sequence.
    """
    check = SequenceCheck.of(settings, pipeline)
    if check is None:
        return None
    return check.window.bounds(int(time.time() * 1000) if now_ms is None else now_ms)


def in_kind_order(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` with the kinds in the order :mod:`cdc.core.invariants` lists them."""
    order = (*SCD2_KINDS, *FACT_KINDS)
    return {kind: counts[kind] for kind in order if kind in counts}


def record_batch_check(pipeline: str, stats: BatchStats, report: CheckReport, writer: str) -> None:
    """Count a batch's check in its stats; warn in one line when it found violations."""
    stats.invariant_violations = dict(report.counts)
    if not report.total:
        return
    log.warning(
        "pipeline %s batch %d: %d SCD2 invariant violation(s) in the keys it touched: %s"
        " (the batch is committed; list them with `cdc verify --pipeline %s`)",
        pipeline,
        stats.batch_id,
        report.total,
        report.summary(),
        pipeline,
        extra={
            "pipeline": pipeline,
            "batch_id": stats.batch_id,
            "writer": writer,
            "counts": dict(report.counts),
        },
    )
