"""Where a pipeline's tables live, and the app-transaction id its writes to each carry."""

from __future__ import annotations

from pathlib import Path

from cdc.config.settings import PipelineSettings, Settings

__all__ = ["orphans_path", "pipeline_tables", "table_paths", "txn_app_id"]


def txn_app_id(pipeline: str, role: str, table_uri: str) -> str:
    """The app-transaction id of one pipeline's writes to one table."""
    return f"cdc/{pipeline}/{role}/{Path(table_uri).name}"


def table_paths(settings: Settings, pipeline: PipelineSettings) -> dict[str, str]:
    """Delta table URIs of a pipeline: bronze, quarantine and silver."""
    topic_dir = pipeline.topic.replace(".", "_")
    return {
        "bronze": settings.lake.path("bronze", topic_dir),
        "quarantine": settings.lake.path("quarantine", topic_dir),
        "silver": settings.lake.path("silver", pipeline.target),
    }


def orphans_path(settings: Settings, pipeline: PipelineSettings) -> str:
    """Side table of an SCD2 pipeline: keys with no row yet whose deletes were seen."""
    return settings.lake.path("silver", f"_orphans_{pipeline.target}")


def pipeline_tables(settings: Settings, pipeline: PipelineSettings) -> dict[str, str]:
    """Every table a pipeline writes, by role: bronze, quarantine, silver and (SCD2) orphans."""
    tables = table_paths(settings, pipeline)
    if pipeline.kind == "scd2":
        tables["orphans"] = orphans_path(settings, pipeline)
    return tables
