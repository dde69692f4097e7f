"""SparkSession factory: one place that knows how to start Spark for this service."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["DATA_SOURCE_NAME", "build_session"]

DATA_SOURCE_NAME = "cdc_kafka"

_DEFAULT_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "2g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.streaming.stopGracefullyOnShutdown": "true",
    # The Python data source planner runs in a worker; keep it warm between batches.
    "spark.python.worker.reuse": "true",
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # A Python worker forked on a loaded machine may take longer than the 15 s default to
    # connect back ("Python worker failed to connect back").
    "spark.python.authenticate.socketTimeout": "60s",
}
_LOG4J = Path(__file__).with_name("log4j2.properties")


def build_session(
    app_name: str = "cdc-service",
    master: str = "local[*]",
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """Return the process's SparkSession with the Kafka data source registered.

    Args:
        app_name: Spark application name.
        master: Spark master URL; ``local[*]`` is the embedded default.
        conf: extra Spark settings, applied over the defaults.

    Returns:
        The active (or newly created) SparkSession.
    """
    # Python workers must run the interpreter that has this package installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Loopback unless told otherwise: local mode needs no other interface.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    from cdc.source import KafkaDataSource

    builder = SparkSession.builder.appName(app_name).master(master)
    defaults = {
        **_DEFAULT_CONF,
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_LOG4J}",
    }
    for key, value in {**defaults, **dict(conf or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    session.dataSource.register(KafkaDataSource)
    return session
