"""The `cdc` command as a user runs it: one-line errors, exit codes, nothing sent on bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration


def cdc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cdc: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unknown_pipeline() -> None:
    line = one_line_error(cdc("run", "--pipeline", "nope"))
    assert "unknown pipeline 'nope'; valid: behavior, crm_accounts" in line


def test_bad_arguments_and_config() -> None:
    assert "unrecognized arguments: --bogus" in one_line_error(cdc("run", "--bogus"))
    assert "unknown env 'qa'" in one_line_error(cdc("run", "--env", "qa"))
    assert "unknown key 'lake.bogus'" in one_line_error(cdc("status", "--set", "lake.bogus=1"))
    assert "--port: 70000 is not a port (1-65535)" in one_line_error(
        cdc("broker", "--port", "70000")
    )
    # A negative timeout would make every Kafka request wait forever.
    assert "kafka.connect_timeout_s: Input should be greater than 0" in one_line_error(
        cdc("status", "--set", "kafka.connect_timeout_s=-1")
    )
    # Before Spark starts (and before the broker is asked): a topic without a contract.
    for command in (("run", "--available-now"), ("replay", "--earliest", "--dry-run")):
        line = one_line_error(
            cdc(*command, "--pipeline", "orders", "--set", "pipelines.orders.topic=events.nope")
        )
        assert "for pipeline orders (topic events.nope); topics with a contract: crm." in line
    assert "pipelines.orders.target: String should match" in one_line_error(
        cdc("status", "--set", "pipelines.orders.target=../../x")
    )


def test_unreachable_broker() -> None:
    port = free_port()
    line = one_line_error(
        cdc(
            "run",
            "--set",
            f"kafka.bootstrap_servers=127.0.0.1:{port}",
            "--set",
            "kafka.connect_timeout_s=1",
        )
    )
    assert line == (
        f"cdc: error: cannot reach Kafka at 127.0.0.1:{port} within 1s "
        "(start the embedded one with 'cdc broker')"
    )
    # status still shows the tables and checkpoints, then exits 2 with the same line.
    down = [f"kafka.bootstrap_servers=127.0.0.1:{port}", "kafka.connect_timeout_s=1"]
    status = cdc("status", "--pipeline", "orders", "--set", down[0], "--set", down[1])
    assert one_line_error(status) == line
    assert "lag         unknown: the broker is unreachable" in status.stdout
    assert "silver" in status.stdout


def test_a_corrupt_delta_log_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "bronze" / "events_orders" / "_delta_log"
    log.mkdir(parents=True)
    (log / f"{0:020d}.json").write_text("garbage{\n")
    line = one_line_error(
        cdc(
            "status",
            "--pipeline",
            "orders",
            "--set",
            f"lake.root={tmp_path}",
            "--set",
            "kafka.bootstrap_servers=127.0.0.1:9",
            "--set",
            "kafka.connect_timeout_s=1",
        )
    )
    assert line.startswith(f"cdc: error: cannot read the Delta table at {log.parent}: "), line


def test_fault_injection_is_refused_in_prod() -> None:
    line = one_line_error(cdc("run", "--env", "prod", env={"CDC_FAULT_INJECT": "mid-commit:1"}))
    assert "CDC_FAULT_INJECT is for tests and refused in env prod" in line


def test_produce_rejects_the_whole_file_on_one_bad_line(tmp_path: Path) -> None:
    from cdc.runtime.broker import EmbeddedBroker

    with EmbeddedBroker.start_on_free_port() as broker:  # its own: nothing else writes there
        _produce_bad_file(broker.bootstrap, tmp_path)


def _produce_bad_file(kafka_bootstrap: str, tmp_path: Path) -> None:
    good = {"key": {"contact_id": "c1"}, "value": None}
    bad = {"key": {"contact_id": 42}, "value": None}
    path = tmp_path / "lines.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\nnot json\n")
    topic = "crm.contacts"
    result = cdc(
        "produce",
        "--topic",
        topic,
        "--file",
        str(path),
        "--set",
        f"kafka.bootstrap_servers={kafka_bootstrap}",
    )
    assert result.returncode == 2, result.stderr
    assert "line 2: key.contact_id" in result.stderr and "line 3" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was sent: the topic is absent or empty.
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=5).topics
    assert topic not in topics or _high_watermarks(kafka_bootstrap, topic) == 0


def _high_watermarks(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False}
    )
    try:
        parts = consumer.list_topics(timeout=5).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in parts
        )
    finally:
        consumer.close()


def test_schemas_check_fails_on_a_breaking_change(tmp_path: Path) -> None:
    registry = tmp_path / "avro"
    shutil.copytree(REPO_ROOT / "schemas" / "avro", registry)
    subject = registry / "crm.contacts-value"
    schema = json.loads((subject / "v3.avsc").read_text())
    row = next(f for f in schema["fields"] if f["name"] == "before")["type"][1]
    row["fields"].append({"name": "loyalty_tier", "type": "string"})  # no default: breaks readers
    (subject / "v4.avsc").write_text(json.dumps(schema))
    index = json.loads((registry / "index.json").read_text())
    index["subjects"]["crm.contacts-value"].append({"version": 4, "id": 99})
    (registry / "index.json").write_text(json.dumps(index))

    result = cdc("schemas", "check", "--set", f"registry.path={registry}")
    assert result.returncode == 2
    assert "crm.contacts-value v4" in result.stderr and "loyalty_tier" in result.stderr
    assert "Traceback" not in result.stderr
    assert cdc("schemas", "check").returncode == 0
