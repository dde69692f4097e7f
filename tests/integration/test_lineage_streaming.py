"""A streaming run's OpenLineage events, on each writer, through the file transport.

The service's wiring of ``cdc run`` (:func:`cdc.lineage.streaming_run` around
:func:`cdc.pipeline.queries.run_pipelines`) on the session's SparkSession and broker. Every event
in the file is validated against the OpenLineage JSON schemas; the process run, the query
run (the topic in, bronze, quarantine and silver out, the rows of each micro-batch) and, on
delta-spark, the Spark agent's jobs (children of the process run, the same dataset names,
column lineage of the MERGE) are checked. A query that fails emits FAIL with its error.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from cdc.config.lake import table_paths
from cdc.config.settings import Settings, load_settings
from cdc.lineage import kafka_dataset, streaming_run, table_dataset
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.queries import PipelineFailedError, run_pipelines
from tests.support.envelopes import contact_envelope, contact_row
from tests.support.openlineage import read_events, validate_event
from tests.support.paths import CONTRACTS_PATH, REGISTRY_PATH, REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = "crm_contacts"
TOPIC = "crm.contacts"
AGENT = "https://github.com/OpenLineage/OpenLineage/tree/"
"""How the Spark agent's ``producer`` starts (its version and ``/integration/spark`` follow)."""


def _settings(bootstrap: str, root: Path, writer: str, *extra: str) -> Settings:
    return load_settings(
        "local",
        [
            f"kafka.bootstrap_servers={bootstrap}",
            f"lake.root={root / 'lake'}",
            f"checkpoints.root={root / 'cp'}",
            f"lake.writer={writer}",
            "lineage.enabled=true",
            "lineage.transport=file",
            *extra,
        ],
        config_dir=REPO_ROOT / "config",
        environ={},
    )


def _produce(bootstrap: str, tmp: Path) -> int:
    """Six changes of three contacts and one record that is not Avro (quarantined)."""
    from cdc.ingest.contracts import load_contracts
    from cdc.ingest.produce import produce_file
    from cdc.ingest.registry import FileRegistry

    lines: list[dict[str, Any]] = []
    for i in range(3):
        cid = f"c{i}"
        lines.append(
            {
                "key": {"contact_id": cid},
                "value": contact_envelope("c", 1000 + i, None, contact_row(cid, ts=1000 + i)),
            }
        )
        lines.append(
            {
                "key": {"contact_id": cid},
                "value": contact_envelope(
                    "u",
                    2000 + i,
                    contact_row(cid, ts=1000 + i),
                    contact_row(cid, ts=2000 + i, last_name="Moved"),
                ),
            }
        )
    lines.append({"key": {"contact_id": "p1"}, "value_b64": base64.b64encode(b"not avro").decode()})
    path = tmp / "records.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = produce_file(
        bootstrap, FileRegistry.load(REGISTRY_PATH), load_contracts(CONTRACTS_PATH), TOPIC, path
    )
    return int(report.sent)


def _events(settings: Settings) -> list[dict[str, Any]]:
    events = read_events([Path(settings.checkpoints.root) / "_lineage" / "events.jsonl"])
    assert events, "no event written"
    return [validate_event(e) for e in events]


def _ours(events: list[dict[str, Any]], job: str) -> list[dict[str, Any]]:
    return [e for e in events if e["job"]["name"] == job and not e["producer"].startswith(AGENT)]


def _rows(dataset: dict[str, Any]) -> int:
    facets = dataset.get("inputFacets") or dataset.get("outputFacets") or {}
    stats = facets.get("inputStatistics") or facets.get("outputStatistics")
    assert stats is not None, dataset
    return int(stats["rowCount"])


