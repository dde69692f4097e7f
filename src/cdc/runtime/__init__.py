"""The processes and clients the service runs on.

Owns the embedded Kafka broker (:mod:`cdc.runtime.broker`), the pinned JVM classpath
(:mod:`cdc.runtime.jvm`), the SparkSession (:mod:`cdc.runtime.spark`) and Spark's errors in
one line (:mod:`cdc.runtime.spark_errors`), the one Kafka metadata client
(:mod:`cdc.runtime.kafka_admin`), log format and secret redaction (:mod:`cdc.runtime.logs`),
the pipeline lock (:mod:`cdc.runtime.locks`), delta-rs panic output
(:mod:`cdc.runtime.rust_output`) and the fault suite's crash hook (:mod:`cdc.runtime.faults`).
It may import :mod:`cdc.core`, :mod:`cdc.config` and :mod:`cdc.errors`; nothing about tables,
contracts or pipelines.
"""

from __future__ import annotations

__all__: list[str] = []
