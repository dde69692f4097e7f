"""Kafka streaming source for Spark: the ``cdc_kafka`` Python data source.

Register it with ``spark.dataSource.register(KafkaDataSource)`` (done by
:func:`cdc.spark.build_session`) and read with ``spark.readStream.format("cdc_kafka")``.
Offset arithmetic lives in :mod:`cdc.source.offsets`, option parsing in
:mod:`cdc.source.options`.
"""

from __future__ import annotations

from cdc.source.options import SourceOptions
from cdc.source.reader import (
    DATA_SOURCE_NAME,
    KafkaBatchReader,
    KafkaDataSource,
    KafkaInputPartition,
    KafkaStreamReader,
    data_loss_count,
)

__all__ = [
    "DATA_SOURCE_NAME",
    "KafkaBatchReader",
    "KafkaDataSource",
    "KafkaInputPartition",
    "KafkaStreamReader",
    "SourceOptions",
    "data_loss_count",
]
