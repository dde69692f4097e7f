"""The embedded Apache Kafka broker: start, readiness, restart (log kept), wipe (data lost),
stop, port conflicts. The tests of one module share a broker (a JVM start costs seconds)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cdc.errors import BrokerUnavailableError
from cdc.runtime.broker import EmbeddedBroker, run_broker_forever, wait_for_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker.start_on_free_port() as started:
        yield started


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _topics(bootstrap: str) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return set(admin.list_topics(timeout=10).topics)


def test_port_in_use_is_a_one_line_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerUnavailableError) as info:
        EmbeddedBroker.start("127.0.0.1", broker.port)
    assert str(info.value) == (
        f"cannot start the embedded broker: 127.0.0.1:{broker.port} is already in use"
    )
    assert broker.is_running  # the first broker is untouched


def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        producer.produce(topic, b"record-%d" % i, partition=0)
    assert producer.flush(10) == 0


def _watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(low), int(high)
    finally:
        consumer.close()


def test_restart_keeps_the_log_and_wipe_loses_it(broker: EmbeddedBroker) -> None:
    topic = f"broker-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=10)
    _produce(broker.bootstrap, topic, 25)
    old_pid = broker.pid

    broker.restart()

    assert broker.is_running and broker.pid != old_pid
    wait_for_broker(broker.bootstrap, timeout=5)
    assert topic in _topics(broker.bootstrap)
    assert _watermarks(broker.bootstrap, topic) == (0, 25)

    broker.restart(wipe=True)

    wait_for_broker(broker.bootstrap, timeout=5)
    assert topic not in _topics(broker.bootstrap)


def test_start_serves_kafka_and_stop_frees_the_port(broker: EmbeddedBroker) -> None:
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.is_running and broker.pid is not None
    topic = f"broker-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=10)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, b"hello", partition=0)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "t"})
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 1)
    finally:
        consumer.close()
    assert broker.log_path.exists()

    broker.stop()
    assert not broker.is_running and broker.pid is None
    assert not _listening(broker.port)
    broker.stop()  # idempotent


def test_wait_for_broker_times_out_with_a_clear_message() -> None:
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        wait_for_broker(f"127.0.0.1:{port}", timeout=0.5)
    assert str(info.value) == f"cannot reach Kafka at 127.0.0.1:{port} within 0.5s"
    assert time.monotonic() - started < 5


def test_run_broker_forever_until_stopped() -> None:
    port = _free_port()
    stop = threading.Event()
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> int:
            lines.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_broker_forever("127.0.0.1", port, out=Out(), stop_event=stop)  # type: ignore[arg-type]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not lines and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert "".join(lines) == f"bootstrap: 127.0.0.1:{port}\n"
    wait_for_broker(f"127.0.0.1:{port}", timeout=5)
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert not _listening(port)


def test_cli_process_prints_bootstrap_and_stops_on_sigterm() -> None:
    port = _free_port()
    code = (
        "from cdc.runtime.broker import run_broker_forever; "
        f"run_broker_forever('127.0.0.1', {port})"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        if not line:  # it exited: say why
            process.wait(timeout=60)
            pytest.fail(f"exit code {process.returncode}: {process.stderr.read()[-3000:]}")
        assert line == f"bootstrap: 127.0.0.1:{port}\n"
        wait_for_broker(f"127.0.0.1:{port}", timeout=5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0  # a clean Kafka shutdown flushes its log
        assert not _listening(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cluster_ids_never_start_with_a_dash() -> None:
    """The storage tool reads a leading '-' as an option: 1 in 64 formats failed before."""
    from cdc.runtime.broker import _cluster_id

    ids = [_cluster_id() for _ in range(5000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)
