"""Every companion command's OpenLineage run, through the real ``cdc`` command on a small
delta-rs lake (no JVM): START and COMPLETE (or FAIL with the error), each event valid against
the OpenLineage JSON schemas, the datasets each kind reads and writes, row counts where the
command knows them. Then the http transport: events reach a receiver with the API key, and
an endpoint that is down or hangs neither fails nor holds up the run, and is counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cdc.companions.maintenance import maintenance_tables
from cdc.config.lake import table_paths
from cdc.config.settings import Settings
from cdc.gold import GOLD_TABLES, gold_path
from cdc.lineage import table_dataset
from cdc.lineage.datasets import gold_tables, warehouse_dataset
from cdc.lineage.runs import companion_run
from tests.support.endpoints import free_port
from tests.support.lake import existing_tables, lake_settings, write_small_lake
from tests.support.openlineage import read_events, validate_event
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small delta-rs lake: every pipeline's tables, then gold."""
    root = tmp_path_factory.mktemp("lineage-lake")
    write_small_lake(lake_settings(root))
    return root


def _cdc(root: Path, events: Path, *argv: str, overrides: tuple[str, ...] = ()) -> Any:
    sets = [
        f"lake.root={root / 'lake'}",
        f"checkpoints.root={root / 'cp'}",
        "kafka.bootstrap_servers=127.0.0.1:" + str(free_port()),
        "kafka.connect_timeout_s=1",
        "lineage.enabled=true",
        "lineage.transport=file",
        f"lineage.file.path={events}",
        *overrides,
    ]
    command = [sys.executable, "-m", "cdc.cli", *argv, "--config-dir", str(REPO_ROOT / "config")]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, check=False, cwd=root
    )


def _run(lake: Path, tmp_path: Path, job: str, *argv: str, code: int = 0) -> dict[str, Any]:
    """Run one command; its events: one run, START then its end (returned)."""
    events = tmp_path / f"{job}.jsonl"
    done = _cdc(lake, events, *argv)
    assert done.returncode == code, done.stderr
    found = [validate_event(e) for e in read_events([events])]
    assert [e["eventType"] for e in found] in (["START", "COMPLETE"], ["START", "FAIL"]), found
    assert {e["job"]["name"] for e in found} == {job}
    assert {e["job"]["namespace"] for e in found} == {"cdc-local"}
    assert len({e["run"]["runId"] for e in found}) == 1
    assert found[0]["job"]["facets"]["jobType"]["processingType"] == "BATCH"
    return found[-1]


def _ids(datasets: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["namespace"], d["name"]) for d in datasets}


def _rows(dataset: dict[str, Any]) -> int | None:
    stats = (dataset.get("outputFacets") or {}).get("outputStatistics")
    return None if stats is None else int(stats["rowCount"])


def _id(uri: str) -> tuple[str, str]:
    d = table_dataset(uri)
    return d.namespace, d.name


def _settings(lake: Path) -> Settings:
    return lake_settings(lake)


def test_gold_build_reads_silver_and_writes_gold_with_rows_and_column_lineage(
    lake: Path, tmp_path: Path
) -> None:
    end = _run(lake, tmp_path, "gold.build", "gold", "build")
    settings = _settings(lake)
    inputs, _ = gold_tables(settings, GOLD_TABLES)
    assert _ids(end["inputs"]) == {(t.id.namespace, t.id.name) for t in inputs}
    assert _ids(end["outputs"]) == {_id(gold_path(settings, g)) for g in GOLD_TABLES}
    for output in end["outputs"]:
        assert _rows(output) is not None and _rows(output) > 0, output["name"]  # built in full
        assert output["facets"]["columnLineage"]["fields"], output["name"]
        assert output["facets"]["schema"]["fields"], output["name"]
    revenue = next(o for o in end["outputs"] if o["name"].endswith("/gold/daily_revenue"))
    sources = {
        (f["namespace"], f["name"])
        for column in revenue["facets"]["columnLineage"]["fields"].values()
        for f in column["inputFields"]
    }
    assert sources == {
        _id(settings.lake.path("silver", t)) for t in ("dim_account", "dim_fx_rate", "fact_orders")
    }


