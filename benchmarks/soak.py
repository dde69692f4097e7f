"""``make soak``: produce at a steady rate for a long time while the pipeline is SIGKILLed and
the broker restarted at random moments; then count what was lost, duplicated or wrong.

    python -m benchmarks.soak [--writer delta-rs|delta-spark|both] [--minutes 30] [--rate N]
                              [--kill-every MIN-MAX] [--broker-restart-every MIN-MAX]
                              [--seed S] [--pipeline crm_contacts] [--pipeline orders] ...

Per writer, on a fresh embedded Kafka broker (:class:`cdc.runtime.broker.EmbeddedBroker`, its log on
disk) and a fresh lake:

* **Produce.** A transactional producer (``transactional.id``, idempotence, one transaction
  every ``--txn-ms``, as ``cdc produce`` sends a file) sends ``--rate`` records/s to each
  pipeline's topic from a seeded workload (:mod:`benchmarks.soak_workload`). A record is
  *acknowledged* when its transaction's commit returned; a transaction that fails is
  aborted and its records are sent again in the next one (a source retrying); one whose
  outcome is unknown (a fatal error while committing) is *in doubt* until the end, when a
  ``read_committed`` scan of the topic tells whether it was committed.
* **Chaos.** The pipeline runs as a real ``python -m cdc.cli run`` (continuous, every chosen
  pipeline in one process, ``lake.writer`` set) in a process group of its own. Every
  ``--kill-every`` seconds (uniform in MIN-MAX) the whole group (the Python driver, its JVM,
  the Python workers) gets SIGKILL and a new run starts at once, as a supervisor would. Every
  ``--broker-restart-every`` seconds the broker is restarted on the same port and log
  directory, half the time cleanly (SIGTERM), half the time by SIGKILL. A run that exits on
  its own is restarted after 2 s and counted (``pipeline_exits``).
* **Drain.** After ``--minutes``: the producer stops, the running pipeline is given
  ``--catch-up-s`` to commit everything, then killed, and ``cdc run --available-now`` drains
  what is left (it must exit 0).

What is counted (``soak: <writer>_<name> <value>`` lines, and a JSON report):

* ``lost``: acknowledged records (and in-doubt records the topic shows committed) in neither
  bronze nor quarantine, by (partition, offset, timestamp); ``duplicated``: records a table
  holds more than once or both tables hold, plus fact rows sharing an event id;
  ``misplaced``: records in the wrong table, with the wrong quarantine reason or other bytes,
  and rows of records never committed (an aborted transaction read); ``silver_mismatches``:
  versions (SCD2: key and ``_seq_open``) or event ids (facts) where silver differs from an
  independent model of the committed records (:func:`tests.support.contact_stream.model_silver`,
  :func:`benchmarks.soak_workload.model_facts`). All four must be 0, and the final drain must
  succeed, or the run fails (exit 1).
* ``driver_rss_growth_mib`` / ``_pct``: RSS of the ``cdc run`` driver (its Python process
  and its JVM; the Python workers are reported apart) sampled every second. A run lives
  from one kill to the next, so growth is measured per segment: the median of the last
  ``--rss-window-s`` of the segment minus the median of its first window after
  ``--rss-warmup-s`` (JVM start, first batches); the figure is the longest segment's (the
  JSON lists every segment long enough, and the peak). ``driver_rss_restart_drift_mib``
  compares runs at the same age: the first window of the last run that reached it minus
  that of the first (memory that grows with the tables, not with a process's age).
* ``p50/p99/max_freshness_s``: per acknowledged valid record, its acknowledgement (the
  commit of its producer transaction) → the commit of its micro-batch: the batch id is
  bronze's ``_batch_id``, the time the latest Delta commit of that batch's app transaction
  (``commitInfo`` in ``_delta_log``; silver's is the last one). Kill and restart windows
  are included: that is the point.

Writes ``benchmarks/results/soak.json`` (``--output``). The run's folder (broker log, each
run's output, tables) is removed unless ``--keep`` or a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.contact_stream import PARTITIONS, Rec, Sent, create_topic, send
from tests.support.contact_stream import silver_model_differences as scd2_differences
from tests.support.ledger import landing_ledger
from tests.support.tables import read_table

from benchmarks.live import percentile
from benchmarks.procmem import process_tree
from benchmarks.soak_workload import (
    ContactWorkload,
    OrderWorkload,
    Workload,
    facts_differences,
)

__all__ = [
    "RssSegment",
    "batch_commit_times",
    "freshness",
    "main",
    "parse_range",
    "rss_figures",
    "rss_growth",
    "window_median",
]

log = logging.getLogger("benchmarks.soak")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "soak.json"
WRITERS = ("delta-rs", "delta-spark")
WORKLOADS: dict[str, type[ContactWorkload] | type[OrderWorkload]] = {
    "crm_contacts": ContactWorkload,
    "orders": OrderWorkload,
}
RESTART_BACKOFF_S = 2.0
"""Pause before restarting a run that exited on its own (a supervisor's back-off)."""
COMMIT_DEADLINE_S = 120.0
"""How long the producer retries one transaction's commit before calling it in doubt."""
MIB = 2**20


# --------------------------------------------------------------------------- pure parts


def parse_range(text: str) -> tuple[float, float]:
    """``"60-300"`` → ``(60.0, 300.0)``; one number is a fixed interval.

    Raises:
        argparse.ArgumentTypeError: not ``MIN-MAX`` seconds with 0 < MIN <= MAX.
    """
    parts = text.split("-")
    try:
        low, high = (float(parts[0]), float(parts[-1])) if len(parts) <= 2 else (0.0, -1.0)
    except ValueError:
        low, high = 0.0, -1.0
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX seconds (0 < MIN <= MAX), got {text!r}")
    return low, high


def batch_commit_times(table_uri: str, app_id: str) -> dict[int, float]:
    """When each app-transaction version was committed to a Delta table.

    Reads the JSON commits of ``_delta_log``: a commit holding a ``txn`` action of ``app_id``
    gives its version the commit's ``commitInfo`` time (``inCommitTimestamp`` when the table
    has in-commit timestamps).

    Args:
        table_uri: a local Delta table.
        app_id: the app transaction (:func:`cdc.config.lake.txn_app_id`).

    Returns:
        ``{txn version: epoch seconds}`` ({} when there is no table).
    """
    times: dict[int, float] = {}
    folder = Path(table_uri) / "_delta_log"
    if not folder.is_dir():
        return times
    for path in sorted(folder.glob("*.json")):
        version: int | None = None
        stamp: float | None = None
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            txn = action.get("txn")
            if txn is not None and txn.get("appId") == app_id:
                version = int(txn["version"])
            info = action.get("commitInfo")
            if info is not None:
                stamp = int(info.get("inCommitTimestamp") or info["timestamp"]) / 1000
        if version is not None and stamp is not None:
            times[version] = max(stamp, times.get(version, stamp))
    return times


def freshness(
    landed: Sequence[tuple[int, int, int]],
    acked: dict[tuple[int, int], float],
    committed: dict[int, float],
) -> tuple[list[float], int]:
    """Seconds from each record's acknowledgement to its batch's commit.

    Args:
        landed: ``(partition, offset, batch id)`` of each bronze row.
        acked: ``{(partition, offset): acknowledgement time}`` (epoch seconds).
        committed: ``{batch id: commit time}`` (epoch seconds).

    Returns:
        ``(seconds per record, rows without an acknowledgement or a batch commit time)``.
    """
    out: list[float] = []
    unmeasured = 0
    for partition, offset, batch in landed:
        at = acked.get((partition, offset))
        done = committed.get(batch)
        if at is None or done is None:
            unmeasured += 1
            continue
        out.append(done - at)
    return out, unmeasured


def window_median(
    samples: Sequence[tuple[float, float]], start_s: float, window_s: float
) -> float | None:
    """Median RSS (MiB) of a segment's samples in ``[start_s, start_s + window_s)``.

    Args:
        samples: ``(seconds since the segment started, MiB)``, in time order.
        start_s: where the window starts.
        window_s: its length.

    Returns:
        The median, or None when the segment ended before the window did.
    """
    if not samples or samples[-1][0] < start_s + window_s:
        return None
    inside = [mib for t, mib in samples if start_s <= t < start_s + window_s]
    return statistics.median(inside) if inside else None


def rss_growth(
    samples: Sequence[tuple[float, float]], warmup_s: float, window_s: float
) -> tuple[float, float] | None:
    """A segment's RSS (MiB) in its first window after the warm-up and in its last window.

    Args:
        samples: ``(seconds since the segment started, MiB)``, in time order.
        warmup_s: seconds left out at the start (JVM start, first batches).
        window_s: length of each window.

    Returns:
        ``(median of the first window, median of the last)``, or None when the segment is
        shorter than the warm-up and two windows.
    """
    if not samples or samples[-1][0] < warmup_s + 2 * window_s:
        return None
    end = samples[-1][0]
    first = window_median(samples, warmup_s, window_s)
    last = [mib for t, mib in samples if t > end - window_s]
    if first is None or not last:
        return None
    return first, statistics.median(last)


def rss_figures(segments: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The soak's RSS figures from its segments' summaries (:meth:`RssSegment.summary`):
    growth within the longest measured run, the peak, and the drift between runs at the same
    age (the last run's first window after the warm-up minus the first run's)."""
    measured = [s for s in segments if "driver_growth_mib" in s]
    out: dict[str, Any] = {
        "measured_segments": len(measured),
        "driver_peak_mib": max((s["driver_peak_mib"] for s in segments), default=0.0),
    }
    if measured:
        longest = max(measured, key=lambda s: s["seconds"])
        out.update(
            longest_segment=longest["index"],
            longest_segment_s=longest["seconds"],
            growth_mib=longest["driver_growth_mib"],
            growth_pct=longest["driver_growth_pct"],
            max_growth_mib=max(s["driver_growth_mib"] for s in measured),
        )
    # The same age in every run: does a restart start higher late in the soak than early?
    at_age = [s["driver_first_window_mib"] for s in segments if "driver_first_window_mib" in s]
    if len(at_age) >= 2:
        out["restart_drift_mib"] = round(at_age[-1] - at_age[0], 1)
    return out


# --------------------------------------------------------------------------- producing


@dataclass
class Ledgers:
    """What the producer sent, per topic, by outcome."""

    acked: dict[str, list[Sent]] = field(default_factory=dict)
    ack_time: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)
    aborted: dict[str, list[Sent]] = field(default_factory=dict)
    in_doubt: dict[str, list[Sent]] = field(default_factory=dict)
    transactions: int = 0
    aborted_transactions: int = 0
    in_doubt_transactions: int = 0
    errors: list[str] = field(default_factory=list)


class SoakProducer:
    """Sends every workload's records at ``rate``/s each, one Kafka transaction per window."""

    def __init__(
        self, bootstrap: str, workloads: Sequence[Workload], rate: float, txn_s: float
    ) -> None:
        self.bootstrap = bootstrap
        self.workloads = list(workloads)
        self.rate = rate
        self.txn_s = txn_s
        self.ledgers = Ledgers()
        for w in self.workloads:
            for book in (self.ledgers.acked, self.ledgers.aborted, self.ledgers.in_doubt):
                book[w.topic] = []
            self.ledgers.ack_time[w.topic] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)
        self._transactional_id = f"cdc-soak-{uuid.uuid4().hex}"
        self._producer: Any = None
        self.failure: str | None = None
        """Why the producer thread died (None: it did not)."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the transaction in progress (its commit may wait for the broker).

        Raises:
            RuntimeError: the producer thread died before (a soak that stopped producing
                proves nothing).
        """
        self._stop.set()
        self._thread.join()
        if self.failure is not None:
            raise RuntimeError(f"the soak producer died: {self.failure}")

    def _run(self) -> None:
        try:
            self._produce()
        except Exception as exc:
            log.exception("the soak producer died")
            self.failure = f"{type(exc).__name__}: {exc}"

    def _new_producer(self) -> Any:
        from confluent_kafka import KafkaException, Producer

        while not self._stop.is_set():
            producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "transactional.id": self._transactional_id,
                    "enable.idempotence": True,
                    "linger.ms": 5,
                    "logger": logging.getLogger("benchmarks.soak.librdkafka"),
                }
            )
            try:
                producer.init_transactions(30)
                return producer
            except KafkaException as exc:  # the broker is restarting: try again
                self.ledgers.errors.append(f"init_transactions: {exc}")
                self._stop.wait(1.0)
        return None

    def _produce(self) -> None:
        started = time.monotonic()
        drawn = 0
        carry: list[tuple[str, Rec]] = []
        self._producer = self._new_producer()
        while not self._stop.is_set() and self._producer is not None:
            window = (time.monotonic() - started) // self.txn_s + 1
            self._stop.wait(max(0.0, started + window * self.txn_s - time.monotonic()))
            due = int((time.monotonic() - started) * self.rate)
            batch, carry = carry, []
            for w in self.workloads:
                batch += [(w.topic, rec) for rec in w.take(due - drawn)] if due > drawn else []
            drawn = max(drawn, due)
            if batch:
                carry = self._transaction(batch)

    def _transaction(self, batch: list[tuple[str, Rec]]) -> list[tuple[str, Rec]]:
        """Send ``batch`` in one transaction; returns the records to send again."""
        from confluent_kafka import KafkaException

        books = self.ledgers
        books.transactions += 1
        producer = self._producer
        reports: list[dict[str, Any]] = []
        try:
            producer.begin_transaction()
            for topic, rec in batch:
                reports.append(send(producer, topic, rec))
            left = producer.flush(COMMIT_DEADLINE_S)
            failed = [r["error"] for r in reports if r.get("error") is not None]
            if left or failed:
                books.errors.append(f"delivery: {left} undelivered, errors {failed[:3]}")
                return self._abort(batch, reports)
        except KafkaException as exc:
            books.errors.append(f"produce: {exc}")
            return self._abort(batch, reports)
        deadline = time.monotonic() + COMMIT_DEADLINE_S
        while True:
            try:
                producer.commit_transaction(max(1.0, deadline - time.monotonic()))
                break
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                books.errors.append(f"commit: {exc}")
                if error is not None and error.retriable() and time.monotonic() < deadline:
                    continue
                if error is not None and error.txn_requires_abort():
                    return self._abort(batch, reports)
                return self._in_doubt(batch, reports)
        at = time.time()
        for (topic, rec), report in zip(batch, reports, strict=True):
            sent = Sent(rec, int(report["offset"]))
            books.acked[topic].append(sent)
            books.ack_time[topic][sent.coords] = at
        return []

    def _abort(
        self, batch: list[tuple[str, Rec]], reports: list[dict[str, Any]]
    ) -> list[tuple[str, Rec]]:
        from confluent_kafka import KafkaException

        books = self.ledgers
        try:
            self._producer.abort_transaction(COMMIT_DEADLINE_S)
        except KafkaException as exc:
            books.errors.append(f"abort: {exc}")
            return self._in_doubt(batch, reports)
        books.aborted_transactions += 1
        for (topic, rec), report in zip(batch, reports, strict=False):
            if report.get("error") is None and report.get("offset", -1) >= 0:
                books.aborted[topic].append(Sent(rec, int(report["offset"])))
        return batch

    def _in_doubt(
        self, batch: list[tuple[str, Rec]], reports: list[dict[str, Any]]
    ) -> list[tuple[str, Rec]]:
        """Committed or not, we cannot tell now: a ``read_committed`` scan decides at the
        end. A new producer with the same transactional id finishes or aborts it."""
        books = self.ledgers
        books.in_doubt_transactions += 1
        for (topic, rec), report in zip(batch, reports, strict=False):
            if report.get("error") is None and report.get("offset", -1) >= 0:
                books.in_doubt[topic].append(Sent(rec, int(report["offset"])))
        self._producer = self._new_producer()
        return batch


