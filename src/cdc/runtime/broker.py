"""Embedded Apache Kafka broker for development, the demo, the tests and ``cdc broker``.

A real Kafka broker in KRaft mode (one process that is both broker and controller), started
as a child JVM from the JARs that ``make install`` fetched (:mod:`cdc.runtime.jvm`, profile
``kafka``). Its log lives on disk in a work folder, so a restart keeps every topic and offset, as a
production broker does; :meth:`EmbeddedBroker.restart` with ``wipe=True`` formats a new, empty
cluster instead (a broker that lost its data). Readiness is decided by polling (a TCP connect,
then a metadata request) against a deadline, never by a fixed sleep.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, TextIO

from cdc.errors import BrokerUnavailableError
from cdc.runtime.jvm import classpath
from cdc.runtime.kafka_admin import admin_client

__all__ = [
    "EmbeddedBroker",
    "run_broker_forever",
    "wait_for_broker",
]

_log = logging.getLogger(__name__)

_DEFAULT_HOST = "127.0.0.1"
_POLL_INTERVAL_S = 0.05
_STOP_GRACE_S = 30.0
"""A clean shutdown flushes the log and writes the recovery checkpoints; give it time."""
_ADDR_IN_USE_MARKERS = ("Address already in use", "BindException")
_HEAP = "-Xmx512m"
_SERVER_PROPERTIES = "server.properties"
_LOG4J = "log4j2.properties"
_LOG4J_TEXT = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = warn
logger.org.name = org.apache.kafka
logger.org.level = warn
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""


def wait_for_broker(bootstrap: str, timeout: float = 10.0) -> None:
    """Block until a Kafka broker answers a metadata request, or fail after ``timeout``.

    Args:
        bootstrap: ``host:port[,host:port...]`` of the cluster.
        timeout: seconds to wait in total.

    Raises:
        BrokerUnavailableError: no broker answered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    if not _poll_ready(bootstrap, deadline, alive=lambda: None):
        raise BrokerUnavailableError(f"cannot reach Kafka at {bootstrap} within {timeout:g}s")