def test_publish_names_the_gold_table_and_the_warehouse_table(lake: Path, tmp_path: Path) -> None:
    _cdc(lake, tmp_path / "build.jsonl", "gold", "build")  # built whatever ran first
    end = _run(lake, tmp_path, "publish", "publish", "--table", "daily_revenue")
    settings = _settings(lake)
    assert _ids(end["inputs"]) == {_id(gold_path(settings, "daily_revenue"))}
    (published,) = end["outputs"]
    warehouse = warehouse_dataset(settings, "daily_revenue")
    assert (published["namespace"], published["name"]) == (warehouse.namespace, warehouse.name)
    assert published["namespace"] == f"duckdb://{lake / 'warehouse.duckdb'}"
    assert published["name"] == "warehouse.gold.daily_revenue"
    assert _rows(published) is not None  # what this publish wrote (nothing when up to date)
    lineage = published["facets"]["columnLineage"]["fields"]
    assert lineage["revenue"]["inputFields"][0]["name"] == str(
        lake / "lake" / "gold" / "daily_revenue"
    )


@pytest.mark.parametrize(
    ("command", "writes"),
    [(("optimize",), True), (("vacuum", "--dry-run"), True), (("health",), False)],
)
def test_maintain_names_each_table_as_input_and_output(
    lake: Path, tmp_path: Path, command: tuple[str, ...], writes: bool
) -> None:
    end = _run(
        lake,
        tmp_path,
        f"maintain.{command[0]}",
        "maintain",
        *command,
        "--table",
        "crm_contacts",
        code=0,
    )
    settings = _settings(lake)
    expected = {_id(r.uri) for r in maintenance_tables(settings, "crm_contacts")}
    assert _ids(end["inputs"]) == expected
    assert _ids(end["outputs"]) == (expected if writes else set())


def test_dr_snapshot_verify_and_restore_name_the_lake_and_the_dr_location(
    lake: Path, tmp_path: Path
) -> None:
    location = tmp_path / "dr"
    settings = _settings(lake)
    snapshot = _run(lake, tmp_path, "dr.snapshot", "dr", "snapshot", "--location", str(location))
    written = existing_tables(settings)
    assert written
    copies = {(d["namespace"], d["name"]): d for d in snapshot["outputs"]}
    for ref in written:
        assert _id(ref.uri) in _ids(snapshot["inputs"]), ref.name
        copy = copies[_id(f"{location}/tables/{ref.name}")]
        assert _rows(copy) is not None, ref.name
    silver = copies[_id(f"{location}/tables/silver/dim_contact")]
    assert (_rows(silver) or 0) > 0  # the rows of the version copied

    verify = _run(
        lake, tmp_path, "dr.verify", "dr", "verify", "--location", str(location), "--allow-unsigned"
    )
    assert _id(f"{location}/tables/silver/dim_contact") in _ids(verify["inputs"])
    assert verify["outputs"] == []

    target = tmp_path / "restored"
    restore = _run(
        lake,
        tmp_path,
        "dr.restore",
        "dr",
        "restore",
        "--location",
        str(location),
        "--to",
        str(target),
        "--table",
        "silver/dim_contact",
        "--allow-unsigned",
    )
    assert _ids(restore["inputs"]) == {_id(f"{location}/tables/silver/dim_contact")}
    assert _ids(restore["outputs"]) == {_id(f"{target}/silver/dim_contact")}


def test_sla_check_names_the_topics_and_tables_it_judges(lake: Path, tmp_path: Path) -> None:
    # The broker is down: a breach (exit code 1), a run that still completed.
    end = _run(lake, tmp_path, "sla.check", "sla", "check", "--pipeline", "orders", code=1)
    settings = _settings(lake)
    paths = table_paths(settings, settings.pipeline("orders"))
    names = _ids(end["inputs"])
    assert {_id(paths["bronze"]), _id(paths["quarantine"])} <= names
    topics = {(ns, n) for ns, n in names if ns.startswith("kafka://")}
    assert len(topics) == 1 and topics.pop()[1] == "events.orders"
    assert end["outputs"] == []


def test_a_failed_command_emits_fail_with_its_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "lake").mkdir(parents=True)
    end = _run(empty, tmp_path, "publish", "publish", code=2)
    assert end["eventType"] == "FAIL"
    error = end["run"]["facets"]["errorMessage"]
    assert error["message"].startswith("PublishError: gold table(s) customer_360, ")
    assert "not built yet" in error["message"]
    assert error["programmingLanguage"] == "PYTHON"


