"""``make bench``: the pipeline on each writer, a hand-written Spark MERGE and a one-process
reference, measured side by side in one run on the same Kafka topic and data.

    python -m benchmarks.run [--modes throughput,latency,merge] [--quick | --full]
                             [--events N] [--keys K] [--batch B] [--partitions P] ...

Starts an embedded Apache Kafka broker (:class:`cdc.runtime.broker.EmbeddedBroker`, KRaft) and
produces N Debezium contact envelopes over K keys (:mod:`benchmarks.events`). The contenders:

* **pipeline, delta-rs / delta-spark**: ``cdc.pipeline.queries`` on ``crm_contacts`` (Spark's Kafka
  source decoded with ``mapInArrow``, bronze + silver) with ``lake.writer`` set to each
  writer in turn;
* **textbook** (:mod:`benchmarks.textbook`): the delta-spark ``foreachBatch`` SCD2 MERGE of
  the Delta Lake docs (staged union, latest event per key), same source and decoder;
* **columnar reference** (:mod:`benchmarks.reference`): one process, confluent-kafka → the
  pipeline's columnar decoder → ``apply_scd2`` → delta-rs MERGE, no bronze; and the same
  reference decoding with fastavro (the reference as first specified).

Every Spark contender runs in one SparkSession (``--master``, default ``local[2]``), each
warmed first by a small run of its own. The default writer is the one ``config/local.yaml``
(else :class:`cdc.config.settings.LakeSettings`) selects. Modes:

* ``throughput``: each contender drains the topic (available-now, batches of B); events/s.
  Both pipelines' silver tables must equal the reference's, and the textbook's current rows
  (keys, tracked columns) too, or the run fails.
* ``latency``: a producer sends ``--rate`` events/s for ``--seconds`` to a fresh topic while
  the pipeline runs with a ``--trigger`` trigger; per event, delivery-report time → end of the
  silver MERGE that made it visible; p50/p99/max for the pipeline on each writer of
  ``--latency-writers`` and for the reference run as a live consumer with the same trigger.
* ``merge`` (:mod:`benchmarks.merge`): one MERGE of ``--merge-batch`` updates into dimensions
  of ``--dimension-keys`` keys built directly (no Kafka), on each writer: delta-spark as
  ``DistributedBatchWriter`` creates and merges its dimension (partitioned by ``is_current``,
  deletion vectors on), delta-rs as ``DeltaSink`` does (copy-on-write); growth large/small.
* ``steady``, ``memory``, ``scaling`` (not in the default run): the pipeline on the default
  writer next to the reference: a running query's rate after a warm-up; peak RSS of driver
  and workers for two backlogs; events/s at two sizes and the driver-side batch cost
  (``LocalBatchWriter.process``, delta-rs) against two dimension sizes and a long history.

The default (``make bench``) is throughput, latency and merge at CI sizes (11-13 minutes on
2 cores); ``--quick`` is a smoke test at small sizes, ``--full`` the performance issue's sizes.
Prints a table, then ends with four machine-readable lines (``bench: <name> <float>``).
Writes ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from tests.support.decoding import decode_messages

from benchmarks.events import encode_events, produce_events
from benchmarks.live import (
    RateProducer,
    latencies,
    percentile,
    run_query_until,
    steady_rate,
)
from benchmarks.procmem import RssSampler
from benchmarks.reference import LiveReference, ReferenceResult, run_reference
from cdc.config.settings import Settings, load_settings
from cdc.ingest.registry import FileRegistry

__all__ = ["compare_current", "compare_tables", "default_writer", "main", "write_contracts"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "latest.json"
PIPELINE = "crm_contacts"
MODES = ("throughput", "latency", "merge", "tables", "steady", "memory", "scaling")
DEFAULT_MODES = ("throughput", "latency", "merge", "tables")
WRITERS = ("delta-rs", "delta-spark")
TEXTBOOK = "textbook"
WARMUP_EVENTS = 5_000
LATENCY_LINGER_MS = 5
"""The latency producer's linger.ms: librdkafka's default, and the Java producer's since
Kafka 4.0. The clock starts at the broker's acknowledgement, so linger is not part of the
measured latency; it sets how many produce requests the broker handles. The embedded Kafka
broker uses ~0.2 of a core at 2,000 events/s with linger 5, flat over 120 s (~0.07 at 25;
docs/performance.md), so the default is kept."""

CI: dict[str, Any] = {
    "events": 200_000,
    "keys": 20_000,
    "batch": 50_000,
    "rate": 2_000,
    "seconds": 60,
    "latency_writers": "all",
    "memory_events": (50_000, 200_000),
    "scaling_events": (50_000, 200_000),
    "dimension_keys": (10_000, 1_000_000),
    "merge_batch": 10_000,
    "merge_repeats": 3,
    "history_rounds": 20,
    "tables": (1, 10, 50),
    "table_events": 20_000,
}
FULL: dict[str, Any] = {
    **CI,
    "events": 1_000_000,
    "keys": 100_000,
    "seconds": 120,
    "memory_events": (250_000, 1_000_000),
    "scaling_events": (100_000, 1_000_000),
    "history_rounds": 100,
}
QUICK: dict[str, Any] = {
    **CI,
    "events": 20_000,
    "keys": 2_000,
    "batch": 10_000,
    "seconds": 15,
    "latency_writers": "default",
    "memory_events": (5_000, 20_000),
    "scaling_events": (5_000, 20_000),
    "dimension_keys": (1_000, 100_000),
    "merge_batch": 1_000,
    "merge_repeats": 1,
    "history_rounds": 10,
    "tables": (1, 10),
    "table_events": 2_000,
}
SIZE_ARGS = (
    "events",
    "keys",
    "batch",
    "rate",
    "seconds",
    "latency_writers",
    "memory_events",
    "scaling_events",
    "dimension_keys",
    "merge_batch",
    "merge_repeats",
    "history_rounds",
    "tables",
    "table_events",
)

log = logging.getLogger("benchmarks")


def default_writer() -> str:
    """``lake.writer`` of the ``local`` environment: ``config/local.yaml``, else the default
    of :class:`cdc.config.settings.LakeSettings` (environment overrides ignored)."""
    return load_settings("local", config_dir=REPO / "config", environ={}).lake.writer


def write_contracts(path: Path, topics: list[str]) -> Path:
    """The repository's contracts plus, for each bench topic, a copy of ``crm.contacts``'s.

    Contracts are keyed by topic name; the bench topics carry contact envelopes.
    """
    import yaml

    contracts = yaml.safe_load((REPO / "schemas" / "contracts.yaml").read_text("utf-8"))
    for topic in topics:
        contracts[topic] = contracts["crm.contacts"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(contracts, sort_keys=True), encoding="utf-8")
    return path


def _silver(settings: Settings) -> str:
    from cdc.config.lake import table_paths

    return table_paths(settings, settings.pipeline(PIPELINE))["silver"]


def _read(uri: str) -> pl.DataFrame:
    """The whole table, deletion vectors honoured (delta-spark writes them)."""
    import pyarrow as pa

    from cdc.store.delta_rs import DeltaRsStore

    table = DeltaRsStore().read(uri)
    assert table is not None, f"no table at {uri}"
    # Plain types whoever wrote the table: no dictionaries (partition values), no views.
    fields = [
        pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
        for f in table.schema
    ]
    frame = pl.from_arrow(table.cast(pa.schema(fields)))
    assert isinstance(frame, pl.DataFrame)
    return frame


def compare_tables(
    reference: pl.DataFrame, pipeline: pl.DataFrame, keys: list[str]
) -> dict[str, Any]:
    """Compare two SCD2 tables: all versions, and current rows per key.

    Args:
        reference: the reference's silver table.
        pipeline: the pipeline's silver table.
        keys: the dimension's key columns.

    Returns:
        ``versions``/``current_rows`` of each, and ``all_versions_equal``/``current_equal``.
    """
    columns = sorted(reference.columns)
    order = [*keys, "_seq_open"]
    ref = reference.select(columns).sort(order)
    got = pipeline.select(sorted(pipeline.columns)).sort(order)
    same_layout = got.columns == columns
    if same_layout:  # the same values whatever each writer's physical types
        got = got.cast(ref.schema, strict=False)
    business = [
        c
        for c in columns
        if not c.startswith("_") and c not in ("valid_from", "valid_to", "is_current")
    ]
    ref_current = ref.filter(pl.col("is_current")).select(business).sort(keys)
    got_current = (
        got.filter(pl.col("is_current")).select(business).sort(keys) if same_layout else None
    )
    return {
        "reference_versions": ref.height,
        "pipeline_versions": got.height,
        "reference_current_rows": ref_current.height,
        "pipeline_current_rows": 0 if got_current is None else got_current.height,
        "all_versions_equal": same_layout and ref.equals(got),
        "current_equal": got_current is not None and ref_current.equals(got_current),
    }


def compare_current(
    reference: pl.DataFrame, textbook: pl.DataFrame, keys: list[str], tracked: list[str]
) -> dict[str, Any]:
    """The textbook against the reference: current rows' keys and tracked columns.

    The textbook applies the latest event per key and batch and leaves untracked columns as
    they were when the version opened, so only keys and tracked columns of current rows are
    comparable (equal on in-order data).
    """
    columns = [*keys, *tracked]
    ref = reference.filter(pl.col("is_current")).select(columns).sort(keys)
    got = textbook.filter(pl.col("is_current")).select(columns).sort(keys)
    got = got.cast(ref.schema, strict=False)
    return {
        "reference_versions": reference.height,
        "textbook_versions": textbook.height,
        "reference_current_rows": ref.height,
        "textbook_current_rows": got.height,
        "current_tracked_equal": ref.equals(got),
    }


def _drained(
    events: int,
    seconds: float,
    batches: list[dict[str, Any]],
    verified: dict[str, Any],
    check: str,
) -> dict[str, Any]:
    """One contender's drain of the topic: rate, batches, and whether its silver checked out
    (``verified[check]``) with every event read."""
    rows = sum(b["rows"] for b in batches)
    return {
        "seconds": seconds,
        "events_per_s": _rate(events, seconds),
        "in_foreach_batch_seconds": sum(b["seconds"] for b in batches),
        "batches": batches,
        "input_rows": rows,
        "verified": verified,
        "ok": bool(verified[check] and rows == events),
    }


def _rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


class Bench:
    """One benchmark run: the broker, the Spark session and the results, shared by the modes."""

    def __init__(self, bootstrap: str, workdir: Path, args: argparse.Namespace) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.args = args
        self.writer = default_writer()
        self.writers = [self.writer, *(w for w in WRITERS if w != self.writer)]
        """Default writer first."""
        self.registry = FileRegistry.load(REPO / "schemas" / "avro")
        self.contracts = workdir / "contracts.yaml"
        self.topics: dict[int, str] = {}
        self.report: dict[str, Any] = {}
        self._contract_topics: set[str] = set()
        self._spark: Any = None
        self._warm: set[str] = set()
        self._warm_topic: str | None = None
        self._runs = 0

    # ---------------------------------------------------------------- shared helpers

    def register(self, topic: str) -> str:
        """Give ``topic`` the contact contract (the contracts file is rewritten)."""
        if topic not in self._contract_topics:
            self._contract_topics.add(topic)
            write_contracts(self.contracts, sorted(self._contract_topics))
        return topic

    def topic(self, events: int) -> str:
        """A topic holding ``events`` envelopes over ``--keys`` keys (produced once)."""
        if events not in self.topics:
            name = self.register(f"bench.contacts.{events}")
            stats = produce_events(
                self.bootstrap, name, events, self.args.keys, self.args.partitions, self.registry
            )
            print(
                f"produced {events:,} events to {name} in {stats.produce_seconds:.1f}s "
                f"(encoded in {stats.encode_seconds:.1f}s)",
                file=sys.stderr,
            )
            self.topics[events] = name
            self.report.setdefault("produce", {})[str(events)] = {
                **asdict(stats),
                "events_per_s": _rate(events, stats.produce_seconds),
            }
        return self.topics[events]

    def _root(self) -> Path:
        self._runs += 1
        return self.workdir / f"run{self._runs}"

    def settings(
        self,
        topic: str,
        batch: int | None = None,
        trigger: str | None = None,
        writer: str | None = None,
    ) -> Settings:
        """Fresh tables and checkpoint for one run of the pipeline on ``topic``."""
        root = self._root()
        overrides = [
            f"kafka.bootstrap_servers={self.bootstrap}",
            f"registry.contracts={self.contracts}",
            "kafka.embedded=false",
            f"lake.root={root / 'lake'}",
            f"checkpoints.root={root / 'checkpoints'}",
            f"pipelines.{PIPELINE}.topic={topic}",
            f"defaults.max_records_per_trigger={batch or self.args.batch}",
            "metrics.enabled=false",
            f"lake.writer={writer or self.writer}",
        ]
        if trigger is not None:
            overrides.append(f"spark.trigger_interval={trigger}")
        return load_settings("local", overrides=overrides, config_dir=REPO / "config", environ={})

    def spark(self) -> Any:
        """The session (one per process), warmed by the default writer's pipeline."""
        if self._spark is None:
            from cdc.runtime.spark import build_session

            warm = self.register("bench.contacts.warmup")
            produce_events(
                self.bootstrap,
                warm,
                WARMUP_EVENTS,
                WARMUP_EVENTS // 10,
                self.args.partitions,
                self.registry,
            )
            self._warm_topic = warm
            settings = self.settings(warm)
            conf = {**settings.spark.conf, "spark.ui.showConsoleProgress": "false"}
            self._spark = build_session(app_name="cdc-bench", master=self.args.master, conf=conf)
            self.warm(self.writer)
        return self._spark

    def warm(self, contender: str) -> None:
        """Run ``contender`` (a writer, or the textbook) once on the small warm-up topic."""
        spark = self.spark()
        if contender in self._warm:
            return
        assert self._warm_topic is not None
        self._warm.add(contender)
        print(f"warm-up: {contender} ...", file=sys.stderr)
        if contender == TEXTBOOK:
            self.textbook(self._warm_topic)
        else:
            from cdc.pipeline.queries import run_pipelines

            settings = self.settings(self._warm_topic, writer=contender)
            run_pipelines(spark, settings, [PIPELINE], available_now=True)

    def tables(self, counts: tuple[int, ...], events: int) -> dict[str, Any]:
        """A whole database in one job (``databases``): ``events`` contact envelopes spread
        over N table topics of one connector, for each N of ``counts``; one query per table,
        on the default writer. ``startup_s``: from the run's start (listing the topics,
        generating the pipelines) until every table's first batch has landed;
        ``events_per_s``: all events over the whole drain; ``rss_mb``: the driver process's
        peak resident memory after it."""
        import resource

        from cdc.pipeline.databases import generated, with_tables
        from cdc.pipeline.queries import run_pipelines

        spark = self.spark()
        results: dict[str, Any] = {}
        source = json.loads((REPO / "schemas" / "avro" / "index.json").read_text())
        contacts = {side: source["subjects"][f"crm.contacts-{side}"] for side in ("key", "value")}
        for n in counts:
            print(f"tables: {n} tables, {events:,} events ...", file=sys.stderr)
            root = self._root()
            registry_root = root / "avro"
            shutil.copytree(REPO / "schemas" / "avro", registry_root)
            index = json.loads((registry_root / "index.json").read_text())
            next_id = 10_000 * n
            topics = [f"benchdb{n}.public.t{i:02d}" for i in range(n)]
            for topic in topics:
                for side in ("key", "value"):
                    latest = contacts[side][-1]
                    subject = registry_root / f"{topic}-{side}"
                    subject.mkdir()
                    shutil.copy(
                        registry_root / f"crm.contacts-{side}" / f"v{latest['version']}.avsc",
                        subject / "v1.avsc",
                    )
                    index["subjects"][f"{topic}-{side}"] = [{"version": 1, "id": next_id}]
                    next_id += 1
            (registry_root / "index.json").write_text(json.dumps(index))
            per_table = max(1, events // n)
            for topic in topics:
                produce_events(
                    self.bootstrap, topic, per_table, max(1, per_table // 4), 1, self.registry
                )
            settings = load_settings(
                "local",
                overrides=[
                    f"kafka.bootstrap_servers={self.bootstrap}",
                    "kafka.embedded=false",
                    f"registry.path={registry_root}",
                    f"lake.root={root / 'lake'}",
                    f"checkpoints.root={root / 'checkpoints'}",
                    "metrics.enabled=false",
                    f"lake.writer={self.writer}",
                    f"databases.bench.include=benchdb{n}\\.public\\..*",
                ],
                config_dir=REPO / "config",
                environ={},
            )
            first: dict[str, float] = {}
            landed = [0]

            def on_batch(
                name: str, stats: Any, first: dict[str, float] = first, landed: list[int] = landed
            ) -> None:
                first.setdefault(name, time.perf_counter())
                landed[0] += stats.bronze_rows

            started = time.perf_counter()
            settings = with_tables(settings)
            names = sorted(generated(settings))
            run_pipelines(spark, settings, names, available_now=True, on_batch=on_batch)
            seconds = time.perf_counter() - started
            ok = len(names) == n and len(first) == n and landed[0] == per_table * n
            results[str(n)] = {
                "tables": n,
                "events": per_table * n,
                "startup_s": (max(first.values()) - started) if first else float("nan"),
                "seconds": seconds,
                "events_per_s": _rate(per_table * n, seconds),
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "ok": ok,
            }
            if not ok:
                raise RuntimeError(
                    f"tables: {n} tables, {len(first)} ran, {landed[0]:,} of"
                    f" {per_table * n:,} events landed"
                )
        return results

    def reference(
        self, topic: str, batch: int | None = None, decoder: str = "fastavro"
    ) -> tuple[ReferenceResult, str]:
        """Run the reference on ``topic``; returns its result and its silver table."""
        silver = str(self._root() / "reference" / "dim_contact")
        settings = self.settings(topic)
        result = run_reference(
            self.bootstrap,
            topic,
            silver,
            settings.pipeline(PIPELINE),
            self.registry,
            batch or self.args.batch,
            decoder=decoder,
        )
        return result, silver

    def drain(self, settings: Settings) -> tuple[float, list[dict[str, Any]]]:
        """Run the pipeline available-now on ``settings``: (seconds, batches)."""
        from cdc.pipeline.batch import BatchStats
        from cdc.pipeline.queries import run_pipelines

        spark = self.spark()
        batches: list[dict[str, Any]] = []

        def on_batch(name: str, stats: BatchStats) -> None:
            batches.append(
                {
                    "batch_id": stats.batch_id,
                    "rows": stats.input_rows,
                    "seconds": stats.seconds,
                    **{k: round(v, 3) for k, v in stats.phases.items()},
                }
            )

        started = time.perf_counter()
        run_pipelines(spark, settings, [PIPELINE], available_now=True, on_batch=on_batch)
        return time.perf_counter() - started, batches

    def textbook(
        self, topic: str, batch: int | None = None
    ) -> tuple[float, list[dict[str, Any]], str]:
        """Drain ``topic`` through the textbook: (seconds, batches, its dimension's URI)."""
        from benchmarks.textbook import run_textbook

        spark = self.spark()
        settings = self.settings(topic, batch)
        root = Path(settings.lake.root)
        uri, checkpoint = str(root / "textbook" / "dim_contact"), str(root / "textbook_checkpoint")
        started = time.perf_counter()
        done = run_textbook(spark, settings, PIPELINE, uri, checkpoint)
        seconds = time.perf_counter() - started
        batches = [
            {"batch_id": b.batch_id, "rows": b.rows, "seconds": b.seconds, **b.phases} for b in done
        ]
        return seconds, batches, uri

    # ---------------------------------------------------------------- modes

    def throughput(self, events: int) -> dict[str, Any]:
        """Available-now drain of ``events`` by every contender, tables compared."""
        from benchmarks.merge import dimension_layout

        topic = self.topic(events)
        for contender in (*self.writers, TEXTBOOK):
            self.warm(contender)
        load = _load()
        batch = self.args.batch
        print(f"throughput {events:,}: reference, columnar decode ...", file=sys.stderr)
        columnar, columnar_silver = self.reference(topic, decoder="columnar")
        if columnar.events != events:
            raise RuntimeError(f"the reference read {columnar.events} events, expected {events}")
        reference = _read(columnar_silver)
        spec, _ = dimension_layout(self.settings(topic), PIPELINE)
        keys = list(spec.keys)
        pipelines: dict[str, dict[str, Any]] = {}
        for writer in self.writers:
            print(f"throughput {events:,}: pipeline, {writer} ...", file=sys.stderr)
            settings = self.settings(topic, writer=writer)
            seconds, batches = self.drain(settings)
            verified = compare_tables(reference, _read(_silver(settings)), keys)
            pipelines[writer] = {
                "writer": writer,
                **_drained(events, seconds, batches, verified, "all_versions_equal"),
            }
        print(f"throughput {events:,}: textbook (delta-spark MERGE) ...", file=sys.stderr)
        seconds, batches, uri = self.textbook(topic)
        verified = compare_current(reference, _read(uri), keys, list(spec.tracked))
        textbook = _drained(events, seconds, batches, verified, "current_tracked_equal")
        print(f"throughput {events:,}: reference (fastavro) ...", file=sys.stderr)
        ref, ref_silver = self.reference(topic)
        decoders_agree = compare_tables(reference, _read(ref_silver), keys)["all_versions_equal"]
        default = pipelines[self.writer]
        rate = default["events_per_s"]
        run = {
            "events": events,
            "keys": self.args.keys,
            "batch": batch,
            "load_average_1m": load,
            "load_average_1m_after": _load(),
            "default_writer": self.writer,
            "reference_columnar": {
                "seconds": columnar.seconds,
                "events_per_s": _rate(events, columnar.seconds),
                "batches": columnar.batches,
                "phases": {k: round(v, 3) for k, v in columnar.phases.items()},
            },
            "reference": {
                "seconds": ref.seconds,
                "events_per_s": _rate(events, ref.seconds),
                "batches": ref.batches,
                "phases": {k: round(v, 3) for k, v in ref.phases.items()},
                "same_table_as_columnar": decoders_agree,
            },
            "pipelines": pipelines,
            "pipeline": default,
            "textbook": textbook,
            "ratio": _ratio(rate, _rate(events, ref.seconds)),
            "ratio_to_reference_columnar": _ratio(rate, _rate(events, columnar.seconds)),
            "ratio_to_textbook": _ratio(rate, textbook["events_per_s"]),
            "ok": bool(
                all(p["ok"] for p in pipelines.values()) and textbook["ok"] and decoders_agree
            ),
        }
        self.report.setdefault("throughput_runs", []).append(run)
        return run

    def latency(
        self, rate: int, seconds: int, trigger: str, skip_s: float, writers: list[str]
    ) -> dict[str, Any]:
        """Live producer at ``rate``/s: event commit → visible in silver, for the pipeline on
        each of ``writers`` and for the reference."""
        from cdc.config.settings import parse_duration_seconds
        from cdc.runtime.kafka_admin import ensure_topic

        spark = self.spark()
        for writer in writers:
            self.warm(writer)
        count = rate * seconds
        events = list(encode_events(count, self.args.keys, self.args.partitions, self.registry))
        # The harness keeps every pre-encoded event (and later its delivery record) in this
        # process, which is also the Spark driver and the reference; in production the
        # producers live elsewhere. Freeze them out of the cyclic collector so that its full
        # passes do not rescan harness data during either engine's batches.
        gc.collect()
        gc.freeze()
        skip = int(rate * skip_s)
        out: dict[str, Any] = {
            "rate": rate,
            "seconds": seconds,
            "trigger": trigger,
            "producer_linger_ms": self.args.linger_ms,
            "skipped_first_events": skip,
            "default_writer": self.writer,
            "load_average_1m": _load(),
            "pipelines": {},
        }

        for writer in writers:
            topic = self.register(f"bench.latency.pipeline.{writer}")
            ensure_topic(self.bootstrap, topic, self.args.partitions)
            settings = self.settings(topic, trigger=trigger, writer=writer)
            producer = RateProducer(self.bootstrap, topic, events, rate, self.args.linger_ms)
            thread = threading.Thread(target=producer.run, name="rate-producer", daemon=True)
            print(f"latency: pipeline, {writer}, {rate:,} ev/s for {seconds}s ...", file=sys.stderr)
            load = _load()

            def covered(
                batches: list[Any],
                producer: RateProducer = producer,
                thread: threading.Thread = thread,
            ) -> bool:
                if thread.is_alive() or len(producer.delivered) < count:
                    return False
                ends = batches[-1].ends
                need: dict[int, int] = {}
                for partition, offset, _ in producer.delivered:
                    need[partition] = max(need.get(partition, 0), offset + 1)
                return all(ends.get(p, 0) >= o for p, o in need.items())

            batches = run_query_until(
                spark, settings, PIPELINE, covered, timeout_s=seconds + 300, on_start=thread.start
            )
            thread.join()
            visible = [(b.ends, b.visible_at) for b in batches]
            lat, missing = latencies(producer.delivered[skip:], visible)
            summary = _latency_summary(lat, missing, producer)
            summary["writer"] = writer
            summary["load_average_1m"] = load
            summary["batches"] = len(batches)
            summary["mean_batch_seconds"] = statistics.fmean(b.seconds for b in batches)
            summary["mean_batch_rows"] = statistics.fmean(b.rows for b in batches)
            summary["per_batch"] = [
                {"rows": b.rows, "seconds": round(b.seconds, 3), **b.phases} for b in batches
            ]
            summary["mean_phase_seconds"] = {
                phase: statistics.fmean(b.phases.get(phase, 0.0) for b in batches)
                for phase in ("read", "bronze", "state", "fold", "merge")
            }
            out["pipelines"][writer] = summary
        if self.writer in out["pipelines"]:
            out["pipeline"] = out["pipelines"][self.writer]

        # Reference, as a live consumer with the same trigger.
        topic = self.register("bench.latency.reference")
        ensure_topic(self.bootstrap, topic, self.args.partitions)
        settings = self.settings(topic)
        live = LiveReference(
            self.bootstrap,
            topic,
            str(self._root() / "reference" / "dim_contact"),
            settings.pipeline(PIPELINE),
            self.registry,
            trigger_s=parse_duration_seconds(trigger),
        )
        producer = RateProducer(self.bootstrap, topic, events, rate, self.args.linger_ms)
        print(f"latency: reference, {rate:,} ev/s for {seconds}s ...", file=sys.stderr)
        consumer = threading.Thread(target=live.run, name="live-reference", daemon=True)
        consumer.start()
        producer.run()
        deadline = time.monotonic() + 120
        need: dict[int, int] = {}
        for partition, offset, _ in producer.delivered:
            need[partition] = max(need.get(partition, 0), offset + 1)
        while time.monotonic() < deadline and live.error is None:
            seen: dict[int, int] = {}
            for ends, _ in list(live.result.visible):
                for p, o in ends.items():
                    seen[p] = max(seen.get(p, 0), o)
            if all(seen.get(p, 0) >= o for p, o in need.items()):
                break
            time.sleep(0.2)
        live.stop()
        consumer.join(30)
        if live.error is not None:
            raise RuntimeError(f"live reference failed: {live.error}") from live.error
        lat, missing = latencies(producer.delivered[skip:], live.result.visible)
        out["reference"] = _latency_summary(lat, missing, producer)
        out["reference"]["batches"] = live.result.batches
        return out

    def merge(self, dimensions: tuple[int, ...], batch: int, repeats: int) -> dict[str, Any]:
        """MERGE of ``batch`` updates into dimensions of each size, on each writer."""
        from benchmarks.merge import measure_merge

        spark = self.spark()
        topic = self.register("bench.merge")
        out: dict[str, Any] = {
            "batch": batch,
            "repeats": repeats,
            "dimension_keys": list(dimensions),
            "load_average_1m": _load(),
            "runs": [],
            "growth": {},
        }
        for writer in self.writers:
            medians: list[float] = []
            for keys in dimensions:
                print(f"merge: {writer}, {batch:,} updates into {keys:,} keys ...", file=sys.stderr)
                settings = self.settings(topic, writer=writer)
                uri = settings.lake.path("merge", f"dim_{keys}")
                run = measure_merge(spark, settings, PIPELINE, writer, keys, batch, uri, repeats)
                out["runs"].append({**run.as_dict(), "load_average_1m": _load()})
                medians.append(run.median_seconds)
                shutil.rmtree(uri, ignore_errors=True)
            out["growth"][writer] = _ratio(medians[-1], medians[0])
        return out

    def steady(self, events: int, warmup_batches: int) -> dict[str, Any]:
        """A running query drains ``events``; the rate after ``warmup_batches`` batches."""
        topic = self.topic(events)
        spark = self.spark()
        warm_rows = min(events - 1, warmup_batches * self.args.batch)
        load = _load()
        print(f"steady {events:,}: pipeline (trigger 0 ms) ...", file=sys.stderr)
        settings = self.settings(topic, trigger="0 ms")
        batches = run_query_until(
            spark,
            settings,
            PIPELINE,
            lambda done: sum(b.rows for b in done) >= events,
            timeout_s=max(300.0, events / 1000),
        )
        rate, rows, seconds = steady_rate([(b.rows, b.ended) for b in batches], warm_rows)
        print(f"steady {events:,}: reference ...", file=sys.stderr)
        ref, _ = self.reference(topic)
        ref_rate, ref_rows, ref_seconds = steady_rate(ref.batch_ends, warm_rows)
        return {
            "events": events,
            "warmup_rows": warm_rows,
            "load_average_1m": load,
            "pipeline": {
                "events_per_s": rate,
                "rows": rows,
                "seconds": seconds,
                "batch_seconds": [round(b.seconds, 3) for b in batches],
                "between_batches_seconds": _gaps(batches),
            },
            "reference": {"events_per_s": ref_rate, "rows": ref_rows, "seconds": ref_seconds},
            "ratio": _ratio(rate, ref_rate),
        }

    def memory(self, sizes: tuple[int, ...]) -> dict[str, Any]:
        """Peak RSS while draining each backlog, pipeline and reference."""
        self.spark()
        out: dict[str, Any] = {"batch": self.args.batch, "load_average_1m": _load(), "runs": []}
        for events in sizes:
            topic = self.topic(events)
            print(f"memory {events:,}: pipeline ...", file=sys.stderr)
            settings = self.settings(topic)
            with RssSampler() as pipeline_rss:
                seconds, _ = self.drain(settings)
            print(f"memory {events:,}: reference ...", file=sys.stderr)
            with RssSampler() as reference_rss:
                self.reference(topic)
            out["runs"].append(
                {
                    "events": events,
                    "pipeline_seconds": seconds,
                    "pipeline": asdict(pipeline_rss.peaks),
                    "reference": asdict(reference_rss.peaks),
                }
            )
        return out

    def scaling(
        self,
        sizes: tuple[int, ...],
        dimensions: tuple[int, ...],
        merge_batch: int,
        history_rounds: int = 0,
    ) -> dict[str, Any]:
        """Events/s at each size; merge cost per batch against each dimension size, and
        against the smaller dimension after ``history_rounds`` rounds of updates (the same
        keys, a table many times longer)."""
        out: dict[str, Any] = {"load_average_1m": _load(), "sizes": [], "merge": []}
        done = {r["events"]: r for r in self.report.get("throughput_runs", [])}
        for events in sizes:
            run = done.get(events) or self.throughput(events)
            out["sizes"].append(
                {
                    "events": events,
                    "pipeline_events_per_s": run["pipeline"]["events_per_s"],
                    "reference_events_per_s": run["reference"]["events_per_s"],
                    "ratio": run["ratio"],
                    "ok": run["ok"],
                }
            )
        for keys in dimensions:
            print(f"scaling: merge into a {keys:,}-key dimension ...", file=sys.stderr)
            out["merge"].append(self._merge_cost(keys, merge_batch))
        if history_rounds:
            keys = dimensions[0]
            print(
                f"scaling: merge into a {keys:,}-key dimension after {history_rounds} rounds "
                "of updates ...",
                file=sys.stderr,
            )
            out["history"] = self._merge_cost(keys, merge_batch, history_rounds=history_rounds)
        return out

    def _merge_cost(
        self, keys: int, batch: int, repeats: int = 3, history_rounds: int = 0
    ) -> dict[str, Any]:
        """Driver-side cost of one batch of ``batch`` updates against ``keys`` current rows.

        No Spark: the decoded batch goes straight to the pipeline's ``LocalBatchWriter.process``
        (bronze append, normalise, read the batch's keys, fold, MERGE), as ``foreachBatch``
        would run it. The dimension is loaded first with one create per key, then
        ``history_rounds`` rounds of one event per key (updates, a third of them tracked,
        and deletes and re-creates), one batch per round.
        """
        from cdc.ingest.contracts import load_contracts
        from cdc.ingest.decoder import TopicDecoder
        from cdc.pipeline.batch_local import LocalBatchWriter

        topic = self.register(f"bench.merge.{keys}.{history_rounds}")
        contract = load_contracts(self.contracts)[topic]
        decoder = TopicDecoder(self.registry, contract)
        settings = self.settings(topic, writer="delta-rs")  # LocalBatchWriter.process
        writer = LocalBatchWriter(
            PIPELINE,
            settings.pipeline(PIPELINE),
            settings,
            settings.checkpoint_path(PIPELINE),
        )
        phases: dict[str, list[float]] = {"read_keys": [], "merge": [], "bronze": [], "total": []}
        timings: dict[str, float] = {}
        for role, method, name in (
            ("silver", "read_keys", "read_keys"),
            ("silver", "merge", "merge"),
            ("bronze", "append", "bronze"),
        ):
            sink = writer.sinks[role]
            _time_method(sink, method, name, timings)
        loading = 1 + history_rounds
        encoded = encode_events(keys * loading + repeats * batch, keys, 1, self.registry)
        chunk: list[Any] = []
        batch_id = 0
        t_load = 0.0
        for offset, (_, key, value) in enumerate(encoded):
            chunk.append((topic, 0, offset, 1_700_000_000_000 + offset, key, value))
            if len(chunk) == (keys if batch_id < loading else batch):
                table = decode_messages(decoder, chunk)
                timings.clear()
                started = time.perf_counter()
                writer.process(table, batch_id, datetime.now(UTC))
                elapsed = time.perf_counter() - started
                if batch_id < loading:
                    t_load += elapsed
                else:
                    phases["total"].append(elapsed)
                    for name in ("read_keys", "merge", "bronze"):
                        phases[name].append(timings.get(name, 0.0))
                batch_id += 1
                chunk = []
        silver = writer.sinks["silver"].table()
        assert silver is not None
        files = silver.get_add_actions(flatten=True)
        rows = sum(int(n) for n in files.column("num_records").to_pylist())
        return {
            "dimension_keys": keys,
            "history_rounds": history_rounds,
            "silver_rows": rows,
            "batch_events": batch,
            "load_seconds": t_load,
            "silver_files": files.num_rows,
            "silver_bytes": int(sum(files.column("size_bytes").to_pylist())),
            **{f"{k}_seconds": statistics.median(v) for k, v in phases.items()},
        }


def _time_method(owner: Any, method: str, name: str, timings: dict[str, float]) -> None:
    inner = getattr(owner, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - started

    setattr(owner, method, timed)


def _gaps(batches: list[Any]) -> float:
    """Mean seconds between one batch's end and the next one's start (query overhead)."""
    gaps = [
        (later.ended - later.seconds) - earlier.ended
        for earlier, later in itertools.pairwise(batches)
    ]
    return statistics.fmean(gaps) if gaps else float("nan")


def _latency_summary(lat: list[float], missing: int, producer: RateProducer) -> dict[str, Any]:
    return {
        "events": len(lat),
        "not_visible": missing,
        "delivery_failures": len(producer.failures),
        "produce_seconds": producer.sent_seconds,
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "max_s": max(lat) if lat else float("nan"),
    }


def _machine() -> dict[str, Any]:
    memory = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import deltalake
    import pyspark

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kafka_broker": _jar_version("kafka", "kafka_2.13-"),
        "spark_kafka_source": _jar_version("spark", "spark-sql-kafka-0-10_2.13-"),
        "load_average_1m_at_start": _load(),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "deltalake": deltalake.__version__,
    }


def _jar_version(profile: str, prefix: str) -> str:
    """The version of the pinned JAR whose file name starts with ``prefix`` ("?" if absent)."""
    from cdc.errors import JarsMissingError
    from cdc.runtime.jvm import classpath

    try:
        jars = classpath(profile)
    except JarsMissingError:
        return "?"
    for jar in jars:
        if jar.name.startswith(prefix):
            return jar.name[len(prefix) :].removesuffix(".jar")
    return "?"


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN-safe


def _label(name: str, default: str) -> str:
    if name in WRITERS:
        return f"pipeline, {name}" + (" (default)" if name == default else "")
    return {
        TEXTBOOK: "textbook (delta-spark MERGE)",
        "reference_columnar": "columnar reference",
        "reference": "reference, fastavro",
    }[name]


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per contender: every figure of the run (NaN where not measured)."""
    nan = float("nan")
    default = report.get("default_writer", "?")
    tp = report.get("throughput") or {}
    lt = report.get("latency") or {}
    growth = report.get("merge") or {}
    merges = {(r["writer"], r["dimension_keys"]): r for r in growth.get("runs", [])}
    dims = growth.get("dimension_keys", [])
    contenders = [*(tp.get("pipelines") or dict.fromkeys(WRITERS)), TEXTBOOK]
    contenders += ["reference_columnar", "reference"]
    default_rate = ((tp.get("pipelines") or {}).get(default) or {}).get("events_per_s", nan)
    rows = []
    for name in contenders:
        if name in WRITERS:
            measured = (tp.get("pipelines") or {}).get(name) or {}
            latency = (lt.get("pipelines") or {}).get(name) or {}
        elif name == TEXTBOOK:
            measured, latency = tp.get("textbook") or {}, {}
        else:
            measured = tp.get(name) or {}
            latency = (lt.get("reference") or {}) if name == "reference" else {}
        small = merges.get((name, dims[0])) if dims else None
        large = merges.get((name, dims[-1])) if dims else None
        rate = measured.get("events_per_s", nan)
        rows.append(
            {
                "contender": name,
                "label": _label(name, default),
                "events_per_s": rate,
                "default_over_this": _ratio(default_rate, rate) if rate == rate else nan,
                "p50_s": latency.get("p50_s", nan),
                "p99_s": latency.get("p99_s", nan),
                "merge_small_s": small["median_seconds"] if small else nan,
                "merge_large_s": large["median_seconds"] if large else nan,
                "merge_growth": growth.get("growth", {}).get(name, nan),
            }
        )
    return rows


def final_figures(report: dict[str, Any]) -> dict[str, float]:
    """The figures the run ends with (NaN when their mode did not run): four of the default
    writer, then five per writer (each writer against its own bar, whichever is the
    default)."""
    nan = float("nan")
    default = report.get("default_writer", "?")
    tp = report.get("throughput") or {}
    lt = report.get("latency") or {}
    pipelines = tp.get("pipelines") or {}
    latencies = lt.get("pipelines") or {}
    growth = (report.get("merge") or {}).get("growth", {})
    textbook = (tp.get("textbook") or {}).get("events_per_s", nan)
    columnar = (tp.get("reference_columnar") or {}).get("events_per_s", nan)

    def rate(writer: str) -> float:
        return float((pipelines.get(writer) or {}).get("events_per_s", nan))

    def p99(writer: str) -> float:
        return float((latencies.get(writer) or {}).get("p99_s", nan))

    return {
        "ratio_vs_textbook_delta_spark": float(tp.get("ratio_to_textbook", nan)),
        "ratio_vs_columnar_reference": float(tp.get("ratio_to_reference_columnar", nan)),
        "p99_latency_s": p99(default),
        "merge_growth_100x_keys": float(growth.get(default, nan)),
        "delta_spark_ratio_vs_textbook": _ratio(rate("delta-spark"), textbook),
        "delta_spark_p99_latency_s": p99("delta-spark"),
        "delta_spark_merge_growth_100x_keys": float(growth.get("delta-spark", nan)),
        "delta_rs_ratio_vs_columnar_reference": _ratio(rate("delta-rs"), columnar),
        "delta_rs_p99_latency_s": p99("delta-rs"),
        **{
            f"tables_{n}_{what}": float(((report.get("tables") or {}).get(n) or {}).get(what, nan))
            for n in ("1", "10", "50")
            for what in ("startup_s", "events_per_s")
        },
    }


BARS = {
    "delta_spark_ratio_vs_textbook": (">=", 1.0),
    "delta_spark_p99_latency_s": ("<=", 5.0),
    "delta_spark_merge_growth_100x_keys": ("<=", 1.5),
    "delta_rs_ratio_vs_columnar_reference": (">=", 0.5),
    "delta_rs_p99_latency_s": ("<=", 2.0),
}
"""The per-writer bars (docs/performance.md): printed before the figures, never enforced by
the run (a benchmark reports; it does not pass or fail on speed)."""


def _meets(value: float, sign: str, bar: float) -> bool:
    return value >= bar if sign == ">=" else value <= bar


def print_report(report: dict[str, Any]) -> None:
    """Human-readable summary: every contender's figures side by side."""
    m = report["machine"]
    default = report.get("default_writer", "?")
    print()
    print(
        "cdc benchmark: Debezium contact envelopes (Confluent Avro) -> SCD2 dimension (Delta), "
        f"one run, one topic, one SparkSession ({report.get('spark_master', '?')}, "
        f"{report.get('parallelism', '?')} slots)"
    )
    print(
        f"  {report['events']:,} events over {report['keys']:,} keys, {report['partitions']} "
        f"partitions; batch size (maxRecordsPerTrigger, and the reference's) {report['batch']:,} "
        f"events; default writer: {default} ({report.get('default_writer_from', '?')})"
    )
    print(
        f"  broker: Apache Kafka {m.get('kafka_broker', '?')} (embedded, KRaft); Spark "
        f"contenders read with Spark's Kafka source {m.get('spark_kafka_source', '?')} + the "
        "pipeline's mapInArrow decoder; the pipeline writes bronze + silver, the textbook and "
        "the references silver only"
    )
    tp = report.get("throughput")
    if tp:
        print(
            f"\n  throughput: drain the topic, available-now, batches of {tp['batch']:,} "
            f"(load {tp['load_average_1m']} -> {tp.get('load_average_1m_after', '?')})"
        )
        print(
            f"    {'contender':<32} {'events/s':>9} {'seconds':>8} {'batches':>7}  "
            f"{'in foreachBatch':>15}  check"
        )
        for writer, p in tp["pipelines"].items():
            v = p["verified"]
            check = (
                f"silver {'identical' if v['all_versions_equal'] else 'DIFFERENT'} to the "
                f"reference's ({v['pipeline_versions']:,} versions, "
                f"{v['pipeline_current_rows']:,} current)"
            )
            print(
                f"    {_label(writer, default):<32} {p['events_per_s']:>9,.0f} "
                f"{p['seconds']:>8.1f} {len(p['batches']):>7}  "
                f"{p['in_foreach_batch_seconds']:>14.1f}s  {check}"
            )
        t = tp["textbook"]
        v = t["verified"]
        check = (
            f"current keys + tracked columns "
            f"{'equal' if v['current_tracked_equal'] else 'DIFFERENT'} "
            f"({v['textbook_versions']:,} versions, {v['textbook_current_rows']:,} current)"
        )
        print(
            f"    {_label(TEXTBOOK, default):<32} {t['events_per_s']:>9,.0f} {t['seconds']:>8.1f} "
            f"{len(t['batches']):>7}  {t['in_foreach_batch_seconds']:>14.1f}s  {check}"
        )
        for name in ("reference_columnar", "reference"):
            r = tp[name]
            spent = ", ".join(f"{k} {x:.1f}s" for k, x in r["phases"].items())
            print(
                f"    {_label(name, default):<32} {r['events_per_s']:>9,.0f} "
                f"{r['seconds']:>8.1f} {r['batches']:>7}  {'':>15}  {spent}"
            )
        for writer, p in tp["pipelines"].items():
            totals: dict[str, float] = {}
            for b in p["batches"]:
                for k in ("read", "bronze", "state", "fold", "merge"):
                    totals[k] = totals.get(k, 0.0) + float(b.get(k, 0.0))
            print(
                f"    {writer} batches: "
                + ", ".join(f"{k} {x:.1f}s" for k, x in totals.items())
                + f"; outside foreachBatch (query start, planning, commits) "
                f"{p['seconds'] - p['in_foreach_batch_seconds']:.1f}s"
            )
    lt = report.get("latency")
    if lt:
        print(
            f"\n  latency: {lt['rate']:,} ev/s for {lt['seconds']}s, trigger {lt['trigger']}; "
            f"delivery report -> silver MERGE returned; first {lt['skipped_first_events']:,} "
            f"events excluded; producer linger.ms {lt['producer_linger_ms']}"
        )
        entries = [(_label(w, default), x) for w, x in lt["pipelines"].items()]
        entries.append(("reference (live, fastavro)", lt["reference"]))
        for label, x in entries:
            print(
                f"    {label:<32} p50 {_f(x['p50_s']):>6} s  p99 {_f(x['p99_s']):>6} s  max "
                f"{_f(x['max_s']):>6} s  ({x['events']:,} events, {x['batches']} batches, "
                f"{x['not_visible']} not visible"
                + (f"; load {x['load_average_1m']})" if "load_average_1m" in x else ")")
            )
        for writer, x in lt["pipelines"].items():
            parts = ", ".join(f"{k} {v:.2f}s" for k, v in x["mean_phase_seconds"].items())
            print(
                f"    {writer} mean batch {x['mean_batch_seconds']:.2f}s, "
                f"{x['mean_batch_rows']:,.0f} rows: {parts}"
            )
        print("    target p99 <= 5 s")
    mg = report.get("merge")
    if mg:
        print(
            f"\n  MERGE of {mg['batch']:,} updates (tracked change: close + new version) into a "
            f"dimension built directly, one version per key, partitioned by "
            f"{', '.join(mg['runs'][0]['partition_columns']) if mg['runs'] else '?'}; median of "
            f"{mg['repeats']} after 1 untimed (load {mg['load_average_1m']})"
        )
        for run in mg["runs"]:
            dv = " + deletion vectors" if run["deletion_vectors"] else ", copy-on-write"
            copied = ", ".join(f"{c:,}" for c in run["rows_copied"])
            print(
                f"    {run['writer'] + dv:<36} {run['dimension_keys']:>9,} keys: "
                f"MERGE {run['median_seconds']:6.2f} s ("
                + ", ".join(f"{s:.2f}" for s in run["merge_seconds"])
                + f"; warm-up {run['warmup_seconds']:.2f}), rows copied {copied}, "
                f"files {run['files_before']} -> {run['files_after']}, "
                f"built in {run['build_seconds']:.1f} s"
            )
        dims = mg["dimension_keys"]
        for writer, growth in mg["growth"].items():
            print(
                f"    {writer}: {dims[-1] // dims[0]}x the keys -> MERGE time x{_f(growth)} "
                "(target <= x2)"
            )
    tb = report.get("tables")
    if tb:
        print(
            f"\n  a whole database in one job ({report.get('default_writer')}; one query per"
            " table, available-now): startup = until every table's first batch landed"
        )
        for run in tb.values():
            print(
                f"    {run['tables']:>3} tables, {run['events']:>7,} events: startup"
                f" {run['startup_s']:6.1f} s, {run['events_per_s']:>8,.0f} ev/s over"
                f" {run['seconds']:.1f} s, driver peak RSS {run['rss_mb']:,.0f} MiB"
            )
    st = report.get("steady")
    if st:
        p, r = st["pipeline"], st["reference"]
        print(
            f"\n  steady state, {st['events']:,} events, first {st['warmup_rows']:,} excluded "
            f"(running query, trigger 0 ms; load {st['load_average_1m']})"
        )
        print(f"    reference {r['events_per_s']:>9,.0f} ev/s  over {r['rows']:,} events")
        print(
            f"    pipeline  {p['events_per_s']:>9,.0f} ev/s  over {p['rows']:,} events; "
            f"between batches {_f(p['between_batches_seconds'])}s"
        )
        print(f"    ratio pipeline/reference {_f(st['ratio'])}")
    mem = report.get("memory")
    if mem:
        print(
            f"\n  memory, peak RSS MiB while draining a backlog with maxRecordsPerTrigger "
            f"{mem['batch']:,} (load {mem['load_average_1m']})"
        )
        print(
            "    backlog     pipeline: driver Python  driver JVM  Python workers (largest)"
            "   reference: process"
        )
        for run in mem["runs"]:
            p, r = run["pipeline"], run["reference"]
            print(
                f"    {run['events']:>9,}  {p['driver_python']:>21,.0f}  {p['driver_jvm']:>10,.0f}"
                f"  {p['python_workers']:>14,.0f} ({p['largest_python_worker']:,.0f})"
                f"  {r['driver_python']:>18,.0f}"
            )
        if len(mem["runs"]) >= 2:
            small, large = mem["runs"][0], mem["runs"][-1]
            growth = large["events"] / small["events"]
            ratios = {
                key: _f(_ratio(large[side][key], small[side][key]))
                for side, key in (
                    ("pipeline", "driver_python"),
                    ("pipeline", "driver_jvm"),
                    ("pipeline", "python_workers"),
                )
            }
            reference = _f(
                _ratio(large["reference"]["driver_python"], small["reference"]["driver_python"])
            )
            print(
                f"    {growth:.0f}x the backlog -> peak ratio: driver Python "
                f"{ratios['driver_python']}, JVM {ratios['driver_jvm']}, workers "
                f"{ratios['python_workers']}; reference {reference} (1.0 = bounded)"
            )
    sc = report.get("scaling")
    if sc:
        print(f"\n  scaling (load {sc['load_average_1m']})")
        for row in sc["sizes"]:
            print(
                f"    {row['events']:>9,} events: reference {row['reference_events_per_s']:>9,.0f}"
                f" ev/s, pipeline {row['pipeline_events_per_s']:>9,.0f} ev/s, ratio "
                f"{_f(row['ratio'])}"
            )
        merges = sc["merge"]
        for row in merges:
            print(
                f"    batch of {row['batch_events']:,} updates into {row['dimension_keys']:>9,} "
                f"keys, {row['silver_rows']:>9,} rows ({row['silver_files']} files, "
                f"{row['silver_bytes'] / 2**20:.0f} MiB): "
                f"read keys {row['read_keys_seconds']:.2f}s, MERGE {row['merge_seconds']:.2f}s, "
                f"bronze {row['bronze_seconds']:.2f}s, batch {row['total_seconds']:.2f}s"
            )
        if len(merges) >= 2:
            small, large = merges[0], merges[-1]
            growth = large["dimension_keys"] / small["dimension_keys"]
            print(
                f"    {growth:.0f}x the dimension, same batch -> "
                f"{_merge_growth(small, large)} (1.0 = cost follows the batch, not the table)"
            )
        hist = sc.get("history")
        if hist and merges:
            base = merges[0]
            rounds = hist["history_rounds"]
            print(
                f"    same {hist['dimension_keys']:,} keys after {rounds} rounds of "
                f"updates ({hist['silver_rows']:,} rows, {hist['silver_files']} files): read keys "
                f"{hist['read_keys_seconds']:.2f}s, MERGE {hist['merge_seconds']:.2f}s, batch "
                f"{hist['total_seconds']:.2f}s"
            )
            print(
                f"    {_ratio(hist['silver_rows'], base['silver_rows']):.0f}x the rows, same "
                f"keys and batch -> {_merge_growth(base, hist)} "
                "(1.0 = history does not slow the MERGE)"
            )
    if tp or lt or mg:
        dims = (mg or {}).get("dimension_keys")
        small, large = (_keys(dims[0]), _keys(dims[-1])) if dims else ("small", "large")
        print(
            f"\n  writers side by side (default writer: {default}; default/this: the default "
            "writer's events/s over the contender's; growth: MERGE large / small)"
        )
        print(
            f"    {'contender':<32} {'events/s':>9} {'default/this':>12} {'p50 s':>7} {'p99 s':>7} "
            f"{'MERGE ' + small + ' keys':>16} {'MERGE ' + large + ' keys':>16} {'growth':>7}"
        )
        for row in summary_rows(report):
            print(
                f"    {row['label']:<32} {_n(row['events_per_s'], 0):>9} "
                f"{_n(row['default_over_this']):>12} {_n(row['p50_s']):>7} "
                f"{_n(row['p99_s']):>7} {_n(row['merge_small_s'], unit=' s'):>16} "
                f"{_n(row['merge_large_s'], unit=' s'):>16} "
                f"{_n(row['merge_growth']):>7}"
            )
        print(
            "    (-: not measured. The references MERGE with delta-rs's DeltaSink, as the "
            "delta-rs pipeline does; the reference's p99 is the live fastavro reference's)"
        )
    print(
        f"\n  machine: {m['cpus']} CPUs ({m['cpu_model']}), load average "
        f"{m['load_average_1m_at_start']} at start, {m['memory_gib']} GiB, {m['platform']}, "
        f"Python {m['python']}, PySpark {m['pyspark']}, deltalake {m['deltalake']}; broker, "
        "reference and Spark share the machine, so the figures compare engines, not clusters"
    )


def _merge_growth(small: dict[str, Any], large: dict[str, Any]) -> str:
    """MERGE, key-read and whole-batch time of ``large`` over ``small`` (scaling rows)."""
    return ", ".join(
        f"{label} x{_f(_ratio(large[f'{key}_seconds'], small[f'{key}_seconds']))}"
        for label, key in (("MERGE time", "merge"), ("read keys", "read_keys"), ("batch", "total"))
    )


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _pair(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(","))
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers a,b: {text!r}")
    return values


def _n(value: float, digits: int = 2, unit: str = "") -> str:
    """A figure for the summary table: ``-`` when not measured, thousands separated."""
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _keys(keys: int) -> str:
    if keys >= 10**6 and keys % 10**6 == 0:
        return f"{keys // 10**6:,}M"
    if keys >= 1000 and keys % 1000 == 0:
        return f"{keys // 1000:,}k"
    return f"{keys:,}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (1 when a check failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated subset of {', '.join(MODES)} (default: {', '.join(DEFAULT_MODES)})",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the performance issue's sizes")
    size.add_argument("--quick", action="store_true", help="smoke test: small sizes")
    parser.add_argument("--events", type=int, help="events (CI 200,000; --full 1,000,000)")
    parser.add_argument("--keys", type=int, help="distinct keys (CI 20,000; --full 100,000)")
    parser.add_argument("--batch", type=int, help="maxRecordsPerTrigger (default 50,000)")
    parser.add_argument("--partitions", type=int, default=4, help="topic partitions (4)")
    parser.add_argument("--master", default="local[2]", help="the SparkSession's master (local[2])")
    parser.add_argument("--warmup-batches", type=int, default=1, help="steady: excluded (1)")
    parser.add_argument("--rate", type=int, help="latency: events/s (2,000)")
    parser.add_argument("--seconds", type=int, help="latency: producing time (CI 60; --full 120)")
    parser.add_argument("--trigger", default="1 second", help="latency: trigger ('1 second')")
    parser.add_argument(
        "--latency-writers",
        choices=("default", "all"),
        help="latency: the default writer only, or every writer (CI all; --quick default)",
    )
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=LATENCY_LINGER_MS,
        help=f"latency: the producer's linger.ms ({LATENCY_LINGER_MS}, librdkafka's default)",
    )
    parser.add_argument(
        "--latency-skip", type=float, default=5.0, help="latency: first seconds excluded (5)"
    )
    parser.add_argument("--memory-events", type=_pair, help="memory: two backlog sizes a,b")
    parser.add_argument("--scaling-events", type=_pair, help="scaling: two topic sizes a,b")
    parser.add_argument(
        "--dimension-keys", type=_pair, help="merge, scaling: two dimension sizes a,b"
    )
    parser.add_argument("--merge-batch", type=int, help="merge, scaling: updates per MERGE")
    parser.add_argument("--merge-repeats", type=int, help="merge: timed MERGEs per size (3)")
    parser.add_argument(
        "--history-rounds",
        type=int,
        help="scaling: rounds of updates loaded before the history comparison (CI 20; 0 = skip)",
    )
    parser.add_argument("--tables", type=_counts, help="tables: table counts a,b,c (1,10,50)")
    parser.add_argument("--table-events", type=int, help="tables: events in all (20,000)")
    parser.add_argument("--workdir", type=Path, help="keep tables here (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON result ({RESULTS})")
    args = parser.parse_args(argv)
    base = FULL if args.full else QUICK if args.quick else CI
    for name in SIZE_ARGS:
        if getattr(args, name) is None:
            setattr(args, name, base[name])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)} (valid: {', '.join(MODES)})")
    sizes = (args.events, args.keys, args.batch, args.partitions, args.rate, args.seconds)
    if min(*sizes, args.merge_batch, args.merge_repeats) < 1:
        parser.error("sizes, rates and durations must be positive")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from cdc.runtime.broker import EmbeddedBroker

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    if args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
    writer = default_writer()
    from cdc.config.settings import read_config

    in_yaml = (read_config(REPO / "config" / "local.yaml").get("lake") or {}).get("writer")
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "modes": modes,
        "events": args.events,
        "keys": args.keys,
        "batch": args.batch,
        "partitions": args.partitions,
        "default_writer": writer,
        "default_writer_from": (
            "lake.writer in config/local.yaml" if in_yaml else "LakeSettings.writer's default"
        ),
        "writers": list(WRITERS),
        "machine": _machine(),
    }
    started = time.perf_counter()
    exit_code = 0
    try:
        with EmbeddedBroker.start_on_free_port() as broker:
            print(f"embedded broker at {broker.bootstrap}; workdir {workdir}", file=sys.stderr)
            bench = Bench(broker.bootstrap, workdir, args)
            bench.report = report
            try:
                if "throughput" in modes:
                    report["throughput"] = bench.throughput(args.events)
                if "latency" in modes:
                    writers = bench.writers if args.latency_writers == "all" else [writer]
                    report["latency"] = bench.latency(
                        args.rate, args.seconds, args.trigger, args.latency_skip, writers
                    )
                if "merge" in modes:
                    report["merge"] = bench.merge(
                        args.dimension_keys, args.merge_batch, args.merge_repeats
                    )
                if "tables" in modes:
                    report["tables"] = bench.tables(args.tables, args.table_events)
                if "steady" in modes:
                    report["steady"] = bench.steady(args.events, args.warmup_batches)
                if "memory" in modes:
                    report["memory"] = bench.memory(args.memory_events)
                if "scaling" in modes:
                    report["scaling"] = bench.scaling(
                        args.scaling_events,
                        args.dimension_keys,
                        args.merge_batch,
                        args.history_rounds,
                    )
            except Exception as exc:  # report what failed, keep what was measured
                report["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log.exception("benchmark failed")
                exit_code = 1
            if bench._spark is not None:
                report["spark_master"] = bench._spark.sparkContext.master
                report["parallelism"] = int(bench._spark.sparkContext.defaultParallelism)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if any(not run["ok"] for run in report.get("throughput_runs", [])):
        exit_code = 1
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["wall_seconds"] = time.perf_counter() - started
    report["summary"] = summary_rows(report)
    figures = final_figures(report)
    report["figures"] = figures
    print_report(report)
    if "error" in report:
        print(f"  error: {report['error']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"  result: {args.output} (wall time {report['wall_seconds'] / 60:.1f} min)")
    if exit_code:
        print("  benchmark FAILED: see above (a benchmark of a wrong result is worthless)")
    print()
    for name, (sign, bar) in BARS.items():
        value = figures[name]
        met = "n/a" if value != value else ("met" if _meets(value, sign, bar) else "NOT met")
        print(f"  bar {name} {sign} {bar:g}: {_f(value, 3)} ({met})")
    print()
    for name, value in figures.items():
        print(f"bench: {name} {value:.4g}")
    sys.stdout.flush()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
