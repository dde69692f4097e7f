"""Peak resident memory of this process and its descendants, sampled from ``/proc`` (Linux).

The Spark driver in local mode is two processes: this Python process (the ``foreachBatch``
code, delta-rs, polars) and the JVM it started (Spark's Kafka source: offsets, planning, the
fetch). The JVM forks the Python workers: the ``pyspark.daemon`` and its forked workers (the
``mapInArrow`` decode). :class:`RssSampler` follows all of them by parent pid. The embedded
Kafka broker is a JVM started by this process too; it is counted apart (``broker``), not as
the driver's JVM.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MemoryPeaks", "RssSampler", "process_tree"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_BROKER_MAIN = "kafka.Kafka"
"""Main class of the embedded broker's JVM (:mod:`cdc.runtime.broker`)."""


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, RSS bytes, role) of a live process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    ppid, rss_pages = int(fields[1]), int(fields[21])
    return ppid, rss_pages * _PAGE, _role(cmdline)


def _role(cmdline: str) -> str:
    words = cmdline.split()
    if words and "java" in words[0]:
        return "broker" if _BROKER_MAIN in words else "driver_jvm"
    if "pyspark" in cmdline:  # pyspark.daemon, pyspark.worker and their forks
        return "python_workers"
    return "other"


def process_tree(root: int) -> dict[int, tuple[int, str]]:
    """``{pid: (rss bytes, role)}`` of ``root`` and every descendant."""
    parents: dict[int, int] = {}
    info: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        found = _stat(int(entry))
        if found is not None:
            parents[int(entry)] = found[0]
            info[int(entry)] = (found[1], found[2])
    tree: dict[int, tuple[int, str]] = {}
    for pid in info:
        walk, depth = pid, 0
        while walk not in (root, 0, 1) and depth < 32:
            walk, depth = parents.get(walk, 0), depth + 1
        if walk == root:
            tree[pid] = info[pid] if pid != root else (info[pid][0], "driver_python")
    return tree


@dataclass
class MemoryPeaks:
    """Peak RSS (MiB) per role while the sampler ran.

    Attributes:
        driver_python: this process (foreachBatch, delta-rs, polars; the reference too).
        driver_jvm: the Spark driver JVM.
        python_workers: all Spark Python workers together (at the same instant).
        largest_python_worker: the largest single Spark Python worker.
        samples: how many samples were taken.
    """

    driver_python: float = 0.0
    driver_jvm: float = 0.0
    python_workers: float = 0.0
    largest_python_worker: float = 0.0
    samples: int = 0


class RssSampler:
    """Samples the process tree every ``interval_s`` in a thread; ``with`` it around a run."""

    def __init__(self, interval_s: float = 0.2, root: int | None = None) -> None:
        self.interval_s = interval_s
        self.root = root if root is not None else os.getpid()
        self.peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample now."""
        tree = process_tree(self.root)
        mib = 2**20
        sums: dict[str, float] = {}
        largest = 0.0
        for rss, role in tree.values():
            sums[role] = sums.get(role, 0.0) + rss / mib
            if role == "python_workers":
                largest = max(largest, rss / mib)
        p = self.peaks
        p.driver_python = max(p.driver_python, sums.get("driver_python", 0.0))
        p.driver_jvm = max(p.driver_jvm, sums.get("driver_jvm", 0.0))
        p.python_workers = max(p.python_workers, sums.get("python_workers", 0.0))
        p.largest_python_worker = max(p.largest_python_worker, largest)
        p.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.peaks = MemoryPeaks()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
