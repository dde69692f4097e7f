"""A second writer on the silver Delta table, run as its own process by the concurrency test.

``python -m tests.support.concurrent_writer <table uri> <stop file> <result file> [engine]``
(engine: ``delta-rs`` or ``delta-spark``)

The engine is the pipeline's writer: delta-rs cannot write to delta-spark's dimensions
(deletion vectors), so against those the other writer is a Spark application of its own
(its own JVM, ``local[1]``), issuing Delta ``UPDATE`` and ``OPTIMIZE`` commands.

Waits for the table, appends one row for a contact the stream never mentions (``ext-1``),
then until the stop file appears: updates that row's ``phone`` (an untracked, non-key column)
to ``w<n>``, and every third round compacts the table (OPTIMIZE rewrites every small file,
and once everything is in one file each update rewrites it too, so a MERGE reading the table
meanwhile conflicts). A commit that loses a conflict is counted and the round moves on. The
result file records the last phone value committed and the counts.

The load comes in bursts: BURST_S of back-to-back commits (a few ms each), then IDLE_S of
nothing. A writer that never pauses starves any optimistic writer whose read-to-commit takes
longer than its gap between commits (the pipeline's MERGE takes ~60 ms); bursts make a
conflict likely in most micro-batches while leaving the pipeline room to win its retry.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

EXT_ID = "ext-1"
BURST_S = 0.15
IDLE_S = 0.35


def main(uri: str, stop_file: str, result_file: str) -> None:
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import CommitFailedError, TableNotFoundError

    stop = Path(stop_file)
    report: dict[str, Any] = {"commits": 0, "conflicts": 0, "compactions": 0, "last_phone": None}

    def finish(**extra: Any) -> None:
        Path(result_file).write_text(json.dumps({**report, **extra}))

    table = None
    while table is None:
        if stop.exists():
            finish(error="the silver table never appeared")
            return
        try:
            table = DeltaTable(uri)
        except TableNotFoundError:
            time.sleep(0.02)
    sample = table.to_pyarrow_table().slice(0, 1)
    row = sample.to_pylist()[0]
    row.update(contact_id=EXT_ID, phone="w0", _seq_open="ext", _seq_last="ext")
    while True:
        try:
            write_deltalake(uri, pa.Table.from_pylist([row], schema=sample.schema), mode="append")
            break
        except CommitFailedError:
            report["conflicts"] += 1
    report["commits"], report["last_phone"] = 1, "w0"
    n = 0
    burst_end = time.monotonic() + BURST_S
    while not stop.exists():
        if time.monotonic() > burst_end:
            time.sleep(IDLE_S)  # pacing of the load, not a wait for a condition
            burst_end = time.monotonic() + BURST_S
        n += 1
        table = DeltaTable(uri)
        try:
            if n % 3 == 0:
                table.optimize.compact()
                report["compactions"] += 1
            else:
                table.update(predicate=f"contact_id = '{EXT_ID}'", updates={"phone": f"'w{n}'"})
                report["last_phone"] = f"w{n}"
            report["commits"] += 1
        except CommitFailedError:
            report["conflicts"] += 1
    finish()


def _conflict(exc: Exception) -> bool:
    """Whether Delta refused a commit for a concurrent one (its class, or its error class)."""
    return "concurrent" in f"{type(exc).__name__} {exc}".lower()


SPARK_BURST = 2
SPARK_IDLE_S = 12.0
"""A Spark command takes ~1 s here, a delta-spark MERGE of the pipeline several: bursts of
SPARK_BURST commands, then this pause, so the pipeline's retried MERGE gets a window (a
writer that never pauses starves any optimistic writer whose MERGE takes longer than the
gap between its commits)."""


def main_spark(uri: str, stop_file: str, result_file: str) -> None:
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from cdc.runtime.spark import build_session

    stop = Path(stop_file)
    report: dict[str, Any] = {"commits": 0, "conflicts": 0, "compactions": 0, "last_phone": None}

    def finish(**extra: Any) -> None:
        Path(result_file).write_text(json.dumps({**report, **extra}))

    spark = build_session("concurrent-writer", master="local[1]")
    # The first commit on disk (a local path here); not DeltaTable.isDeltaTable, whose answer
    # for a path that had no table yet stays cached (Delta caches the table's log).
    while not (Path(uri) / "_delta_log" / f"{0:020d}.json").exists():
        if stop.exists():
            finish(error="the silver table never appeared")
            return
        time.sleep(0.2)
    sample = spark.read.format("delta").load(uri).limit(1)
    row = sample.collect()[0].asDict()
    row.update(contact_id=EXT_ID, phone="w0", _seq_open="ext", _seq_last="ext")
    first = spark.createDataFrame([row], sample.schema)
    while True:
        try:
            first.write.format("delta").mode("append").save(uri)
            break
        except Exception as exc:
            if not _conflict(exc):
                raise
            report["conflicts"] += 1
    report["commits"], report["last_phone"] = 1, "w0"
    n = 0
    while not stop.exists():
        n += 1
        table = DeltaTable.forPath(spark, uri)
        try:
            if n % 3 == 0:
                table.optimize().executeCompaction()
                report["compactions"] += 1
            else:
                table.update(F.col("contact_id") == EXT_ID, {"phone": F.lit(f"w{n}")})
                report["last_phone"] = f"w{n}"
            report["commits"] += 1
        except Exception as exc:  # py4j surfaces Delta's conflict exceptions as several types
            if not _conflict(exc):
                raise
            report["conflicts"] += 1
        if n % SPARK_BURST == 0:
            time.sleep(SPARK_IDLE_S)  # pacing of the load, not a wait for a condition
    finish()
    spark.stop()


if __name__ == "__main__":
    engine = sys.argv[4] if len(sys.argv) > 4 else "delta-rs"
    (main_spark if engine == "delta-spark" else main)(*sys.argv[1:4])
