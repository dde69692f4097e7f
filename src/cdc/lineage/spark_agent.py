"""The OpenLineage Spark agent, attached to a run's SparkSession for the run's lifetime.

The agent (``io.openlineage.spark.agent.OpenLineageSparkListener``, the ``lineage`` JAR
profile of ``jvm/pom.xml``) reports each Spark SQL execution (a delta-spark MERGE or append,
an OPTIMIZE) as a run of its own with its input and output datasets and their column
lineage. It is registered on the driver's SparkContext by the service, not by
``spark.extraListeners``, with a configuration of its own (never the session's Spark
properties, so the transport's credentials stay out of them):

* ``spark.openlineage.applicationRunId`` and ``appName`` are the service's run (``cdc run``'s
  process run, or a companion's run): every Spark job's parent run facet points at it;
* ``spark.openlineage.parentRunId``/``parentJobName``/``parentJobNamespace`` are that run's
  parent, when it has one (its root);
* ``spark.openlineage.namespace`` is the service's job namespace;
* ``spark.openlineage.transport.*`` is ``lineage:``'s transport (:func:`agent_conf`).

The agent names a Delta table written by path as :func:`cdc.lineage.naming.table_dataset`
does, and a Kafka topic as :func:`~cdc.lineage.naming.kafka_dataset` does, so both sides
report the same datasets. Nothing here stops a run: a missing JAR or a listener that cannot
be built is logged once and the run goes on without Spark-level events.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cdc.config.kafka_clients import java_client_config
from cdc.config.settings import Settings
from cdc.lineage.emitter import transport_config
from cdc.runtime.jvm import optional_classpath

__all__ = ["LISTENER", "agent_conf", "agent_installed", "attached_agent"]

log = logging.getLogger(__name__)

LISTENER = "io.openlineage.spark.agent.OpenLineageSparkListener"
_DRAIN_MS = 30_000
"""How long a run's end waits for Spark's listener bus to hand the agent the last jobs."""


def agent_installed() -> bool:
    """Whether the ``lineage`` JAR profile (the agent) is installed."""
    return bool(optional_classpath("lineage"))


def agent_conf(settings: Settings, run: Any, parent: Any = None) -> dict[str, str]:
    """The agent's ``spark.openlineage.*`` settings for one run, secrets resolved.

    Args:
        settings: the service settings (``lineage:``).
        run: the service's run (a :class:`cdc.lineage.events.RunRef`) the Spark jobs belong to.
        parent: that run's parent run, if any.

    Raises:
        ConfigError: a transport setting cannot be resolved.
    """
    transport = transport_config(settings)
    conf = {
        "spark.openlineage.namespace": run.job.namespace,
        "spark.openlineage.applicationRunId": run.run_id,
        "spark.openlineage.appName": run.job.name,
        "spark.openlineage.transport.type": transport["type"],
    }
    if parent is not None:
        conf["spark.openlineage.parentRunId"] = parent.run_id
        conf["spark.openlineage.parentJobName"] = parent.job.name
        conf["spark.openlineage.parentJobNamespace"] = parent.job.namespace
    prefix = "spark.openlineage.transport."
    if transport["type"] == "file":
        conf[prefix + "location"] = transport["log_file_path"]
    elif transport["type"] == "http":
        conf[prefix + "url"] = transport["url"]
        conf[prefix + "endpoint"] = transport["endpoint"]
        conf[prefix + "timeoutInMillis"] = str(int(transport["timeout"] * 1000))
        if "auth" in transport:
            conf[prefix + "auth.type"] = "api_key"
            conf[prefix + "auth.apiKey"] = transport["auth"]["apiKey"]
    elif transport["type"] == "kafka":
        conf[prefix + "topicName"] = transport["topic"]
        java = java_client_config(settings.lineage.kafka_client_config(settings.kafka))
        java["bootstrap.servers"] = transport["config"]["bootstrap.servers"]
        java.setdefault("key.serializer", "org.apache.kafka.common.serialization.StringSerializer")
        java.setdefault(
            "value.serializer", "org.apache.kafka.common.serialization.StringSerializer"
        )
        java.setdefault("delivery.timeout.ms", "10000")
        java.setdefault("request.timeout.ms", "5000")
        for key, value in java.items():
            conf[f"{prefix}properties.{key}"] = value
    return conf


@contextmanager
def attached_agent(spark: Any, settings: Settings, run: Any, parent: Any = None) -> Iterator[bool]:
    """Attach the agent to ``spark`` for the block (yields whether it is attached).

    Nothing happens without a session, with ``lineage.spark_agent`` off or without the JAR.
    At the block's end the listener bus is drained (the last jobs' events reach the agent),
    then the agent is removed and closed (its transport flushed).
    """
    if spark is None or not settings.lineage.spark_agent:
        yield False
        return
    listener = _register(spark, agent_conf(settings, run, parent))
    try:
        yield listener is not None
    finally:
        if listener is not None:
            _unregister(spark, listener)


def _register(spark: Any, conf: dict[str, str]) -> Any:
    if not agent_installed():
        log.warning(
            "lineage: the OpenLineage Spark agent is not installed (python -m cdc.runtime.jvm"
            " install --profile lineage): Spark jobs are not reported, the run's own events are"
        )
        return None
    try:
        sc = spark.sparkContext
        jvm = sc._jvm
        spark_conf = sc._jsc.sc().getConf()  # a copy: the session's own is not changed
        for key, value in conf.items():
            spark_conf.set(key, value)
        listener = getattr(jvm, LISTENER)(spark_conf)
        sc._jsc.sc().addSparkListener(listener)
        return listener
    except Exception as exc:  # py4j: the class is not on the session's classpath
        log.warning(
            "lineage: cannot attach the OpenLineage Spark agent (%s); the session was started"
            " without its JAR? Spark jobs are not reported",
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        return None


def _unregister(spark: Any, listener: Any) -> None:
    try:
        context = spark.sparkContext._jsc.sc()
        try:
            context.listenerBus().waitUntilEmpty(_DRAIN_MS)
        except Exception as exc:  # a timeout: the rest is not reported
            log.warning("lineage: Spark's listener bus did not drain: %s", exc)
        context.removeSparkListener(listener)
        listener.close()
    except Exception as exc:  # the session was stopped under us
        log.debug("lineage: removing the Spark agent failed: %s", exc)
