"""Runs and their events: a run emits START, then RUNNING (a micro-batch), then one of
COMPLETE, FAIL (with the error) or ABORT (interrupted).

:class:`Lineage` is one process's lineage (the emitter, the jobs' namespace, the clock);
:meth:`Lineage.run` makes a :class:`LineageRun`. :data:`NO_RUN` stands for a run when
lineage is off, so callers never test for it. :func:`companion_run` wraps one companion
command (``cdc maintain``, ``dr``, ``gold build``, ``publish``, ``sla check``) in its run,
with the Spark agent attached when the command runs Spark.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from cdc.config.settings import Settings
from cdc.errors import CdcError, first_line
from cdc.lineage.emitter import Emitter
from cdc.lineage.events import EventType, JobRef, RunRef, Table, run_event
from cdc.lineage.naming import DatasetId
from cdc.lineage.spark_agent import attached_agent
from cdc.runtime.logs import redact

# openlineage is imported when a run id is made (lineage on): most runs have it off.

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "NO_RUN",
    "Lineage",
    "LineageRun",
    "RunHandle",
    "companion_run",
    "ended_by_outcome",
    "error_of",
    "open_lineage",
    "opened_lineage",
]

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _new_run_id() -> str:
    from openlineage.client.uuid import generate_new_uuid

    return str(generate_new_uuid())


class RunHandle:
    """What a command reports to its run; does nothing (lineage off: :data:`NO_RUN`)."""

    ref: RunRef | None = None

    def start(self) -> None:
        """Emit START."""

    def running(self, inputs: Iterable[Table] = (), outputs: Iterable[Table] = ()) -> None:
        """Emit RUNNING with what this step read and wrote (a micro-batch)."""

    def count(self, rows: Mapping[DatasetId, int]) -> None:
        """Rows the run read or wrote per dataset, for its COMPLETE event."""

    def add(self, inputs: Iterable[Table] = (), outputs: Iterable[Table] = ()) -> None:
        """Datasets found while running (a DR snapshot's tables), for the later events."""

    def complete(self) -> None:
        """Emit COMPLETE."""

    def fail(self, error: str, stack_trace: str | None = None) -> None:
        """Emit FAIL with the error."""

    def abort(self) -> None:
        """Emit ABORT (the run was interrupted)."""

    def failed(self, exc: BaseException) -> None:
        """Emit FAIL for the exception that ended the run (:func:`error_of`)."""
        self.fail(*error_of(exc))


NO_RUN = RunHandle()


class LineageRun(RunHandle):
    """One run of a job, its datasets and its events (each terminal event once)."""

    def __init__(
        self,
        lineage: Lineage,
        job: JobRef,
        *,
        inputs: Iterable[Table] = (),
        outputs: Iterable[Table] = (),
        parent: RunRef | None = None,
        root: RunRef | None = None,
        processing: Literal["BATCH", "STREAMING"] = "BATCH",
        job_type: str = "COMMAND",
    ) -> None:
        self.lineage = lineage
        self.ref = RunRef(lineage.new_run_id(), job)
        self.inputs = {t.id: t for t in inputs}
        self.outputs = {t.id: t for t in outputs}
        self.parent, self.root = parent, root
        self.processing, self.job_type = processing, job_type
        self.ended = False

    def _emit(
        self,
        event_type: EventType,
        inputs: Iterable[Table],
        outputs: Iterable[Table],
        error: str | None = None,
        stack_trace: str | None = None,
    ) -> None:
        assert self.ref is not None
        try:
            event = run_event(
                event_type,
                self.ref,
                self.lineage.clock(),
                inputs=inputs,
                outputs=outputs,
                parent=self.parent,
                root=self.root,
                error=error,
                stack_trace=stack_trace,
                processing=self.processing,
                job_type=self.job_type,
            )
        except Exception as exc:  # a bug here must not stop the run it describes
            log.warning("lineage: cannot build the %s event of %s: %s", event_type, self.ref, exc)
            return
        self.lineage.emitter.emit(event)

    def start(self) -> None:
        self._emit("START", self.inputs.values(), self.outputs.values())

    def running(self, inputs: Iterable[Table] = (), outputs: Iterable[Table] = ()) -> None:
        self._emit("RUNNING", inputs, outputs)

    def count(self, rows: Mapping[DatasetId, int]) -> None:
        for side in (self.inputs, self.outputs):
            for dataset, n in rows.items():
                if dataset in side:
                    side[dataset] = replace(side[dataset], rows=n)

    def add(self, inputs: Iterable[Table] = (), outputs: Iterable[Table] = ()) -> None:
        for side, tables in ((self.inputs, inputs), (self.outputs, outputs)):
            for table in tables:
                side[table.id] = table

    def _end(
        self, event_type: EventType, error: str | None = None, trace: str | None = None
    ) -> None:
        if self.ended:
            return
        self.ended = True
        self._emit(event_type, self.inputs.values(), self.outputs.values(), error, trace)

    def complete(self) -> None:
        self._end("COMPLETE")

    def fail(self, error: str, stack_trace: str | None = None) -> None:
        self._end("FAIL", error, stack_trace)

    def abort(self) -> None:
        self._end("ABORT")


class Lineage:
    """One process's lineage: where events go and how runs are named."""

    def __init__(
        self,
        settings: Settings,
        emitter: Emitter,
        *,
        clock: Callable[[], datetime] = _now,
        new_run_id: Callable[[], str] = _new_run_id,
    ) -> None:
        self.settings = settings
        self.emitter = emitter
        self.namespace = settings.lineage.job_namespace(settings.env)
        self.clock = clock
        self.new_run_id = new_run_id

    def job(self, name: str) -> JobRef:
        """The service's job ``name`` (``gold.build``, ``stream.orders``)."""
        return JobRef(self.namespace, name)

    def run(self, job: str, **kwargs: Any) -> LineageRun:
        """A new run of ``job`` (see :class:`LineageRun` for the keyword arguments)."""
        return LineageRun(self, self.job(job), **kwargs)

    def close(self) -> None:
        """Send what is queued (at most ``lineage.close_timeout_s``) and stop."""
        self.emitter.close(self.settings.lineage.close_timeout_s)


def open_lineage(settings: Settings, registry: CollectorRegistry | None = None) -> Lineage | None:
    """The process's lineage, or None when ``lineage.enabled`` is off.

    Args:
        settings: the service settings (``lineage:``).
        registry: where the emitter's counter goes (``cdc run``: the service's metrics).

    Raises:
        ConfigError: the transport's settings are missing or malformed.
    """
    if not settings.lineage.enabled:
        return None
    return Lineage(settings, Emitter.from_settings(settings, registry))


@contextmanager
def opened_lineage(
    settings: Settings, registry: CollectorRegistry | None = None
) -> Iterator[Lineage | None]:
    """:func:`open_lineage` for the block, closed (queued events sent) at its end."""
    lineage = open_lineage(settings, registry)
    try:
        yield lineage
    finally:
        if lineage is not None:
            lineage.close()


def error_of(exc: BaseException) -> tuple[str, str | None]:
    """A failed run's error line (``Name: message``) and, for a bug, its traceback; both
    cleaned of the configured secrets (:func:`cdc.runtime.logs.redact`), like every output."""
    line = first_line(exc) or type(exc).__name__
    message = redact(f"{type(exc).__name__}: {line}")
    if isinstance(exc, CdcError):  # a one-line error on purpose: no traceback needed
        return message, None
    return message, redact("".join(traceback.format_exception(exc)))


@contextmanager
def ended_by_outcome(run: RunHandle) -> Iterator[RunHandle]:
    """Emit the run's terminal event by how the block ends: COMPLETE, FAIL or ABORT."""
    try:
        yield run
    except KeyboardInterrupt:
        run.abort()
        raise
    except BaseException as exc:
        run.failed(exc)
        raise
    run.complete()


@contextmanager
def companion_run(
    settings: Settings,
    job: str,
    inputs: Iterable[Table] = (),
    outputs: Iterable[Table] = (),
    *,
    spark: Any = None,
    registry: CollectorRegistry | None = None,
) -> Iterator[RunHandle]:
    """Run a companion command inside its lineage run.

    START is emitted on entry with ``inputs`` and ``outputs``; the block reports row counts
    and more datasets through the handle; COMPLETE, FAIL (the error) or ABORT on exit. With
    ``spark``, the OpenLineage Spark agent reports the command's Spark jobs as children of
    the run. With lineage off, the handle does nothing. ``registry``: where the emitter's
    counter goes (default: a registry of its own).

    Raises:
        ConfigError: lineage is on and its transport's settings are malformed.
    """
    with opened_lineage(settings, registry) as lineage:
        if lineage is None:
            yield NO_RUN
            return
        run = lineage.run(job, inputs=inputs, outputs=outputs)
        run.start()

        with attached_agent(spark, settings, run.ref), ended_by_outcome(run):
            yield run
