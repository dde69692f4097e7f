"""What a pipeline's bronze and quarantine already hold, record by record.

Every bronze and quarantine row carries its Kafka coordinates and the id of the topic
incarnation it was read from (:data:`cdc.core.ranges.TOPIC_ID_COLUMN`). "Already landed" is decided
from these rows, never from a checkpoint: a checkpoint can be deleted, truncated or belong to a
topic that was since recreated, the tables' rows cannot lie about what they hold.

What landed is kept as :data:`cdc.core.ranges.Ranges`: per partition, the sorted, disjoint,
half-open offset ranges present in bronze or quarantine for one topic id. A record lands in exactly
one of the two tables, so their union says whether it landed at all; the ranges of an unbroken
stream collapse to one range per partition.

:func:`landed_ranges` reads them from the tables (two columns of each, through the store;
:func:`query_landed` runs other queries over the same rows); the arithmetic on the ranges
is pure, in :mod:`cdc.core.ranges`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from cdc.config.lake import table_paths
from cdc.config.settings import Settings
from cdc.core.ranges import TOPIC_ID_COLUMN, Ranges, merge_ranges
from cdc.store import store_for

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["landed_ranges", "query_landed"]

_ISLANDS = """
SELECT "partition" AS p, min("offset") AS lo, max("offset") + 1 AS hi
FROM (
  SELECT "partition", "offset",
         "offset" - row_number() OVER (PARTITION BY "partition" ORDER BY "offset") AS island
  FROM (SELECT DISTINCT "partition", "offset" FROM t WHERE {where}) AS rows_
) AS numbered
GROUP BY "partition", island
"""


def landed_ranges(
    settings: Settings, name: str, topic_id: str | None, *, legacy_rows: bool
) -> Ranges:
    """The offsets of the pipeline's topic that bronze or quarantine hold, for one topic id.

    Args:
        settings: service settings.
        name: the pipeline.
        topic_id: the topic incarnation (None: the topic is gone; only legacy rows count).
        legacy_rows: count rows with no topic id (written before the column existed) as this
            incarnation's; right unless the topic was recreated since they were written.

    Returns:
        The landed ranges (a partition with no row is absent).
    """
    spans = [
        (int(r["p"]), int(r["lo"]), int(r["hi"]))
        for rows in query_landed(settings, name, topic_id, _ISLANDS, legacy_rows=legacy_rows)
        for r in rows.to_pylist()
    ]
    return merge_ranges(spans)


def query_landed(
    settings: Settings,
    name: str,
    topic_id: str | None,
    sql: str,
    *,
    legacy_rows: bool,
    needs: Iterable[str] = (),
) -> list[pa.Table]:
    """Run ``sql`` over bronze and over quarantine, restricted to one topic id's rows.

    Args:
        settings: service settings.
        name: the pipeline.
        topic_id: the topic incarnation (as :func:`landed_ranges`).
        sql: a query over the table ``t`` with a ``{where}`` placeholder for the row filter.
        legacy_rows: as :func:`landed_ranges`.
        needs: columns the query reads besides the coordinates (a table without one of
            them is left out).

    Returns:
        One result per table that exists and can hold such rows.
    """
    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    topic = settings.pipeline(name).topic
    paths = table_paths(settings, settings.pipeline(name))
    results: list[pa.Table] = []
    for role in ("bronze", "quarantine"):
        columns = store.columns(paths[role])
        if not columns or not set(needs) <= set(columns):
            continue  # no table, or not one the query can read
        where = _where(columns, topic, topic_id, legacy_rows)
        if where is not None:
            results.append(store.query(paths[role], sql.format(where=where)))
    return results


def _where(columns: list[str], topic: str, topic_id: str | None, legacy_rows: bool) -> str | None:
    """The row filter of one table, or None when no row of it can count."""
    same_topic = f"topic = {_quote(topic)}"
    if TOPIC_ID_COLUMN not in columns:
        return same_topic if legacy_rows else None
    which = []
    if topic_id is not None:
        which.append(f"{TOPIC_ID_COLUMN} = {_quote(topic_id)}")
    if legacy_rows:
        which.append(f"{TOPIC_ID_COLUMN} IS NULL")
    if not which:
        return None
    return f"{same_topic} AND ({' OR '.join(which)})"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
