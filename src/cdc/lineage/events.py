"""OpenLineage run events, built from plain values: pure functions, no I/O.

An event names its job (namespace and name), its run (a UUID, with the parent run that
started it), its input and output datasets (:class:`Table`: a :class:`DatasetId`, its
columns, a row count, column lineage) and, for a failed run, the error. The classes are
``openlineage-python``'s (``event_v2``, ``facet_v2``), so what the emitter sends is what
the client serialises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import pyarrow as pa
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    InputDatasetFacet,
    JobFacet,
    OutputDatasetFacet,
    column_lineage_dataset,
    error_message_run,
    input_statistics_input_dataset,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
)

from cdc.lineage.naming import DatasetId

__all__ = [
    "EVENT_TYPES",
    "INTEGRATION",
    "PRODUCER",
    "Column",
    "JobRef",
    "RunRef",
    "Table",
    "columns_of",
    "run_event",
]

EventType = Literal["START", "RUNNING", "COMPLETE", "ABORT", "FAIL"]
EVENT_TYPES: tuple[EventType, ...] = ("START", "RUNNING", "COMPLETE", "ABORT", "FAIL")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


SERVICE_VERSION = _version("cdc-service")
PRODUCER = f"https://github.com/acme/cdc-service/tree/v{SERVICE_VERSION}"
"""The ``producer`` of every event and facet the service builds (a URI, as the spec asks)."""
INTEGRATION = "CDC_SERVICE"
"""The ``integration`` of the service's job-type facets (the agent's say ``SPARK``)."""


@dataclass(frozen=True)
class JobRef:
    """A job: the namespace of the service's jobs and the job's name (``stream.orders``)."""

    namespace: str
    name: str


@dataclass(frozen=True)
class RunRef:
    """A run of a job: what a child's parent facet points at."""

    run_id: str
    job: JobRef


@dataclass(frozen=True)
class Column:
    """One column of a dataset's schema facet (nested fields for a struct)."""

    name: str
    type: str
    fields: tuple[Column, ...] = ()


def _column(name: str, kind: pa.DataType) -> Column:
    if pa.types.is_struct(kind):
        return Column(name, "struct", tuple(_column(f.name, f.type) for f in kind))
    return Column(name, str(kind))


def columns_of(schema: pa.Schema) -> tuple[Column, ...]:
    """The columns of an Arrow schema (struct columns with their fields)."""
    return tuple(_column(f.name, f.type) for f in schema)


@dataclass(frozen=True)
class Table:
    """A dataset as one event sees it."""

    id: DatasetId
    columns: tuple[Column, ...] | None = None
    """Its schema (None: not known to this run)."""
    rows: int | None = None
    """Rows the run read (an input) or wrote (an output) (None: not counted)."""
    column_lineage: Mapping[str, Sequence[tuple[DatasetId, str]]] = field(default_factory=dict)
    """Of an output: each column -> the input columns it is computed from."""


def _schema_fields(columns: Iterable[Column]) -> list[schema_dataset.SchemaDatasetFacetFields]:
    return [
        schema_dataset.SchemaDatasetFacetFields(
            name=c.name,
            type=c.type,
            ordinal_position=i,
            fields=_schema_fields(c.fields) if c.fields else None,
        )
        for i, c in enumerate(columns, start=1)
    ]


def _dataset_facets(table: Table) -> dict[str, Any]:
    facets: dict[str, Any] = {}
    if table.columns is not None:
        facets["schema"] = schema_dataset.SchemaDatasetFacet(
            fields=_schema_fields(table.columns), producer=PRODUCER
        )
    if table.column_lineage:
        facets["columnLineage"] = column_lineage_dataset.ColumnLineageDatasetFacet(
            fields={
                column: column_lineage_dataset.Fields(
                    inputFields=[
                        column_lineage_dataset.InputField(
                            namespace=source.namespace, name=source.name, field=source_column
                        )
                        for source, source_column in sources
                    ]
                )
                for column, sources in sorted(table.column_lineage.items())
            },
            producer=PRODUCER,
        )
    return facets


def _input(table: Table) -> InputDataset:
    facets: dict[str, InputDatasetFacet] = {}
    if table.rows is not None:
        facets["inputStatistics"] = input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
            rowCount=table.rows, producer=PRODUCER
        )
    return InputDataset(
        namespace=table.id.namespace,
        name=table.id.name,
        facets=_dataset_facets(table),
        inputFacets=facets,
    )


def _output(table: Table) -> OutputDataset:
    facets: dict[str, OutputDatasetFacet] = {}
    if table.rows is not None:
        statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet
        facets["outputStatistics"] = statistics(rowCount=table.rows, producer=PRODUCER)
    return OutputDataset(
        namespace=table.id.namespace,
        name=table.id.name,
        facets=_dataset_facets(table),
        outputFacets=facets,
    )


def _parent(parent: RunRef, root: RunRef | None) -> parent_run.ParentRunFacet:
    top = root or parent
    return parent_run.ParentRunFacet(
        run=parent_run.Run(runId=parent.run_id),
        job=parent_run.Job(namespace=parent.job.namespace, name=parent.job.name),
        root=parent_run.Root(
            run=parent_run.RootRun(runId=top.run_id),
            job=parent_run.RootJob(namespace=top.job.namespace, name=top.job.name),
        ),
        producer=PRODUCER,
    )


def run_event(
    event_type: EventType,
    run: RunRef,
    when: datetime,
    *,
    inputs: Iterable[Table] = (),
    outputs: Iterable[Table] = (),
    parent: RunRef | None = None,
    root: RunRef | None = None,
    error: str | None = None,
    stack_trace: str | None = None,
    processing: Literal["BATCH", "STREAMING"] = "BATCH",
    job_type: str = "COMMAND",
) -> RunEvent:
    """One run event.

    Args:
        event_type: the run's transition: ``START``, ``RUNNING`` (a micro-batch of a
            streaming query), ``COMPLETE``, ``ABORT`` or ``FAIL``.
        run: the run and its job.
        when: the event's time (timezone-aware).
        inputs: the datasets the run reads.
        outputs: the datasets the run writes.
        parent: the run that started this one (a query's: the ``cdc run`` process).
        root: the top of the parent chain (default: ``parent``).
        error: a failed run's error (its ``errorMessage`` facet).
        stack_trace: the failed run's traceback, when there is one worth keeping.
        processing: ``BATCH`` (companions) or ``STREAMING`` (queries).
        job_type: the job-type facet's ``jobType``.

    Returns:
        The event, ready for :meth:`openlineage.client.OpenLineageClient.emit`.
    """
    if when.tzinfo is None:
        raise ValueError("an event time needs a timezone")
    run_facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=SERVICE_VERSION,
            name="cdc-service",
            openlineageAdapterVersion=_version("openlineage-python"),
            producer=PRODUCER,
        )
    }
    if parent is not None:
        run_facets["parent"] = _parent(parent, root)
    if error is not None:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=error, programmingLanguage="PYTHON", stackTrace=stack_trace, producer=PRODUCER
        )
    job_facets: dict[str, JobFacet] = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType=processing, integration=INTEGRATION, jobType=job_type, producer=PRODUCER
        )
    }
    return RunEvent(
        eventType=RunState[event_type],
        eventTime=when.isoformat(),
        run=Run(runId=run.run_id, facets=run_facets),
        job=Job(namespace=run.job.namespace, name=run.job.name, facets=job_facets),
        inputs=[_input(t) for t in inputs],
        outputs=[_output(t) for t in outputs],
        producer=PRODUCER,
    )