# --------------------------------------------------------------------------- http transport


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, str, dict[str, Any]]] = []
    hang: threading.Event | None = None

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.hang is not None:
            self.hang.wait(30)
            return
        self.received.append((self.path, self.headers.get("Authorization", ""), json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"received": [], "hang": None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        if handler.hang is not None:
            handler.hang.set()
        server.shutdown()


def _http_run(lake: Path, url: str, *extra: str) -> tuple[float, Any]:
    """A gold build in this process inside its lineage run over http; (seconds, registry)."""
    from prometheus_client import CollectorRegistry

    from cdc.gold import build_gold

    settings = lake_settings(
        lake,
        "lineage.enabled=true",
        "lineage.transport=http",
        f"lineage.http.url={url}",
        *extra,
    )
    registry = CollectorRegistry()
    started = time.monotonic()
    with companion_run(
        settings, "gold.build", *gold_tables(settings, GOLD_TABLES), registry=registry
    ):
        build_gold(settings)
    return time.monotonic() - started, registry


def _count(registry: Any, outcome: str) -> float:
    value = registry.get_sample_value("cdc_lineage_events_total", {"outcome": outcome})
    return float(value or 0)


def test_events_reach_an_http_endpoint_with_the_api_key(
    lake: Path, receiver: tuple[str, type[_Receiver]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = receiver
    monkeypatch.setenv("CDC_TEST_OL_KEY", "k3y-for-the-test")
    _, registry = _http_run(lake, url, "lineage.http.api_key=env:CDC_TEST_OL_KEY")
    assert [(p, a) for p, a, _ in handler.received] == [
        ("/api/v1/lineage", "Bearer k3y-for-the-test")
    ] * 2
    events = [validate_event(e) for _, _, e in handler.received]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert _count(registry, "sent") == 2 and _count(registry, "failed") == 0


def test_a_dead_endpoint_neither_fails_nor_holds_up_the_run_and_is_counted(
    lake: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level("WARNING", logger="cdc.lineage.emitter"):
        _, registry = _http_run(lake, closed)
    assert _count(registry, "failed") == 2 and _count(registry, "sent") == 0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # the first failure, then the count of the rest at the end
    assert warnings[0].startswith("lineage: an OpenLineage event was not sent: ")
    assert warnings[1] == "lineage: 1 more OpenLineage event(s) were not sent"


def test_an_endpoint_that_hangs_does_not_hold_up_the_run_past_its_close_timeout(
    lake: Path, receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    handler.hang = threading.Event()
    baseline, _ = _http_run(lake, f"http://127.0.0.1:{free_port()}")  # fails fast
    seconds, registry = _http_run(
        lake, url, "lineage.http.timeout_s=30", "lineage.close_timeout_s=1"
    )
    # Each post would wait 30 s: the run waits at most close_timeout_s for them.
    assert seconds < baseline + 3, (seconds, baseline)
    assert _count(registry, "sent") == 0


def test_events_reach_a_kafka_topic_keyed_by_job(lake: Path, fresh_kafka: str) -> None:
    from confluent_kafka import Consumer

    from cdc.gold import build_gold

    settings = lake_settings(
        lake,
        "lineage.enabled=true",
        "lineage.transport=kafka",
        f"kafka.bootstrap_servers={fresh_kafka}",
        "lineage.kafka.topic=lineage.events",
    )
    from cdc.runtime.kafka_admin import ensure_topic

    ensure_topic(fresh_kafka, "lineage.events", 1)
    with companion_run(settings, "gold.build", *gold_tables(settings, GOLD_TABLES)):
        build_gold(settings)
    consumer = Consumer(
        {
            "bootstrap.servers": fresh_kafka,
            "group.id": "lineage-test",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe(["lineage.events"])
    received: list[Any] = []
    deadline = time.monotonic() + 60
    while len(received) < 2 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            received.append(message)
    consumer.close()
    events = [validate_event(json.loads(m.value())) for m in received]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    # The client's key: the job, so one job's runs stay in one partition, in order.
    assert {m.key().decode() for m in received} == {"run:cdc-local/gold.build"}
