"""cdc.lineage without servers: dataset names, events (validated against the OpenLineage JSON
schemas), the emitter (never blocks, counts and logs failures), the runs' event sequences,
the transports and the Spark agent's configuration from ``lineage:``."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from openlineage.client.serde import Serde

from cdc.config.settings import load_settings
from cdc.errors import CdcError, ConfigError
from cdc.lineage.datasets import dr_tables, gold_tables, publish_tables, warehouse_dataset
from cdc.lineage.emitter import Emitter, LineageMetrics, events_file, transport_config
from cdc.lineage.events import JobRef, RunRef, Table, columns_of, run_event
from cdc.lineage.naming import (
    DatasetId,
    duckdb_dataset,
    kafka_dataset,
    postgres_dataset,
    snowflake_dataset,
    table_dataset,
)
from cdc.lineage.runs import NO_RUN, Lineage, companion_run, ended_by_outcome
from cdc.lineage.spark_agent import agent_conf
from tests.support.openlineage import schema_problems, validate_event
from tests.support.paths import REPO_ROOT

RUN_ID = "01932f1e-7a2b-7c3d-8e4f-a1b2c3d4e5f6"
PARENT_ID = "01932f1e-7a2b-7c3d-8e4f-a1b2c3d4e5f7"
WHEN = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
JOB = JobRef("cdc-local", "gold.build")


def _settings(*overrides: str, root: Path = Path("/lake-root")) -> Any:
    return load_settings(
        "local",
        [f"lake.root={root / 'lake'}", f"checkpoints.root={root / 'cp'}", *overrides],
        config_dir=REPO_ROOT / "config",
        environ={},
    )


# ------------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    ("uri", "namespace", "name"),
    [
        ("/data/lake/silver/dim_contact", "file", "/data/lake/silver/dim_contact"),
        ("/data/lake/silver/dim_contact/", "file", "/data/lake/silver/dim_contact"),
        ("file:///data/lake/gold/x", "file", "/data/lake/gold/x"),
        ("file://nas1/data/lake/gold/x", "file://nas1", "/data/lake/gold/x"),
        ("s3://acme-lake/cdc/silver/dim_contact", "s3://acme-lake", "cdc/silver/dim_contact"),
        ("s3a://acme-lake/cdc/silver/dim_contact/", "s3://acme-lake", "cdc/silver/dim_contact"),
        ("s3n://acme-lake/cdc/bronze/t", "s3://acme-lake", "cdc/bronze/t"),
        ("gs://bucket/lake/t", "gs://bucket", "lake/t"),
        (
            "abfss://c@acct.dfs.core.windows.net/lake/t",
            "abfss://c@acct.dfs.core.windows.net",
            "lake/t",
        ),
    ],
)
def test_a_lake_table_is_named_as_the_spark_agent_names_it(
    uri: str, namespace: str, name: str
) -> None:
    assert table_dataset(uri) == DatasetId(namespace, name)


def test_a_relative_lake_path_is_made_absolute() -> None:
    assert table_dataset("lake/silver/t") == DatasetId("file", str(Path.cwd() / "lake/silver/t"))


@pytest.mark.parametrize(
    ("servers", "namespace"),
    [
        ("127.0.0.1:19092", "kafka://127.0.0.1:19092"),
        ("b1.kafka:9092,b2.kafka:9092", "kafka://b1.kafka:9092"),
        ("SASL_SSL://b1.kafka:9093,SASL_SSL://b2.kafka:9093", "kafka://b1.kafka:9093"),
    ],
)
def test_a_topic_is_named_by_its_first_bootstrap_server(servers: str, namespace: str) -> None:
    assert kafka_dataset(servers, "crm.contacts") == DatasetId(namespace, "crm.contacts")


def test_warehouse_tables_are_named_as_the_naming_spec_says(tmp_path: Path) -> None:
    assert postgres_dataset({"host": "wh", "port": 5433, "dbname": "analytics"}, "gold", "t") == (
        DatasetId("postgres://wh:5433", "analytics.gold.t")
    )
    # libpq's defaults: localhost, 5432, the user's name as the database.
    assert postgres_dataset({"user": "cdc"}, "gold", "t") == DatasetId(
        "postgres://localhost:5432", "cdc.gold.t"
    )
    assert snowflake_dataset("Acme-Analytics", "analytics", "gold", "daily_revenue") == DatasetId(
        "snowflake://acme-analytics", "ANALYTICS.GOLD.DAILY_REVENUE"
    )
    file = tmp_path / "warehouse.duckdb"
    assert duckdb_dataset(str(file), "gold", "t") == DatasetId(
        f"duckdb://{file}", "warehouse.gold.t"
    )


def test_the_published_table_follows_the_configured_warehouse(tmp_path: Path) -> None:
    settings = _settings(root=tmp_path)
    assert warehouse_dataset(settings, "daily_revenue") == DatasetId(
        f"duckdb://{tmp_path / 'warehouse.duckdb'}", "warehouse.gold.daily_revenue"
    )
    postgres = _settings(
        "warehouse.target=postgres",
        "warehouse.dsn=postgresql://cdc:pw@db.internal:6543/analytics",
        "warehouse.schema=marts",
        root=tmp_path,
    )
    assert warehouse_dataset(postgres, "daily_revenue") == DatasetId(
        "postgres://db.internal:6543", "analytics.marts.daily_revenue"
    )
    fields_win = _settings(
        "warehouse.target=postgres",
        "warehouse.dsn=postgresql://cdc:pw@db.internal:6543/analytics",
        "warehouse.host=replica",
        root=tmp_path,
    )
    assert warehouse_dataset(fields_win, "t").namespace == "postgres://replica:6543"
    snowflake = _settings(
        "warehouse.target=snowflake",
        "warehouse.account=acme-analytics",
        "warehouse.database=ANALYTICS",
        root=tmp_path,
    )
    assert warehouse_dataset(snowflake, "t") == DatasetId(
        "snowflake://acme-analytics", "ANALYTICS.GOLD.T"
    )


# ------------------------------------------------------------------------------- events


def _dict(event: Any) -> dict[str, Any]:
    result: dict[str, Any] = Serde.to_dict(event)
    return result


@pytest.mark.parametrize("event_type", ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL"])
def test_every_event_type_is_valid_against_the_openlineage_schemas(event_type: Any) -> None:
    silver = table_dataset("/lake/silver/dim_account")
    schema = pa.schema(
        [
            ("account_id", pa.string()),
            ("value", pa.struct([("after", pa.struct([("x", pa.int64())]))])),
        ]
    )
    event = run_event(
        event_type,
        RunRef(RUN_ID, JOB),
        WHEN,
        inputs=[Table(silver, columns_of(schema), rows=12)],
        outputs=[
            Table(
                table_dataset("/lake/gold/customer_360"),
                columns_of(schema),
                rows=3,
                column_lineage={"account_id": [(silver, "account_id")]},
            )
        ],
        parent=RunRef(PARENT_ID, JobRef("cdc-local", "run")),
        error="PublishError: boom" if event_type == "FAIL" else None,
        stack_trace="Traceback ..." if event_type == "FAIL" else None,
    )
    d = validate_event(_dict(event))
    assert d["eventType"] == event_type
    assert d["eventTime"] == "2026-11-23T12:00:00+00:00"
    assert d["run"]["runId"] == RUN_ID
    assert d["job"] == {
        "namespace": "cdc-local",
        "name": "gold.build",
        "facets": {
            "jobType": {
                "_producer": d["producer"],
                "_schemaURL": "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json"
                "#/$defs/JobTypeJobFacet",
                "processingType": "BATCH",
                "integration": "CDC_SERVICE",
                "jobType": "COMMAND",
            }
        },
    }
    parent = d["run"]["facets"]["parent"]
    assert parent["run"]["runId"] == PARENT_ID and parent["job"]["name"] == "run"
    assert parent["root"]["run"]["runId"] == PARENT_ID
    (source,) = d["inputs"]
    assert (source["namespace"], source["name"]) == ("file", "/lake/silver/dim_account")
    assert source["inputFacets"]["inputStatistics"]["rowCount"] == 12
    fields = source["facets"]["schema"]["fields"]
    assert [f["name"] for f in fields] == ["account_id", "value"]
    assert fields[1]["type"] == "struct" and fields[1]["fields"][0]["fields"][0]["name"] == "x"
    (target,) = d["outputs"]
    assert target["outputFacets"]["outputStatistics"]["rowCount"] == 3
    assert target["facets"]["columnLineage"]["fields"]["account_id"]["inputFields"] == [
        {
            "namespace": "file",
            "name": "/lake/silver/dim_account",
            "field": "account_id",
            "transformations": [],
        }
    ]
    error = d["run"]["facets"].get("errorMessage")
    if event_type == "FAIL":
        assert error["message"] == "PublishError: boom"
        assert error["programmingLanguage"] == "PYTHON" and error["stackTrace"]
    else:
        assert error is None


def test_the_schema_check_catches_a_broken_event() -> None:
    """The validator is not a rubber stamp: what the spec forbids is reported."""
    good = _dict(run_event("START", RunRef(RUN_ID, JOB), WHEN))
    assert schema_problems(good) == []
    bad = _dict(run_event("START", RunRef(RUN_ID, JOB), WHEN))
    bad["run"]["runId"] = "not-a-uuid"
    bad["eventType"] = "STARTED"
    del bad["job"]["namespace"]
    problems = "\n".join(schema_problems(bad))
    assert "'not-a-uuid' is not a 'uuid'" in problems
    assert "'STARTED' is not one of" in problems
    assert "'namespace' is a required property" in problems
    facet = _dict(run_event("FAIL", RunRef(RUN_ID, JOB), WHEN, error="x"))
    del facet["run"]["facets"]["errorMessage"]["programmingLanguage"]
    assert any("programmingLanguage" in p for p in schema_problems(facet))


def test_an_event_time_needs_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone"):
        run_event("START", RunRef(RUN_ID, JOB), datetime(2026, 1, 1))


# ------------------------------------------------------------------------------ emitter


def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_emit_never_waits_for_a_slow_transport_and_drops_what_does_not_fit() -> None:
    holding, release = threading.Event(), threading.Event()
    sent: list[int] = []

    def slow(event: int) -> None:
        holding.set()
        release.wait(10)
        sent.append(event)

    emitter = Emitter(slow, queue_size=2)
    emitter.emit(0)
    assert holding.wait(5)  # the transport holds the first event and does not return
    started = time.monotonic()
    for i in range(1, 10):
        emitter.emit(i)
    assert time.monotonic() - started < 0.5  # the transport blocks, emit does not
    assert emitter.metrics.count("dropped") == 7  # two queued behind it, the rest dropped
    release.set()
    emitter.close(5)
    assert sent == [0, 1, 2]
    assert emitter.metrics.count("sent") == 3


def test_failures_are_counted_each_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [0.0]

    def dead(event: Any) -> None:
        raise ConnectionError("connection refused\nmore context")

    emitter = Emitter(dead, log_interval_s=60, clock=lambda: clock[0])
    with caplog.at_level(logging.WARNING, logger="cdc.lineage.emitter"):
        for _ in range(3):
            emitter.emit("e")
        _until(lambda: emitter.metrics.count("failed") == 3)
        clock[0] = 61.0
        emitter.emit("e")
        _until(lambda: emitter.metrics.count("failed") == 4)
        emitter.close(5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "lineage: an OpenLineage event was not sent: connection refused; the run goes on",
        "lineage: an OpenLineage event was not sent: connection refused (and 2 more since the"
        " last report); the run goes on",
    ]
    assert emitter.metrics.count("sent") == 0


def test_close_waits_at_most_its_timeout_for_a_hanging_transport(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hang = threading.Event()
    emitter = Emitter(lambda event: hang.wait(30))
    emitter.emit("a")
    emitter.emit("b")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="cdc.lineage.emitter"):
        emitter.close(0.3)
    assert time.monotonic() - started < 2
    assert "event(s) not sent when the run ended" in caplog.text
    emitter.emit("after close")  # ignored, never raises
    hang.set()


def test_the_counter_lands_in_the_given_registry() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    LineageMetrics(registry).events.labels("failed").inc()
    text = generate_latest(registry).decode()
    assert 'cdc_lineage_events_total{outcome="failed"} 1.0' in text
    assert 'cdc_lineage_events_total{outcome="sent"} 0.0' in text


# -------------------------------------------------------------------------------- runs


class _Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: Any) -> None:
        self.events.append(validate_event(_dict(event)))

    def close(self, timeout_s: float = 0) -> None:
        pass


def _lineage(tmp_path: Path) -> tuple[Lineage, _Recorder]:
    recorder = _Recorder()
    ids = iter([RUN_ID, PARENT_ID])
    lineage = Lineage(
        _settings(root=tmp_path), recorder, clock=lambda: WHEN, new_run_id=lambda: next(ids)
    )  # type: ignore[arg-type]
    return lineage, recorder


def test_a_run_ends_once_by_how_its_block_ends(tmp_path: Path) -> None:
    lineage, recorder = _lineage(tmp_path)
    gold = Table(table_dataset("/lake/gold/t"))
    run = lineage.run("gold.build", outputs=[gold])
    run.start()
    with pytest.raises(CdcError), ended_by_outcome(run) as handle:
        handle.count({gold.id: 5})
        raise CdcError("gold table t is locked")
    run.complete()  # already ended: nothing more
    assert [e["eventType"] for e in recorder.events] == ["START", "FAIL"]
    fail = recorder.events[-1]
    assert fail["run"]["facets"]["errorMessage"]["message"] == "CdcError: gold table t is locked"
    assert "stackTrace" not in fail["run"]["facets"]["errorMessage"]  # a one-line error
    assert fail["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 5

    interrupted = lineage.run("publish")
    with pytest.raises(KeyboardInterrupt), ended_by_outcome(interrupted):
        raise KeyboardInterrupt
    assert recorder.events[-1]["eventType"] == "ABORT"


def test_a_bug_s_fail_event_carries_its_traceback(tmp_path: Path) -> None:
    lineage, recorder = _lineage(tmp_path)
    with pytest.raises(ZeroDivisionError), ended_by_outcome(lineage.run("sla.check")):
        _ = 1 / 0
    error = recorder.events[-1]["run"]["facets"]["errorMessage"]
    assert error["message"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in error["stackTrace"]


def test_with_lineage_off_a_companion_run_does_nothing(tmp_path: Path) -> None:
    settings = _settings(root=tmp_path)
    assert not settings.lineage.enabled  # off in config/local.yaml
    with companion_run(settings, "gold.build") as run:
        assert run is NO_RUN
    assert not (tmp_path / "cp" / "_lineage").exists()


def test_lineage_is_on_in_the_deployed_environments_over_http_with_secret_references() -> None:
    for env in ("dev", "prod"):
        settings = load_settings(env, config_dir=REPO_ROOT / "config", environ={})
        lineage = settings.lineage
        assert lineage.enabled and lineage.transport == "http", env
        assert lineage.http.url == "env:OPENLINEAGE_URL", env
        assert lineage.http.api_key == "env:OPENLINEAGE_API_KEY", env


# -------------------------------------------------------------------------- transports


def test_the_file_transport_defaults_beside_the_checkpoints(tmp_path: Path) -> None:
    settings = _settings("lineage.transport=file", root=tmp_path)
    assert events_file(settings) == str(tmp_path / "cp" / "_lineage" / "events.jsonl")
    assert transport_config(settings) == {
        "type": "file",
        "log_file_path": str(tmp_path / "cp" / "_lineage" / "events.jsonl"),
        "append": True,
    }
    relative = load_settings(
        "local", ["lineage.file.path=var/events.jsonl"], config_dir=REPO_ROOT / "config", environ={}
    )
    assert events_file(relative) == str(REPO_ROOT / "var" / "events.jsonl")


def test_the_http_transport_resolves_its_secrets_and_checks_its_url() -> None:
    environ = {"OL_URL": "https://marquez.internal:5000", "OL_KEY": "k3y"}
    settings = load_settings(
        "local",
        [
            "lineage.enabled=true",
            "lineage.transport=http",
            "lineage.http.url=env:OL_URL",
            "lineage.http.api_key=env:OL_KEY",
        ],
        config_dir=REPO_ROOT / "config",
        environ=environ,
    )
    import os

    old = dict(os.environ)
    os.environ.update(environ)
    try:
        config = transport_config(settings)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert config["url"] == "https://marquez.internal:5000"
    assert config["auth"] == {"type": "api_key", "apiKey": "k3y"}
    assert config["retry"]["total"] == 0
    assert "k3y" not in repr(settings) and "marquez" not in repr(settings)
    bad = _settings(
        "lineage.enabled=true", "lineage.transport=http", "lineage.http.url=marquez:5000"
    )
    with pytest.raises(ConfigError, match=r"^lineage\.http\.url: not an http\(s\) URL$"):
        transport_config(bad)


def test_the_lineage_section_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'lineage\.trasnport'; valid keys: enabled"):
        _settings("lineage.trasnport=file")
    with pytest.raises(ConfigError, match=r"the http transport needs 'http\.url'"):
        _settings("lineage.enabled=true", "lineage.transport=http")
    with pytest.raises(ConfigError, match=r"lineage\.transport: Input should be 'http'"):
        _settings("lineage.transport=carrier-pigeon")


def test_the_agent_gets_the_same_transport_and_the_run_as_its_parent(tmp_path: Path) -> None:
    run = RunRef(RUN_ID, JobRef("cdc-prod", "run"))
    parent = RunRef(PARENT_ID, JobRef("cdc-prod", "scheduler"))
    file = _settings("lineage.transport=file", root=tmp_path)
    conf = agent_conf(file, run, parent)
    assert conf == {
        "spark.openlineage.namespace": "cdc-prod",
        "spark.openlineage.applicationRunId": RUN_ID,
        "spark.openlineage.appName": "run",
        "spark.openlineage.parentRunId": PARENT_ID,
        "spark.openlineage.parentJobName": "scheduler",
        "spark.openlineage.parentJobNamespace": "cdc-prod",
        "spark.openlineage.transport.type": "file",
        "spark.openlineage.transport.location": events_file(file),
    }
    kafka = _settings(
        "lineage.transport=kafka",
        "lineage.kafka.client.security.protocol=SASL_SSL",
        "lineage.kafka.client.sasl.mechanisms=PLAIN",
        "lineage.kafka.client.sasl.username=u",
        "lineage.kafka.client.sasl.password=p",
        "kafka.bootstrap_servers=b1:9092",
        root=tmp_path,
    )
    conf = agent_conf(kafka, run)
    assert conf["spark.openlineage.transport.topicName"] == "openlineage.events"
    props = "spark.openlineage.transport.properties."
    assert conf[props + "bootstrap.servers"] == "b1:9092"
    assert conf[props + "security.protocol"] == "SASL_SSL"
    assert conf[props + "sasl.jaas.config"] == (
        'org.apache.kafka.common.security.plain.PlainLoginModule required username="u"'
        ' password="p";'
    )
    assert "spark.openlineage.parentRunId" not in conf


# ------------------------------------------------------------------------------ datasets


def test_gold_outputs_carry_their_column_lineage_from_silver(tmp_path: Path) -> None:
    settings = _settings(root=tmp_path)
    inputs, outputs = gold_tables(settings, ["daily_revenue"])
    lake = tmp_path / "lake"
    assert [t.id.name for t in inputs] == [
        str(lake / "silver" / s) for s in ("dim_account", "dim_fx_rate", "fact_orders")
    ]
    (gold,) = outputs
    assert gold.id == DatasetId("file", str(lake / "gold" / "daily_revenue"))
    assert gold.columns is not None and gold.column_lineage
    sources = {s for pairs in gold.column_lineage.values() for s, _ in pairs}
    assert sources <= {t.id for t in inputs}
    assert {c.name for c in gold.columns} == set(gold.column_lineage)


def test_publish_names_the_gold_table_in_and_the_warehouse_table_out(tmp_path: Path) -> None:
    settings = _settings(root=tmp_path)
    (gold,), (published,) = publish_tables(settings, ["customer_360"])
    assert gold.id.name == str(tmp_path / "lake" / "gold" / "customer_360")
    assert published.id == warehouse_dataset(settings, "customer_360")
    assert published.column_lineage["account_id"] == [(gold.id, "account_id")]


def test_dr_copies_each_table_to_the_location_and_a_restore_back(tmp_path: Path) -> None:
    settings = _settings(root=tmp_path)
    lake, dr = dr_tables(
        settings, "s3://dr/cdc", ["silver/dim_contact"], rows={"silver/dim_contact": 4}
    )
    assert [t.id for t in lake] == [DatasetId("file", str(tmp_path / "lake/silver/dim_contact"))]
    assert [(t.id, t.rows) for t in dr] == [
        (DatasetId("s3://dr", "cdc/tables/silver/dim_contact"), 4)
    ]
    source, target = dr_tables(settings, "s3://dr/cdc", ["silver/dim_contact"], to="/restored")
    assert [t.id for t in source] == [t.id for t in dr]
    assert [t.id for t in target] == [DatasetId("file", "/restored/silver/dim_contact")]
