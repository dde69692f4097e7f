"""SparkSession factory: one place that knows how to start Spark for this service.

The session loads the pinned JARs (:mod:`cdc.runtime.jvm`: Delta, Spark's Kafka source; S3A and the
OpenLineage Spark agent when asked) from the install folder through ``spark.jars``; nothing
is downloaded when a query starts.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cdc.errors import ConfigError
from cdc.runtime.jvm import classpath, optional_classpath

# pyspark is imported when a session is built: the CLI's other commands start without it.

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["build_session", "session_conf"]

_DEFAULT_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "2g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.streaming.stopGracefullyOnShutdown": "true",
    "spark.python.worker.reuse": "true",
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # Rebuilding a table's snapshot from its log runs a job of this many tasks (Delta's
    # default, 50, costs seconds per table per micro-batch on a small cluster); raise it for
    # tables with very long logs.
    "spark.databricks.delta.snapshotPartitions": "4",
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # A Python worker forked on a loaded machine may take longer than the 15 s default to
    # connect back ("Python worker failed to connect back").
    "spark.python.authenticate.socketTimeout": "60s",
}
_LOG4J = Path(__file__).with_name("log4j2.properties")


def build_session(
    app_name: str = "cdc-service",
    master: str | None = "local[*]",
    conf: Mapping[str, str] | None = None,
    *,
    object_store: bool = False,
    lineage: bool = False,
) -> SparkSession:
    """Return the process's SparkSession, with Delta and Spark's Kafka source loaded.

    Args:
        app_name: Spark application name.
        master: Spark master URL; ``local[*]`` is the embedded default. None leaves the
            choice to ``spark-submit`` (the driver then runs under it).
        conf: extra Spark settings, applied over the defaults.
        object_store: the lake is on S3: put the S3A JARs (the ``s3`` profile, when
            installed) on the classpath. Off otherwise: the AWS SDK bundle is large, and a
            cluster's executors would fetch it for nothing.
        lineage: put the OpenLineage Spark agent (the ``lineage`` profile, when installed)
            on the classpath, for :mod:`cdc.lineage` to attach to the runs that use Spark.

    Returns:
        The active (or newly created) SparkSession.

    Raises:
        ConfigError: no master is set and the driver does not run under ``spark-submit``.
        JarsMissingError: the Spark JARs are not installed.
    """
    # Python workers must run the interpreter that has this package installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Loopback unless told otherwise: local mode needs no other interface.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    elif not _under_spark_submit(conf):
        raise ConfigError(
            "spark.master is not set and the driver does not run under spark-submit: run it"
            " with spark-submit (which chooses the master) or set one, e.g."
            " --set spark.master=local[*]"
        )
    for key, value in session_conf(conf, object_store=object_store, lineage=lineage).items():
        builder = builder.config(key, value)
    with _jvm_banner_filtered():
        session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


_JVM_BANNER = (
    "WARNING: Using incubator modules:",
    "Setting default log level to ",
    "To adjust logging level use sc.setLogLevel(",
)
"""Lines the JVM and Spark print at every start, whatever happens next: noise above the
service's own output (its errors and Spark's error log lines pass through)."""


@contextmanager
def _jvm_banner_filtered() -> Iterator[None]:
    """Start the JVM with its stderr piped through a thread that drops :data:`_JVM_BANNER`.

    The JVM inherits descriptor 2 when PySpark launches it; for that moment descriptor 2 is
    a pipe, and the JVM keeps writing into it for its whole life. A daemon thread forwards
    every other line to the real descriptor 2.
    """
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    terminal = os.dup(2)
    saved = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    threading.Thread(
        target=_forward, args=(read_fd, terminal), name="jvm-stderr", daemon=True
    ).start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _forward(read_fd: int, terminal: int) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        for line in pipe:
            if not line.decode("utf-8", errors="replace").startswith(_JVM_BANNER):
                os.write(terminal, line)
    os.close(terminal)


def _under_spark_submit(conf: Mapping[str, str] | None) -> bool:
    """Whether a master comes from elsewhere: spark-submit's gateway, or a conf/env setting."""
    return (
        "PYSPARK_GATEWAY_PORT" in os.environ
        or "MASTER" in os.environ
        or "spark.master" in (conf or {})
    )


def session_conf(
    conf: Mapping[str, str] | None = None, *, object_store: bool = False, lineage: bool = False
) -> dict[str, str]:
    """The Spark settings of a session: defaults, the pinned JARs, then ``conf``.

    Args:
        conf: extra Spark settings; they win over the defaults.
        object_store: add the ``s3`` profile's JARs (when installed).
        lineage: add the ``lineage`` profile's JAR (the OpenLineage Spark agent; when
            installed).

    Returns:
        Every setting :func:`build_session` applies.

    Raises:
        JarsMissingError: the Spark JARs are not installed.
    """
    s3 = optional_classpath("s3") if object_store else []
    agent = optional_classpath("lineage") if lineage else []
    jars = ",".join(str(jar) for jar in [*classpath("spark"), *s3, *agent])
    defaults = {
        **_DEFAULT_CONF,
        "spark.jars": jars,
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={_LOG4J}",
    }
    return {**defaults, **dict(conf or {})}
