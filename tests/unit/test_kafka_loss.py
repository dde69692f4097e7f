"""Spark's Kafka data-loss errors read into partitions and offsets (:mod:`cdc.pipeline.kafka_loss`).

The texts are Spark 4.2's (spark-sql-kafka ``kafka-error-conditions.json``), as a failed
query's ``str(exception)`` carries them: on the driver (the query's own message) and from a
task of ``foreachBatch``'s job (inside the Python proxy's traceback, a JVM ``Caused by``).
"""

from __future__ import annotations

import pytest

from cdc.pipeline.kafka_loss import KafkaDataLoss, data_loss_of, parse_data_loss

HEADLINE = """Some data may have been lost because they are not available in Kafka any more;
either the data was aged out by Kafka or the topic may have been deleted before all the data in the
topic was processed.
If you don't want your streaming query to fail on such cases, set the source option failOnDataLoss to false.
Reason: """  # noqa: E501

TASK = (
    "An exception was raised by the Python Proxy. Return Message: Traceback (most recent call"
    ' last):\n  File "/x/batch_local.py", line 48, in __call__\n    table = batch_df.toArrow()\n'
    "py4j.protocol.Py4JJavaError: An error occurred while calling o194.getResult.\n"
    ": org.apache.spark.SparkException: Exception thrown in awaitResult: \n"
    "\tat org.apache.spark.util.SparkThreadUtils$.awaitResult(SparkThreadUtils.scala:56)\n"
    "Caused by: org.apache.spark.sql.kafka010.KafkaIllegalStateException: "
    + HEADLINE
    + "Could not read records in offset [11, 15) for topic partition crm.contacts-2\n"
    "with consumer group spark-kafka-source-edc907b4--1996026490-executor.\n"
    "\tat org.apache.spark.sql.kafka010.KafkaExceptions$.couldNotReadOffsetRange("
    "KafkaExceptions.scala:94)\n"
)

DRIVER = (
    HEADLINE
    + "Partitions Set(crm.accounts-0, crm.accounts-1, crm.accounts-2) have been deleted.\n"
    "=== Streaming Query ===\n"
    "Identifier: crm_contacts [id = aa1eb516, runId = e89f6b76]\n"
    'Current Committed Offsets: {KafkaV2[Subscribe[crm.contacts]]: {"crm.accounts":{"0":3}}}\n'
)


def test_a_task_failure_names_the_partition_and_the_offsets() -> None:
    assert parse_data_loss(TASK) == KafkaDataLoss(
        "KAFKA_DATA_LOSS.COULD_NOT_READ_OFFSET_RANGE",
        "crm.contacts/2 offsets [11, 15) can no longer be read",
    )


def test_a_driver_failure_names_the_partitions() -> None:
    loss = parse_data_loss(DRIVER)
    assert loss is not None
    assert loss.line() == (
        "partitions crm.accounts/0, crm.accounts/1, crm.accounts/2 of the checkpoint are gone"
        " (KAFKA_DATA_LOSS.PARTITIONS_DELETED)"
    )


@pytest.mark.parametrize(
    ("reason", "condition", "what"),
    [
        (
            "Starting offset for t.x-0 was 40 but consumer reset to 52.",
            "START_OFFSET_RESET",
            "t.x/0 was to be read from offset 40, but the broker resets it to 52",
        ),
        (
            "Partition t-10 offset was changed from 78 to 0.\nThis could be either 1) a user"
            " error",
            "PARTITION_OFFSET_CHANGED",
            "t/10 went back from offset 78 to 0",
        ),
        (
            "Added partition t-3 starts from 5 instead of 0.",
            "ADDED_PARTITION_DOES_NOT_START_FROM_OFFSET_ZERO",
            "new partition t/3 starts at offset 5: its records below it are gone",
        ),
        (
            "Cannot find initial offsets for partitions Set(t-1). They may have been deleted.",
            "INITIAL_OFFSET_NOT_FOUND_FOR_PARTITIONS",
            "partitions t/1 have no offsets to start from",
        ),
        (
            "Partitions Set(t-0) have been deleted.\nKafka option 'kafka.group.id' has been set",
            "PARTITIONS_DELETED",
            "partitions t/0 of the checkpoint are gone",
        ),
    ],
)
def test_every_reason_of_the_condition(reason: str, condition: str, what: str) -> None:
    assert parse_data_loss(HEADLINE + reason + "\n") == KafkaDataLoss(
        f"KAFKA_DATA_LOSS.{condition}", what
    )


def test_an_unknown_reason_is_still_data_loss_and_other_errors_are_not() -> None:
    assert parse_data_loss(HEADLINE + "Something new.\n") == KafkaDataLoss(
        "KAFKA_DATA_LOSS", "records the query had to read are gone"
    )
    assert parse_data_loss("java.lang.OutOfMemoryError: Java heap space") is None
    assert data_loss_of(None) is None
    assert data_loss_of(RuntimeError(TASK)) == parse_data_loss(TASK)
