"""Apicurio Registry in memory, as a child JVM: a real Confluent-compatible schema registry.

The ``registry`` profile of ``jvm/pom.xml`` copies the release's Quarkus application archive
(``apicurio-registry-app-<version>-all.tar.gz``) into its folder. Central has no flat classpath
that starts it (Quarkus needs its build-time output: ``quarkus-run.jar``, ``quarkus/``,
``lib/``), so :class:`RegistryServer` unpacks the archive into its work folder and runs
``java -jar quarkus-run.jar``. Storage is Apicurio's default in-memory H2 database: every start
is an empty registry. Readiness is a poll of the Confluent API against a deadline.

Apicurio 3.3 is compiled for Java 21; :func:`find_java` looks for a JDK that new.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from cdc.errors import CdcError, JarsMissingError

__all__ = ["CCOMPAT_PATH", "MIN_JAVA", "RegistryServer", "find_java"]

_log = logging.getLogger(__name__)

CCOMPAT_PATH = "/apis/ccompat/v7"
"""Where Apicurio serves the Confluent Schema Registry API."""
MIN_JAVA = 21
"""The Java release Apicurio Registry 3.3 is compiled for (class file version 65)."""

_ARCHIVE_GLOB = "apicurio-registry-app-*-all.tar.gz"
_HOST = "127.0.0.1"
_POLL_INTERVAL_S = 0.1
_STOP_GRACE_S = 15.0
_JVM_ROOTS = (Path("/usr/lib/jvm"),)
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Loopback probes never go through an HTTP proxy from the environment."""


def find_java(minimum: int = MIN_JAVA, roots: Iterable[Path] = _JVM_ROOTS) -> Path:
    """A ``java`` of release ``minimum`` or newer: ``$JAVA_HOME``, then ``PATH``, then ``roots``.

    Args:
        minimum: the lowest acceptable Java feature release.
        roots: folders holding one JDK per sub-folder (Debian's ``/usr/lib/jvm``).

    Returns:
        Path of the ``java`` executable.

    Raises:
        CdcError: no JDK of that release was found; the message lists the ones seen.
    """
    homes: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        homes.append(Path(os.environ["JAVA_HOME"]))
    on_path = shutil.which("java")
    if on_path:
        homes.append(Path(on_path).resolve().parents[1])
    for root in roots:
        if root.is_dir():
            homes.extend(sorted(root.iterdir()))
    seen: list[str] = []
    for home in dict.fromkeys(home.resolve() for home in homes):
        java = home / "bin" / "java"
        release = _java_release(home)
        if release is None or not java.is_file():
            continue
        if release >= minimum:
            return java
        seen.append(f"{home} (Java {release})")
    raise CdcError(
        f"Apicurio Registry needs Java {minimum} or newer; found only: "
        f"{', '.join(seen) or 'none'} (set JAVA_HOME to a newer JDK)"
    )


def _java_release(home: Path) -> int | None:
    """The feature release of the JDK at ``home``, from its ``release`` file."""
    try:
        text = (home / "release").read_text(encoding="utf-8")
    except OSError:
        return None
    # JAVA_VERSION="25.0.3", "21", "26-ea"; Java 8 and older say "1.8.0_x".
    found = re.search(r'^JAVA_VERSION="(?:1\.)?(\d+)', text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class RegistryServer:
    """Apicurio Registry (in-memory storage) on free loopback ports, as a context manager.

    The HTTP API and Quarkus' management interface (health, metrics) each get a free port.
    """

    def __init__(
        self,
        jars: Path,
        workdir: Path,
        *,
        java: Path | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        """Describe a server without starting it (see :meth:`start`).

        Args:
            jars: the ``registry`` profile's folder (holds the ``-all.tar.gz`` archive).
            workdir: where the archive is unpacked (removed again on :meth:`stop`) and the
                log is written (kept).
            java: the ``java`` to run; :func:`find_java` when None.
            startup_timeout: seconds to wait for the API to answer.
        """
        self.jars = jars
        self.workdir = workdir
        self.java = java
        self.startup_timeout = startup_timeout
        self.port = 0
        self.startup_seconds: float | None = None
        """Seconds from launching the JVM to the first good answer of the API."""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API."""
        return f"http://{_HOST}:{self.port}{CCOMPAT_PATH}"

    @property
    def log_path(self) -> Path:
        """stdout and stderr of the JVM."""
        return self.workdir / "registry.log"

    def start(self) -> str:
        """Unpack the application, start it, and wait until ``GET /subjects`` answers 200.

        Returns:
            :attr:`url`.

        Raises:
            JarsMissingError: ``jars`` holds no Apicurio archive.
            CdcError: no suitable Java, or the server exited or did not answer in time
                (the message names the log).
        """
        app = self._unpack()
        java = self.java or find_java()
        self.port = _free_port()
        command = [
            str(java),
            "-Xmx512m",
            f"-Djava.io.tmpdir={self.workdir}",
            f"-Dquarkus.http.host={_HOST}",
            f"-Dquarkus.http.port={self.port}",
            f"-Dquarkus.management.host={_HOST}",
            f"-Dquarkus.management.port={_free_port()}",
            "-jar",
            str(app / "quarkus-run.jar"),
        ]
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        _log.info("Apicurio Registry ready at %s in %.1fs", self.url, self.startup_seconds)
        return self.url

    def stop(self, timeout: float = _STOP_GRACE_S) -> None:
        """SIGTERM the server, SIGKILL it after ``timeout`` seconds; remove the unpacked app.

        Args:
            timeout: seconds to wait after SIGTERM.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._app_dir, ignore_errors=True)

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _unpack(self) -> Path:
        archives = sorted(self.jars.glob(_ARCHIVE_GLOB)) if self.jars.is_dir() else []
        if not archives:
            raise JarsMissingError(
                f"no Apicurio Registry archive ({_ARCHIVE_GLOB}) in {self.jars}: run "
                "`python -m cdc.runtime.jvm install --profile registry`, or set CDC_JARS_DIR "
                "to the folder that holds registry/"
            )
        app = self._app_dir
        if not (app / "quarkus-run.jar").is_file():
            self.workdir.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archives[-1]) as archive:
                archive.extractall(app, filter="data")
        return app

    @property
    def _app_dir(self) -> Path:
        return self.workdir / "app"

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        probe = f"{self.url}/subjects"
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise CdcError(
                    f"Apicurio Registry exited with code {code} before answering "
                    f"(log: {self.log_path})"
                )
            try:
                with _DIRECT.open(probe, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass  # not listening yet
            time.sleep(_POLL_INTERVAL_S)
        raise CdcError(
            f"Apicurio Registry did not answer {probe} within {self.startup_timeout:g}s "
            f"(log: {self.log_path})"
        )
