"""A real Spark standalone cluster on loopback: one master and N workers, each its own JVM.

Started from the pinned pyspark's own launcher (``pyspark/bin/spark-class``), so the cluster
runs exactly the Spark the service runs. Readiness is polled from the master's JSON status
page (``/json``: every worker ALIVE); nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyspark

__all__ = ["StandaloneCluster", "standalone_cluster"]

SPARK_HOME = Path(pyspark.__file__).parent
START_TIMEOUT_S = 180.0
"""A JVM start costs ~13 s here, several at once more: generous, but bounded."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class StandaloneCluster:
    """The running cluster: its master URL and where its processes log."""

    master_url: str
    status_url: str
    log_dir: Path

    def status(self) -> dict[str, object]:
        """The master's status page (workers, applications)."""
        with urllib.request.urlopen(self.status_url, timeout=5) as response:
            status: dict[str, object] = json.load(response)
            return status

    def logs(self) -> str:
        """The tail of every process's log, for an assertion message."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
            for path in sorted(self.log_dir.glob("*.log"))
        )


def _spark_class(main: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_NO_DAEMONIZE": "1",
    }
    with log.open("wb") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            [str(SPARK_HOME / "bin" / "spark-class"), main, *args],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )


@contextmanager
def standalone_cluster(
    workdir: Path, workers: int = 2, cores: int = 1, memory: str = "1g"
) -> Iterator[StandaloneCluster]:
    """Start a master and ``workers`` workers; stop every process on exit.

    Raises:
        RuntimeError: the cluster did not come up (with the processes' logs).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port, ui = _free_port(), _free_port()
    procs = [
        _spark_class(
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
            log=workdir / "master.log",
        )
    ]
    cluster = StandaloneCluster(
        master_url=f"spark://127.0.0.1:{port}",
        status_url=f"http://127.0.0.1:{ui}/json/",
        log_dir=workdir,
    )
    try:
        for n in range(workers):
            procs.append(
                _spark_class(
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--webui-port",
                    str(_free_port()),
                    "--work-dir",
                    str(workdir / f"worker-{n}"),
                    cluster.master_url,
                    log=workdir / f"worker-{n}.log",
                )
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            dead = [p.args[1] for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while starting\n{cluster.logs()}")
            try:
                alive = [w for w in cluster.status().get("workers", []) if w["state"] == "ALIVE"]  # type: ignore[attr-defined]
            except (OSError, ValueError):  # not listening yet, or a page still empty
                alive = []
            if len(alive) == workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(alive)} of {workers} workers alive after {START_TIMEOUT_S:g}s\n"
                    f"{cluster.logs()}"
                )
            time.sleep(0.5)  # polling interval of the readiness check
        yield cluster
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