@pytest.mark.parametrize("writer", ["delta-rs", "delta-spark"])
def test_a_streaming_run_names_its_topic_and_tables_with_the_rows_of_each_batch(
    spark: Any, fresh_kafka: str, tmp_path: Path, writer: str
) -> None:
    settings = _settings(
        fresh_kafka, tmp_path, writer, f"pipelines.{PIPELINE}.max_records_per_trigger=4"
    )
    sent = _produce(fresh_kafka, tmp_path)
    stats: list[BatchStats] = []

    def both(name: str, batch: BatchStats) -> None:  # as cdc run fans out to its feeds
        stats.append(batch)
        assert on_batch is not None
        on_batch(name, batch)

    with streaming_run(settings, [PIPELINE], spark) as on_batch:
        run_pipelines(spark, settings, [PIPELINE], available_now=True, on_batch=both)
    events = _events(settings)

    process = _ours(events, "run")
    assert [e["eventType"] for e in process] == ["START", "COMPLETE"]
    process_run = process[0]["run"]["runId"]
    assert {e["run"]["runId"] for e in process} == {process_run}

    query = _ours(events, f"stream.{PIPELINE}")
    kinds = [e["eventType"] for e in query]
    assert kinds[0] == "START" and kinds[-1] == "COMPLETE"
    assert set(kinds[1:-1]) == {"RUNNING"} and len(kinds) - 2 == len(stats) >= 2  # per batch
    assert {e["run"]["runId"] for e in query} == {query[0]["run"]["runId"]}
    for event in query:
        parent = event["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == process_run and parent["job"]["name"] == "run"
        assert event["job"]["facets"]["jobType"]["processingType"] == "STREAMING"

    topic = kafka_dataset(fresh_kafka, TOPIC)
    paths = table_paths(settings, settings.pipeline(PIPELINE))
    tables = {role: table_dataset(paths[role]) for role in ("bronze", "quarantine", "silver")}
    assert topic.namespace == f"kafka://{fresh_kafka.split(',')[0]}"
    assert tables["silver"].namespace == "file"
    assert tables["silver"].name == str(tmp_path / "lake" / "silver" / "dim_contact")

    def named(datasets: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
        return {(d["namespace"], d["name"]): d for d in datasets}

    start = query[0]
    assert list(named(start["inputs"])) == [(topic.namespace, topic.name)]
    outputs = named(start["outputs"])
    assert sorted(outputs) == sorted((t.namespace, t.name) for t in tables.values())
    silver_schema = outputs[(tables["silver"].namespace, tables["silver"].name)]["facets"]["schema"]
    assert {"contact_id", "email", "valid_from", "valid_to", "is_current"} <= {
        f["name"] for f in silver_schema["fields"]
    }

    batches = query[1:-1]
    read = sum(_rows(e["inputs"][0]) for e in batches)
    written = {
        role: sum(_rows(named(e["outputs"])[(t.namespace, t.name)]) for e in batches)
        for role, t in tables.items()
    }
    assert read == sent == 7
    assert written["bronze"] == 6 and written["quarantine"] == 1
    # Silver's rows written, batch by batch: versions inserted, rows updated, intervals closed.
    assert [
        _rows(named(e["outputs"])[(tables["silver"].namespace, tables["silver"].name)])
        for e in batches
    ] == [s.inserted + s.updated + s.closed for s in stats]
    assert written["silver"] >= 6  # two versions per key at least
    end = query[-1]
    assert _rows(end["inputs"][0]) == 7
    assert _rows(named(end["outputs"])[(tables["bronze"].namespace, tables["bronze"].name)]) == 6

    agent = [e for e in events if e["producer"].startswith(AGENT)]
    if writer == "delta-rs":
        assert agent == []  # no Spark job writes a table
        return
    # The agent's Spark jobs: children of the process run, the tables named as ours are.
    assert agent, "the Spark agent reported nothing"
    for event in agent:
        parent = event["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == process_run, parent
        assert parent["job"]["namespace"] == process[0]["job"]["namespace"]
    written_by_spark = {
        (o["namespace"], o["name"]): o for e in agent for o in e.get("outputs") or []
    }
    for role in ("bronze", "quarantine", "silver"):
        assert (tables[role].namespace, tables[role].name) in written_by_spark, (
            role,
            sorted(written_by_spark),
        )
    merge = [e for e in agent if e["job"]["name"].endswith("execute_merge_into_command")]
    assert merge, "the agent reported no MERGE"
    for event in merge:  # the silver MERGE, with the dimension's schema
        [silver] = event["outputs"]
        assert (silver["namespace"], silver["name"]) == (
            tables["silver"].namespace,
            tables["silver"].name,
        )
        fields = {f["name"] for f in silver["facets"]["schema"]["fields"]}
        assert {"contact_id", "email", "valid_from", "is_current"} <= fields


def test_a_failed_query_emits_fail_with_its_error(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    settings = _settings(fresh_kafka, tmp_path, "delta-rs")
    _produce(fresh_kafka, tmp_path)

    def crash(stage: str, batch_id: int) -> None:
        if stage == "mid-commit":
            raise RuntimeError("disk on fire")

    with (
        pytest.raises(PipelineFailedError, match="disk on fire"),
        streaming_run(settings, [PIPELINE], spark) as on_batch,
    ):
        run_pipelines(
            spark, settings, [PIPELINE], available_now=True, fault_hook=crash, on_batch=on_batch
        )
    events = _events(settings)
    query = _ours(events, f"stream.{PIPELINE}")
    assert [e["eventType"] for e in query] == ["START", "FAIL"]
    error = query[-1]["run"]["facets"]["errorMessage"]
    assert error["message"].startswith("PipelineFailedError: pipeline crm_contacts failed: ")
    assert "disk on fire" in error["message"]
    assert error["programmingLanguage"] == "PYTHON"
    assert [e["eventType"] for e in _ours(events, "run")] == ["START", "FAIL"]
