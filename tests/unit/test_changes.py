"""Batch splitting: every row to exactly one of bronze or quarantine; replay's landed rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from cdc.ingest.changes import split_batch


def _batch(offsets: list[int], errors: list[str | None]) -> pa.Table:
    n = len(offsets)
    return pa.table(
        {
            "topic": ["t"] * n,
            "partition": pa.array([0] * n, pa.int32()),
            "offset": pa.array(offsets, pa.int64()),
            "timestamp": pa.array(
                [datetime(2026, 1, 1, tzinfo=UTC)] * n, pa.timestamp("us", "UTC")
            ),
            "key_raw": pa.array([b"k"] * n),
            "value_raw": pa.array([b"v"] * n),
            "key_schema_id": pa.array([1] * n, pa.int32()),
            "value_schema_id": pa.array([2] * n, pa.int32()),
            "error_code": errors,
            "error": [e and f"why {e}" for e in errors],
        }
    )


def test_every_row_goes_to_exactly_one_side() -> None:
    split = split_batch(
        _batch([0, 1, 2, 3], [None, "decode_error", None, None]), 5, datetime.now(UTC)
    )
    assert split.valid.column("offset").to_pylist() == [0, 2, 3]
    assert split.quarantine.column("offset").to_pylist() == [1]
    assert split.quarantine.column("error").to_pylist() == ["why decode_error"]
    assert set(split.valid.column("_batch_id").to_pylist()) == {5}
    assert "error_code" not in split.valid.column_names


def test_landed_rows_feed_silver_but_not_bronze_again() -> None:
    split = split_batch(
        _batch([3, 4, 5, 6], [None, "decode_error", None, None]), 0, datetime.now(UTC)
    )
    replay = split.without_landed({0: [(0, 6)]})
    assert replay.valid.num_rows == 3  # silver still sees every valid row
    assert replay.bronze.column("offset").to_pylist() == [6]
    assert replay.quarantine.num_rows == 0


def test_quarantine_can_be_behind_bronze_after_a_crash_between_their_commits() -> None:
    # Bronze holds offsets 3 and 5; quarantine never received 4 (the crash came between).
    split = split_batch(_batch([3, 4, 5], [None, "decode_error", None]), 0, datetime.now(UTC))
    replay = split.without_landed({0: [(3, 4), (5, 6)]})
    assert replay.bronze.num_rows == 0
    assert replay.quarantine.column("offset").to_pylist() == [4]


def test_every_row_keeps_the_topic_id_it_was_read_from() -> None:
    split = split_batch(_batch([0, 1], [None, "decode_error"]), 0, datetime.now(UTC), "tid")
    assert split.valid.column("_topic_id").to_pylist() == ["tid"]
    assert split.quarantine.column("_topic_id").to_pylist() == ["tid"]


def test_error_line_prefers_our_errors_over_traceback_source_lines() -> None:
    from cdc.pipeline.queries import error_line

    text = """[PYTHON_EXCEPTION] An exception was thrown from the Python worker.
Traceback (most recent call last):
  File "/x/reader.py", line 10, in latestOffset
    raise DataLossError(f"{details}; {_FAIL_HINT}")
cdc.errors.DataLossError: data loss on t/0: offset 15 is beyond the end 2; set failOnDataLoss=false
\tat org.apache.spark.sql.Foo.bar(Foo.scala:1)
org.apache.spark.SparkException: Job aborted"""
    assert error_line(text) == (
        "DataLossError: data loss on t/0: offset 15 is beyond the end 2; set failOnDataLoss=false"
    )
    assert error_line("Traceback:\n  x\nKeyError: 'a'\norg.apache.X: y") == "KeyError: 'a'"


def test_error_line_reaches_the_jvm_root_cause_behind_py4j() -> None:
    from cdc.pipeline.queries import error_line

    text = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "py4j.protocol.Py4JJavaError: An error occurred while calling o116.getResult.\n"
        ": org.apache.spark.SparkException: Exception thrown in awaitResult:\n"
        "\tat org.apache.spark.util.SparkThreadUtils$.awaitResult(SparkThreadUtils.scala:56)\n"
        "Caused by: org.apache.spark.SparkException: Job aborted due to stage failure: Total size"
        " of serialized results of 1 tasks (3.9 MiB) is bigger than spark.driver.maxResultSize"
        " (1024.0 KiB)\n"
        "\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(x.scala:1)\n"
    )
    assert error_line(text) == (
        "SparkException: Job aborted due to stage failure: Total size of serialized results of 1"
        " tasks (3.9 MiB) is bigger than spark.driver.maxResultSize (1024.0 KiB)"
    )