class EmbeddedBroker:
    """An Apache Kafka broker (KRaft, combined broker + controller, one node) as a child JVM.

    Use :meth:`start` or :meth:`start_on_free_port` to create one; both return a running,
    ready broker. The object is a context manager: on exit it stops the broker and removes
    its work folder if it created that folder itself.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        workdir: Path | None = None,
        controller_port: int | None = None,
        startup_timeout: float = 60.0,
        properties: dict[str, str] | None = None,
    ) -> None:
        """Describe a broker without starting it (see :meth:`start`).

        Args:
            host: loopback address to listen on.
            port: the client (PLAINTEXT) port.
            workdir: folder for the broker's configuration, log file and data (``data/``);
                a temporary folder, removed on :meth:`close`, when None.
            controller_port: the KRaft controller port; a free port when None.
            startup_timeout: seconds to wait for readiness on each (re)start.
            properties: extra ``server.properties`` settings (override the defaults).
        """
        self.host = host
        self.port = port
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="cdc-kafka-"))
        self.controller_port = controller_port or _free_port(host)
        self.startup_timeout = startup_timeout
        self._properties = dict(properties or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @classmethod
    def start(
        cls,
        host: str = _DEFAULT_HOST,
        port: int = 9092,
        *,
        workdir: Path | None = None,
        startup_timeout: float = 60.0,
        properties: dict[str, str] | None = None,
    ) -> EmbeddedBroker:
        """Start a broker on ``host:port`` and wait until it serves metadata.

        Args:
            host: loopback address to listen on.
            port: the client port.
            workdir: the broker's folder (kept; formatted on first use), or None for a
                temporary one.
            startup_timeout: seconds to wait for readiness.
            properties: extra ``server.properties`` settings.

        Returns:
            The running broker.

        Raises:
            BrokerUnavailableError: the port is in use, or the broker did not become ready.
            JarsMissingError: the Kafka JARs are not installed.
        """
        broker = cls(
            host, port, workdir=workdir, startup_timeout=startup_timeout, properties=properties
        )
        try:
            broker._launch()
        except BaseException:
            broker.close()
            raise
        return broker

    @classmethod
    def start_on_free_port(
        cls,
        host: str = _DEFAULT_HOST,
        *,
        workdir: Path | None = None,
        startup_timeout: float = 60.0,
        properties: dict[str, str] | None = None,
        attempts: int = 3,
    ) -> EmbeddedBroker:
        """Start a broker on ports the OS reports free.

        Args:
            host: loopback address to listen on.
            workdir: the broker's folder (kept), or None for a temporary one.
            startup_timeout: seconds to wait for readiness.
            properties: extra ``server.properties`` settings.
            attempts: how many free ports to try if another process races us to one.

        Returns:
            The running broker.

        Raises:
            BrokerUnavailableError: the broker did not become ready on any attempted port.
        """
        last_error: BrokerUnavailableError | None = None
        for _ in range(max(1, attempts)):
            try:
                return cls.start(
                    host,
                    _free_port(host),
                    workdir=workdir,
                    startup_timeout=startup_timeout,
                    properties=properties,
                )
            except BrokerUnavailableError as exc:
                if "already in use" not in str(exc):
                    raise
                last_error = exc
        assert last_error is not None
        raise last_error

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """The broker's log directory (``log.dirs``)."""
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        """The broker's own log (stdout and stderr of the JVM)."""
        return self.workdir / "broker.log"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, or None when stopped."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = _STOP_GRACE_S) -> None:
        """Shut the broker down cleanly (SIGTERM), SIGKILL after ``timeout`` seconds.

        Args:
            timeout: seconds to wait after SIGTERM before sending SIGKILL.
        """
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the broker: a crash, with whatever the OS had not yet written lost."""
        self._terminate(signal.SIGKILL, timeout=_STOP_GRACE_S)

    def restart(self, *, wipe: bool = False) -> None:
        """Stop the broker and start it again on the same ports.

        Args:
            wipe: False keeps the log on disk (every topic, record and offset survives);
                True deletes it and formats a new, empty cluster (new cluster id, new topic
                ids), as if the broker had lost its disk.

        Raises:
            BrokerUnavailableError: the broker did not become ready again.
        """
        self.stop()
        if wipe:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self._launch()

    def close(self) -> None:
        """Stop the broker and remove its work folder if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"EmbeddedBroker(bootstrap={self.bootstrap!r}, {state}, log={str(self.log_path)!r})"

    def _terminate(self, signum: int, timeout: float) -> None:
        process, self._process = self._process, None
        atexit.unregister(self.close)
        if process is not None:
            if process.poll() is None:
                process.send_signal(signum)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _log.warning(
                        "broker pid %d did not stop within %gs; killing it", process.pid, timeout
                    )
                    process.kill()
                    process.wait()
            _log.info(
                "embedded broker %s stopped (exit code %s)", self.bootstrap, process.returncode
            )
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _server_properties(self) -> dict[str, str]:
        host, port, cport = self.host, self.port, self.controller_port
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{cport}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            # Topics are created on purpose (`cdc produce`, the tests), never by a typo.
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Development data (the demo, the tests) carries source timestamps months old;
            # time-based retention would delete it while it is being read.
            "log.retention.ms": "-1",
            **self._properties,
        }

    def _java(self, main_class: str, *args: str) -> list[str]:
        jars = os.pathsep.join(str(jar) for jar in classpath("kafka"))
        java = shutil.which("java") or "java"
        return [
            java,
            _HEAP,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / _LOG4J}",
            "-cp",
            jars,
            main_class,
            *args,
        ]

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / _LOG4J).write_text(_LOG4J_TEXT)
        path = self.workdir / _SERVER_PROPERTIES
        lines = [f"{key}={value}" for key, value in self._server_properties().items()]
        path.write_text("\n".join(lines) + "\n")
        return path

    def _format_storage(self, config: Path) -> None:
        """Format ``log.dirs`` for a new cluster unless it already holds one."""
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = _cluster_id()
        command = self._java(
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)
        )
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
            raise BrokerUnavailableError(f"cannot format Kafka storage in {self.data_dir}: {tail}")

    def _launch(self) -> None:
        if self.is_running:
            return
        for port in (self.port, self.controller_port):
            if _port_in_use(self.host, port):
                raise BrokerUnavailableError(_in_use_message(self.host, port))
        config = self._write_config()
        self._format_storage(config)
        self._log_file = self.log_path.open("ab")
        log_start = self._log_file.tell()
        self._process = subprocess.Popen(
            self._java("kafka.Kafka", str(config)),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
        # A script that dies on an exception must not leave an orphan broker holding the port.
        atexit.register(self.close)
        deadline = time.monotonic() + self.startup_timeout
        process = self._process
        # The liveness check after readiness matters: if another process took the port between
        # our probe and the broker's bind, the metadata answer came from that other process.
        if _poll_ready(self.bootstrap, deadline, alive=process.poll) and process.poll() is None:
            _log.info("embedded Kafka ready at %s (pid %d)", self.bootstrap, process.pid)
            return
        code = process.poll()
        tail = _tail(self.log_path, since=log_start)
        self.kill()
        if any(marker in tail for marker in _ADDR_IN_USE_MARKERS):
            raise BrokerUnavailableError(_in_use_message(self.host, self.port))
        if code is not None:
            raise BrokerUnavailableError(
                f"embedded Kafka exited with code {code} before becoming ready"
                f" (log: {self.log_path})"
            )
        raise BrokerUnavailableError(
            f"cannot reach Kafka at {self.bootstrap} within {self.startup_timeout:g}s"
            f" (log: {self.log_path})"
        )


def run_broker_forever(
    host: str = _DEFAULT_HOST,
    port: int = 9092,
    *,
    workdir: Path | None = None,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Run an embedded broker until SIGINT/SIGTERM (the ``cdc broker`` command).

    Prints exactly ``bootstrap: HOST:PORT`` on ``out`` once the broker is ready, then blocks.

    Args:
        host: loopback address to listen on.
        port: the client port.
        workdir: the broker's folder (its log survives restarts); temporary when None.
        out: stream for the bootstrap line; defaults to ``sys.stdout``.
        stop_event: set it to stop the broker (for callers outside the main thread).

    Raises:
        BrokerUnavailableError: the broker could not start, or exited unexpectedly.
    """
    stream = out if out is not None else sys.stdout
    stop = stop_event or threading.Event()
    restore = _install_stop_handlers(stop)
    try:
        with EmbeddedBroker.start(host, port, workdir=workdir) as broker:
            print(f"bootstrap: {broker.bootstrap}", file=stream, flush=True)
            while not stop.wait(0.2):
                if not broker.is_running:
                    raise BrokerUnavailableError(
                        f"embedded Kafka at {broker.bootstrap} exited unexpectedly"
                        f" (log: {broker.log_path})"
                    )
    finally:
        restore()


def _install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to ``stop``; returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, _handler)

    def _restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return _restore


def _poll_ready(bootstrap: str, deadline: float, alive: Callable[[], int | None]) -> bool:
    """Poll until the cluster answers metadata, ``alive()`` reports an exit code, or deadline."""
    addresses = [_split_host_port(item) for item in bootstrap.split(",") if item.strip()]
    admin: Any = None
    while time.monotonic() < deadline:
        if alive() is not None:
            return False
        if any(_tcp_connects(host, port) for host, port in addresses):
            if admin is None:
                admin = _admin_client(bootstrap)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                metadata = admin.list_topics(timeout=min(remaining, 1.0))
                if metadata.brokers:
                    return True
            except Exception as exc:  # librdkafka raises KafkaException on timeouts
                _log.debug("metadata request to %s failed: %s", bootstrap, exc)
        time.sleep(_POLL_INTERVAL_S)
    return False


def _admin_client(bootstrap: str) -> Any:
    # Short connection attempts: readiness is polled.
    return admin_client(bootstrap, {"socket.connection.setup.timeout.ms": 1000})


def _tcp_connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    try:
        return host.strip("[]") or _DEFAULT_HOST, int(port)
    except ValueError:
        raise BrokerUnavailableError(
            f"invalid Kafka bootstrap address {address.strip()!r}; expected host:port"
        ) from None


def _port_in_use(host: str, port: int) -> bool:
    # SO_REUSEADDR mirrors the broker's own bind, so sockets in TIME_WAIT from a previous run
    # on this port do not count as "in use" while a live listener does.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise BrokerUnavailableError(
                f"cannot start the embedded broker on {host}:{port}: {exc.strerror}"
            ) from exc
    return False


def _in_use_message(host: str, port: int) -> str:
    return f"cannot start the embedded broker: {host}:{port} is already in use"


def _cluster_id() -> str:
    """A random cluster id as Kafka writes them (URL-safe base64 of 16 bytes).

    Like Kafka's own ``Uuid.randomUuid``, never one starting with ``-``: the storage tool would
    read it as an option (``argument --cluster-id/-t: expected one argument``).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(path: Path, since: int = 0, max_bytes: int = 4096) -> str:
    """The end of the log written since byte ``since`` (this launch only)."""
    with contextlib.suppress(OSError), path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(since, handle.tell() - max_bytes))
        return handle.read().decode("utf-8", "replace")
    return ""
