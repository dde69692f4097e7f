"""The delta-spark write path on a real Spark standalone cluster: same tables as local mode.

A master and two workers run as separate JVMs on loopback (:mod:`tests.support.spark_cluster`,
the pinned pyspark's own launcher); ``cdc run`` is pointed at the master with
``--set spark.master=spark://...``. Its executors (one per worker) read Kafka, decode, fold
and MERGE; the driver only plans. The tables must equal the clean local-mode run of the
same records (the fault suite's reference), and both workers must have run an executor of
the application.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.faults import (
    PIPELINE,
    Reference,
    assert_exactly_once,
    assert_same_tables,
    base_stream,
    cdc_run,
    produce,
    read_tables,
    settings,
)
from tests.support.spark_cluster import standalone_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_standalone_cluster_of_two_workers_writes_the_same_tables_as_local_mode(
    fresh_kafka: str, reference: Reference, tmp_path: Path
) -> None:
    sent = produce(fresh_kafka, base_stream())
    with standalone_cluster(tmp_path / "cluster", workers=2, memory="2g") as cluster:
        extra = (
            "lake.writer=delta-spark",
            f"spark.master={cluster.master_url}",
            # Fewer, larger batches than the reference's: silver does not depend on them.
            f"pipelines.{PIPELINE}.max_records_per_trigger=20",
        )
        run = cdc_run(fresh_kafka, tmp_path, *extra, timeout=600)
        assert run.returncode == 0, f"{run.stderr[-3000:]}\n{cluster.logs()}"
        apps = cluster.status()["completedapps"]
        assert isinstance(apps, list) and len(apps) == 1, apps
        app_id = apps[0]["id"]
    # Each worker launched an executor of the run (its work dir holds the executor's logs).
    for n in range(2):
        executors = list((tmp_path / "cluster" / f"worker-{n}" / app_id).glob("*/stderr"))
        assert executors, f"worker {n} ran no executor of {app_id}"
    got = read_tables(settings(fresh_kafka, tmp_path, *extra))
    assert_exactly_once(got, sent)
    assert_same_tables(got, reference.tables)