def committed_in_topic(bootstrap: str, topic: str, partitions: int) -> set[tuple[int, int]]:
    """``(partition, offset)`` of every record a ``read_committed`` consumer sees."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"cdc-soak-audit-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    seen: set[tuple[int, int]] = set()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        at_end: set[int] = set()
        deadline = time.monotonic() + 300
        while len(at_end) < partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic}: the read_committed scan did not reach the end")
            for msg in consumer.consume(1000, timeout=1.0):
                error, partition, offset = msg.error(), msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                if error is None:
                    seen.add((partition, offset))
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(partition)
                else:
                    raise RuntimeError(f"{topic}: {error}")
    finally:
        consumer.close()
    return seen


# --------------------------------------------------------------------------- the pipeline


@dataclass
class RssSegment:
    """One ``cdc run`` process group, from its start to its end.

    Attributes:
        index: 0, 1, ... in start order.
        started: ``time.monotonic()`` at start.
        samples: ``(seconds since start, driver MiB, Python workers MiB)`` each second; the
            driver is the ``cdc run`` Python process and its JVM.
        ended: seconds since the soak started when it ended (None while running).
        end: how it ended: ``killed``, ``exited <code>``, ``stopped``.
    """

    index: int
    started: float
    offset_s: float
    process: subprocess.Popen[bytes]
    log_path: Path
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    ended: float | None = None
    end: str = ""
    last_error: str = ""

    def sample(self) -> None:
        tree = process_tree(self.process.pid)
        driver = sum(rss for rss, role in tree.values() if role in ("driver_python", "driver_jvm"))
        workers = sum(rss for rss, role in tree.values() if role == "python_workers")
        if driver:
            self.samples.append((time.monotonic() - self.started, driver / MIB, workers / MIB))

    def summary(self, warmup_s: float, window_s: float) -> dict[str, Any]:
        length = self.samples[-1][0] if self.samples else 0.0
        out: dict[str, Any] = {
            "index": self.index,
            "started_s": round(self.offset_s, 1),
            "seconds": round(length, 1),
            "end": self.end,
            "driver_peak_mib": round(max((s[1] for s in self.samples), default=0.0), 1),
            "workers_peak_mib": round(max((s[2] for s in self.samples), default=0.0), 1),
        }
        if self.last_error:
            out["last_error"] = self.last_error
        driver = [(t, d) for t, d, _ in self.samples]
        first_window = window_median(driver, warmup_s, window_s)
        if first_window is not None:
            out["driver_first_window_mib"] = round(first_window, 1)
        growth = rss_growth(driver, warmup_s, window_s)
        if growth is not None:
            first, last = growth
            out.update(
                driver_last_window_mib=round(last, 1),
                driver_growth_mib=round(last - first, 1),
                driver_growth_pct=round(100 * (last - first) / first, 2),
            )
        return out


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is alive (zombies do not count)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _last_error(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("cdc: error:") or "Error" in line]
    return (errors[-1] if errors else (lines[-1] if lines else ""))[:500]


class Soak:
    """One writer's soak: broker, producer, chaos, drain, checks."""

    def __init__(self, writer: str, args: argparse.Namespace, root: Path) -> None:
        from cdc.config.settings import load_settings

        self.writer = writer
        self.args = args
        self.root = root
        self.rng = random.Random(f"{args.seed}/{writer}/chaos")
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
        self.bootstrap = ""
        self.events: list[dict[str, Any]] = []
        self.segments: list[RssSegment] = []
        self._segment: RssSegment | None = None
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        base = load_settings("local", config_dir=REPO / "config", environ=self.environ)
        self.others = sorted(set(base.pipelines) - set(args.pipeline))

    # ----------------------------------------------------------------- helpers

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _say(self, text: str) -> None:
        print(f"[{self._elapsed():7.1f}s] {self.writer}: {text}", file=sys.stderr, flush=True)

    def overrides(self) -> list[str]:
        return [
            f"kafka.bootstrap_servers={self.bootstrap}",
            f"lake.root={self.root / 'lake'}",
            f"checkpoints.root={self.root / 'checkpoints'}",
            f"lake.writer={self.writer}",
            *(f"pipelines.{name}.enabled=false" for name in self.others),
        ]

    def settings(self) -> Any:
        from cdc.config.settings import load_settings

        return load_settings(
            "local", overrides=self.overrides(), config_dir=REPO / "config", environ=self.environ
        )

    def _cdc_run(self, *extra: str) -> list[str]:
        command = [sys.executable, "-m", "cdc.cli", "run", "--progress", *extra]
        for item in self.overrides():
            command += ["--set", item]
        return command

    # ----------------------------------------------------------------- segments

    def _start_segment(self) -> RssSegment:
        index = len(self.segments)
        log_path = self.logs / f"run-{index:03d}.log"
        with log_path.open("wb") as sink:
            process = subprocess.Popen(
                self._cdc_run(),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=self.environ,
                cwd=REPO,
                start_new_session=True,  # its own process group: killed whole
            )
        segment = RssSegment(index, time.monotonic(), self._elapsed(), process, log_path)
        with self._lock:
            self.segments.append(segment)
            self._segment = segment
        return segment

    def _end_segment(self, segment: RssSegment, how: str) -> None:
        with self._lock:
            self._segment = None
        with contextlib.suppress(ProcessLookupError):  # an exited driver may leave its JVM
            os.killpg(segment.process.pid, signal.SIGKILL)
        code = segment.process.wait()
        deadline = time.monotonic() + 30
        while _group_alive(segment.process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        segment.ended = self._elapsed()
        segment.end = how if how != "exited" else f"exited {code}"
        if how == "exited":
            segment.last_error = _last_error(segment.log_path)

    def _restart_exited(self, segment: RssSegment) -> RssSegment:
        """A run that exited on its own: note it, start another after a back-off."""
        self._end_segment(segment, "exited")
        self._say(f"cdc run exited on its own ({segment.end}): {segment.last_error}")
        self._event("pipeline-exit", end=segment.end, error=segment.last_error)
        time.sleep(RESTART_BACKOFF_S)
        return self._start_segment()

    def _event(self, what: str, **details: Any) -> None:
        self.events.append({"t": round(self._elapsed(), 1), "what": what, **details})

    def _sampler(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            with self._lock:
                segment = self._segment
            if segment is not None and segment.process.poll() is None:
                segment.sample()

    # ----------------------------------------------------------------- the run

    def run(self) -> dict[str, Any]:
        from cdc.runtime.broker import EmbeddedBroker

        args = self.args
        seed_rng = random.Random(f"{args.seed}/workload")
        workloads: list[Workload] = [
            WORKLOADS[name](random.Random(seed_rng.random()), args.keys) for name in args.pipeline
        ]
        broker = EmbeddedBroker.start_on_free_port(workdir=self.root / "broker")
        stop_sampling = threading.Event()
        sampler = threading.Thread(target=self._sampler, args=(stop_sampling,), daemon=True)
        report: dict[str, Any] = {"writer": self.writer, "workdir": str(self.root)}
        try:
            self.bootstrap = broker.bootstrap
            for w in workloads:
                create_topic(self.bootstrap, w.topic, PARTITIONS)
            producer = SoakProducer(self.bootstrap, workloads, args.rate, args.txn_ms / 1000)
            self._t0 = time.monotonic()
            topics = ", ".join(w.topic for w in workloads)
            self._say(f"broker {self.bootstrap}; {args.rate:g}/s to {topics}, {args.minutes:g} min")
            producer.start()
            sampler.start()
            self._chaos(broker, args.minutes * 60, producer)
            producer.stop()
            acked = sum(map(len, producer.ledgers.acked.values()))
            self._say(f"producer stopped: {acked} records acknowledged; catching up")
            caught_up = self._catch_up(producer.ledgers, args.catch_up_s)
            stop_sampling.set()
            sampler.join()
            if self._segment is not None:
                self._end_segment(self._segment, "stopped")
            report["catch_up_s"] = caught_up
            report["final_drain"] = self._drain(args.drain_timeout_s)
            report.update(self._check(producer.ledgers, workloads))
        finally:
            stop_sampling.set()
            if self._segment is not None:
                self._end_segment(self._segment, "stopped")
            broker.close()
        report["events"] = self.events
        window = (args.rss_warmup_s, args.rss_window_s)
        report["segments"] = [s.summary(*window) for s in self.segments]
        report["rss"] = rss_figures(report["segments"])
        report["figures"] = self._figures(report)
        report["ok"] = self._ok(report)
        return report

    def _chaos(self, broker: Any, seconds: float, producer: SoakProducer) -> None:
        args = self.args
        end = self._t0 + seconds
        next_kill = time.monotonic() + self.rng.uniform(*args.kill_every)
        next_broker = time.monotonic() + self.rng.uniform(*args.broker_restart_every)
        segment = self._start_segment()
        while time.monotonic() < end and producer.failure is None:
            now = time.monotonic()
            if segment.process.poll() is not None:
                segment = self._restart_exited(segment)
            elif now >= next_kill:
                age = now - segment.started
                self._end_segment(segment, "killed")
                self._say(f"SIGKILL cdc run (segment {segment.index}, {age:.0f}s old)")
                self._event("kill", segment=segment.index, age_s=round(age, 1))
                segment = self._start_segment()
                next_kill = time.monotonic() + self.rng.uniform(*args.kill_every)
            elif now >= next_broker:
                how = self.rng.choice(("SIGTERM", "SIGKILL"))
                self._say(f"broker restart ({how})")
                began = time.monotonic()
                if how == "SIGKILL":
                    broker.kill()
                broker.restart()
                down = time.monotonic() - began
                self._say(f"broker back after {down:.1f}s")
                self._event("broker-restart", how=how, down_s=round(down, 1))
                next_broker = time.monotonic() + self.rng.uniform(*args.broker_restart_every)
            else:
                time.sleep(0.5)

    def _catch_up(self, books: Ledgers, timeout_s: float) -> float | None:
        """Let the running pipeline commit everything produced; seconds it took (None: not
        within ``timeout_s``; the drain does the rest)."""
        from cdc.pipeline.checkpoint import committed_offsets
        from cdc.runtime.kafka_admin import KafkaMetadata

        s = self.settings()
        names = list(self.args.pipeline)
        topics = {name: s.pipeline(name).topic for name in names}
        meta = KafkaMetadata({"bootstrap.servers": self.bootstrap}, timeout_s=10)
        began = time.monotonic()
        try:
            while time.monotonic() - began < timeout_s:
                segment = self._segment
                if segment is not None and segment.process.poll() is not None:
                    self._restart_exited(segment)
                marks = meta.watermarks(
                    [(topic, p) for topic in topics.values() for p in range(PARTITIONS)]
                )
                done = True
                for name, topic in topics.items():
                    committed = committed_offsets(s.checkpoint_path(name))
                    position = {} if committed is None else committed[1].get(topic, {})
                    done &= all(
                        int(position.get(str(p), 0)) >= marks[(topic, p)].high
                        for p in range(PARTITIONS)
                    )
                if done:
                    took = time.monotonic() - began
                    self._say(f"caught up in {took:.1f}s")
                    return round(took, 1)
                time.sleep(1.0)
        finally:
            meta.close()
        self._say(f"not caught up within {timeout_s:g}s; the drain goes on from there")
        return None

    def _drain(self, timeout_s: float) -> dict[str, Any]:
        self._say("final drain: cdc run --available-now")
        began = time.monotonic()
        log_path = self.logs / "drain.log"
        with log_path.open("wb") as sink:
            try:
                code = subprocess.run(
                    self._cdc_run("--available-now"),
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=self.environ,
                    cwd=REPO,
                    timeout=timeout_s,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = None
        took = round(time.monotonic() - began, 1)
        self._say(f"final drain exit {code} in {took}s")
        out: dict[str, Any] = {"exit_code": code, "seconds": took}
        if code != 0:
            out["last_error"] = _last_error(log_path)
        return out

    # ----------------------------------------------------------------- checks

    def _check(self, books: Ledgers, workloads: Sequence[Workload]) -> dict[str, Any]:
        from cdc.config.lake import pipeline_tables, txn_app_id

        s = self.settings()
        pipelines: dict[str, Any] = {}
        fresh: list[float] = []
        unmeasured = 0
        for w in workloads:
            topic = w.topic
            visible = committed_in_topic(self.bootstrap, topic, PARTITIONS)
            acked = books.acked[topic]
            doubt_committed = [x for x in books.in_doubt[topic] if x.coords in visible]
            expected = sorted([*acked, *doubt_committed], key=lambda x: x.coords)
            uris = pipeline_tables(s, s.pipeline(w.pipeline))
            tables = {
                role: read_table(uri) if (Path(uri) / "_delta_log").is_dir() else None
                for role, uri in uris.items()
            }
            ledger = landing_ledger(tables["bronze"], tables["quarantine"], expected, topic)
            if w.pipeline == "orders":
                lines, repeated_ids = facts_differences(tables["silver"], expected, topic)
            else:
                lines, repeated_ids = scd2_differences(tables["silver"], expected), 0
            committed: dict[int, float] = {}
            for role, uri in uris.items():
                for batch, at in batch_commit_times(uri, txn_app_id(w.pipeline, role, uri)).items():
                    committed[batch] = max(at, committed.get(batch, at))
            bronze = tables["bronze"]
            landed = (
                []
                if bronze is None
                else list(
                    zip(
                        bronze.get_column("partition").to_list(),
                        bronze.get_column("offset").to_list(),
                        bronze.get_column("_batch_id").to_list(),
                        strict=True,
                    )
                )
            )
            seconds, missed = freshness(landed, books.ack_time[topic], committed)
            fresh += seconds
            unmeasured += missed
            pipelines[w.pipeline] = {
                "topic": topic,
                "acknowledged": len(acked),
                "valid": sum(1 for x in expected if x.rec.reason is None),
                "for_quarantine": sum(1 for x in expected if x.rec.reason is not None),
                "aborted": len(books.aborted[topic]),
                "in_doubt": len(books.in_doubt[topic]),
                "in_doubt_committed": len(doubt_committed),
                "broker_lost": [x.coords for x in acked if x.coords not in visible][:50],
                "aborted_visible": [x.coords for x in books.aborted[topic] if x.coords in visible][
                    :50
                ],
                "lost": ledger.lost,
                "duplicated": ledger.duplicated + repeated_ids,
                "misplaced": ledger.misplaced + len(ledger.other_topics),
                "silver_mismatches": len(lines),
                "examples": {
                    "lost": [*ledger.missing_valid, *ledger.missing_bad][:20],
                    "repeated": ledger.repeated[:20],
                    "in_both": ledger.in_both[:20],
                    "misplaced": [
                        *ledger.valid_in_quarantine,
                        *ledger.bad_in_bronze,
                        *ledger.extra,
                        *ledger.wrong_bytes,
                        *ledger.wrong_reason,
                    ][:20],
                    "silver": lines[:20],
                },
                "batches": len(committed),
            }
        return {
            "pipelines": pipelines,
            "producer": {
                "transactions": books.transactions,
                "aborted_transactions": books.aborted_transactions,
                "in_doubt_transactions": books.in_doubt_transactions,
                "errors": len(books.errors),
                "first_errors": books.errors[:10],
            },
            "freshness": {
                "records": len(fresh),
                "unmeasured": unmeasured,
                "min_s": round(min(fresh), 3) if fresh else float("nan"),
                "p50_s": round(percentile(fresh, 50), 3),
                "p99_s": round(percentile(fresh, 99), 3),
                "max_s": round(max(fresh), 3) if fresh else float("nan"),
            },
        }

    def _figures(self, report: dict[str, Any]) -> dict[str, float]:
        pipelines = report.get("pipelines", {})
        nan = float("nan")

        def total(key: str) -> float:
            return sum(p[key] for p in pipelines.values()) if pipelines else nan

        rss, fresh = report["rss"], report.get("freshness", {})
        return {
            "records": total("acknowledged"),
            "lost": total("lost"),
            "duplicated": total("duplicated"),
            "misplaced": total("misplaced"),
            "silver_mismatches": total("silver_mismatches"),
            "driver_rss_growth_mib": rss.get("growth_mib", nan),
            "driver_rss_growth_pct": rss.get("growth_pct", nan),
            "driver_rss_peak_mib": rss["driver_peak_mib"],
            "driver_rss_restart_drift_mib": rss.get("restart_drift_mib", nan),
            "p50_freshness_s": fresh.get("p50_s", nan),
            "p99_freshness_s": fresh.get("p99_s", nan),
            "max_freshness_s": fresh.get("max_s", nan),
            "kills": sum(1 for e in self.events if e["what"] == "kill"),
            "broker_restarts": sum(1 for e in self.events if e["what"] == "broker-restart"),
            "pipeline_exits": sum(1 for e in self.events if e["what"] == "pipeline-exit"),
        }

    @staticmethod
    def _ok(report: dict[str, Any]) -> bool:
        f = report["figures"]
        drained = report.get("final_drain", {}).get("exit_code") == 0
        wrong = (f["lost"], f["duplicated"], f["misplaced"], f["silver_mismatches"])
        return drained and all(v == 0 for v in wrong)


# --------------------------------------------------------------------------- main


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_1m_at_start": round(os.getloadavg()[0], 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--writer", choices=(*WRITERS, "both"), default="both")
    parser.add_argument("--minutes", type=float, default=30.0, help="producing time (30)")
    parser.add_argument("--rate", type=float, default=20.0, help="records/s per pipeline (20)")
    parser.add_argument(
        "--kill-every",
        type=parse_range,
        default=(60.0, 300.0),
        metavar="MIN-MAX",
        help="seconds between SIGKILLs of the pipeline, uniform (60-300)",
    )
    parser.add_argument(
        "--broker-restart-every",
        type=parse_range,
        default=(90.0, 360.0),
        metavar="MIN-MAX",
        help="seconds between broker restarts, uniform (90-360)",
    )
    parser.add_argument("--seed", type=int, default=1, help="workload and chaos seed (1)")
    parser.add_argument(
        "--pipeline",
        action="append",
        choices=sorted(WORKLOADS),
        help="pipelines to run (repeatable; default: crm_contacts and orders)",
    )
    parser.add_argument("--keys", type=int, default=200, help="contacts / open orders (200)")
    parser.add_argument("--txn-ms", type=int, default=500, help="one transaction per (500 ms)")
    parser.add_argument(
        "--rss-warmup-s", type=float, default=60.0, help="RSS: seconds after a start left out (60)"
    )
    parser.add_argument("--rss-window-s", type=float, default=30.0, help="RSS: window (30 s)")
    parser.add_argument(
        "--catch-up-s", type=float, default=300.0, help="wait for the pipeline at the end (300)"
    )
    parser.add_argument(
        "--drain-timeout-s", type=float, default=1200.0, help="final drain deadline (1200)"
    )
    parser.add_argument("--workdir", type=Path, help="run folder (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON report ({RESULTS})")
    args = parser.parse_args(argv)
    args.pipeline = sorted(set(args.pipeline or WORKLOADS))
    if args.minutes <= 0 or args.rate <= 0 or args.keys < 5 or args.txn_ms < 10:
        parser.error("--minutes and --rate must be positive, --keys >= 5, --txn-ms >= 10")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("benchmarks.soak.librdkafka").setLevel(logging.CRITICAL)  # in the report

    writers = WRITERS if args.writer == "both" else (args.writer,)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="cdc-soak-"))
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "machine": _machine(),
        "runs": {},
    }
    for writer in writers:
        folder = root / writer
        shutil.rmtree(folder, ignore_errors=True)
        try:
            run = Soak(writer, args, folder).run()
        except Exception as exc:  # report it, keep the folder, go on with the next writer
            log.exception("soak on %s failed", writer)
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            run = {"writer": writer, "workdir": str(folder), "ok": False, "error": error}
            run["figures"] = {}
        report["runs"][writer] = run
        if run["ok"] and not args.keep and not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
            run["workdir"] = None
    if not args.keep and not args.workdir and not any(root.iterdir()):
        root.rmdir()
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print()
    for writer, run in report["runs"].items():
        state = "ok" if run["ok"] else "FAILED"
        where = f" (kept: {run['workdir']})" if run.get("workdir") else ""
        print(f"{writer}: {state}{where}" + (f": {run['error']}" if "error" in run else ""))
    print(f"report: {args.output}")
    for writer, run in report["runs"].items():
        prefix = writer.replace("-", "_")
        for name, value in run["figures"].items():
            shown = f"{value:.0f}" if float(value).is_integer() else f"{value:.4g}"
            print(f"soak: {prefix}_{name} {shown}")
    sys.stdout.flush()
    return 0 if all(run["ok"] for run in report["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
