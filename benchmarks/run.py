"""``make bench``: the Spark pipeline vs. a single-process reference, measured side by side.

    python -m benchmarks.run [--modes throughput,steady,latency,memory,scaling]
                             [--events N] [--keys K] [--batch B] [--partitions P] [--full]

Starts an embedded Apache Kafka broker (:class:`cdc.broker.EmbeddedBroker`, KRaft) and
produces N Debezium contact envelopes over K keys (:mod:`benchmarks.events`). Every mode runs
the pipeline (``cdc.pipelines`` on ``crm_contacts``: Spark's Kafka source decoded with
``mapInArrow``, the Spark session warmed by a small run first) and the reference
(:mod:`benchmarks.reference`: one process, confluent-kafka → fastavro → ``apply_scd2`` →
delta-rs MERGE, no bronze) on the same data in the same run, and prints the pipeline's figure
next to the reference's:

* ``throughput``: drain the topic (available-now, batches of B); events/s and the ratio.
  The two silver tables must be identical, or the run fails.
* ``steady``: a running query (processing-time trigger 0 ms, driver and workers warm)
  drains the topic; events/s after the first ``--warmup-batches`` batches, against the
  reference's rate over the same batches.
* ``latency``: a producer sends ``--rate`` events/s for ``--seconds`` to a fresh topic while
  the query runs with a ``--trigger`` trigger; per event, delivery-report time → end of the
  silver MERGE that made it visible; p50/p99/max for the pipeline and for the reference run
  as a live consumer with the same trigger.
* ``memory``: peak RSS of the driver (Python and JVM) and of the Spark Python workers while
  draining two backlogs (``--memory-events``) with maxRecordsPerTrigger B: bounded memory
  means the larger backlog's peaks equal the smaller one's.
* ``scaling``: events/s at two sizes (``--scaling-events``), and the driver's merge cost per
  batch (same batch, same keys) against dimensions of ``--dimension-keys`` keys: it must grow
  with the batch's keys, not with the table.

The default is a CI-sized run of every mode (a few minutes); ``--full`` uses the sizes of
the performance issue (docs/performance.md). Writes ``benchmarks/results/latest.json``.
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
from cdc.config import Settings, load_settings
from cdc.registry import FileRegistry

__all__ = ["compare_tables", "main", "write_contracts"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "latest.json"
PIPELINE = "crm_contacts"
DELTA_WRITER = "delta-rs merge on driver"
MODES = ("throughput", "steady", "latency", "memory", "scaling")
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
    "rate": 1_000,
    "seconds": 20,
    "memory_events": (50_000, 200_000),
    "scaling_events": (50_000, 200_000),
    "dimension_keys": (10_000, 200_000),
    "merge_batch": 10_000,
    "history_rounds": 20,
}
FULL: dict[str, Any] = {
    "events": 1_000_000,
    "keys": 100_000,
    "batch": 50_000,
    "rate": 2_000,
    "seconds": 120,
    "memory_events": (250_000, 1_000_000),
    "scaling_events": (100_000, 1_000_000),
    "dimension_keys": (10_000, 1_000_000),
    "merge_batch": 10_000,
    "history_rounds": 100,
}
QUICK: dict[str, Any] = {
    **CI,
    "events": 20_000,
    "keys": 2_000,
    "batch": 5_000,
    "seconds": 10,
    "memory_events": (5_000, 20_000),
    "scaling_events": (5_000, 20_000),
    "dimension_keys": (2_000, 20_000),
    "merge_batch": 1_000,
    "history_rounds": 10,
}

log = logging.getLogger("benchmarks")


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
    from cdc.pipelines import table_paths

    return table_paths(settings, settings.pipeline(PIPELINE))["silver"]


def _read(uri: str) -> pl.DataFrame:
    from deltalake import DeltaTable

    return pl.scan_delta(DeltaTable(uri)).collect()


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
        self.registry = FileRegistry.load(REPO / "schemas" / "avro")
        self.contracts = workdir / "contracts.yaml"
        self.topics: dict[int, str] = {}
        self.report: dict[str, Any] = {}
        self._contract_topics: set[str] = set()
        self._spark: Any = None
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

    def settings(
        self, topic: str, batch: int | None = None, trigger: str | None = None
    ) -> Settings:
        """Fresh tables and checkpoint for one run of the pipeline on ``topic``."""
        self._runs += 1
        root = self.workdir / f"run{self._runs}"
        overrides = [
            f"kafka.bootstrap_servers={self.bootstrap}",
            f"registry.contracts={self.contracts}",
            "kafka.embedded=false",
            f"lake.root={root / 'lake'}",
            f"checkpoints.root={root / 'checkpoints'}",
            f"pipelines.{PIPELINE}.topic={topic}",
            f"defaults.max_records_per_trigger={batch or self.args.batch}",
            "metrics.enabled=false",
            "lake.writer=delta-rs",  # DELTA_WRITER, the reference's writer too
        ]
        if trigger is not None:
            overrides.append(f"spark.trigger_interval={trigger}")
        return load_settings("local", overrides=overrides, config_dir=REPO / "config", environ={})

    def spark(self) -> Any:
        """The session, warmed by an available-now run on a small topic of its own."""
        if self._spark is None:
            from cdc.pipelines import run_pipelines
            from cdc.spark import build_session

            warm = self.register("bench.contacts.warmup")
            produce_events(
                self.bootstrap,
                warm,
                WARMUP_EVENTS,
                WARMUP_EVENTS // 10,
                self.args.partitions,
                self.registry,
            )
            settings = self.settings(warm)
            conf = {**settings.spark.conf, "spark.ui.showConsoleProgress": "false"}
            self._spark = build_session(
                app_name="cdc-bench", master=settings.spark.master, conf=conf
            )
            print("pipeline warm-up ...", file=sys.stderr)
            run_pipelines(self._spark, settings, [PIPELINE], available_now=True)
        return self._spark

    def reference(
        self, topic: str, batch: int | None = None, decoder: str = "fastavro"
    ) -> tuple[ReferenceResult, str]:
        """Run the reference on ``topic``; returns its result and its silver table."""
        self._runs += 1
        silver = str(self.workdir / f"run{self._runs}" / "reference" / "dim_contact")
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
        from cdc.pipelines import BatchStats, run_pipelines

        spark = self.spark()
        batches: list[dict[str, Any]] = []

        def on_batch(name: str, stats: BatchStats) -> None:
            batches.append(
                {"batch_id": stats.batch_id, "rows": stats.input_rows, "seconds": stats.seconds}
            )

        started = time.perf_counter()
        run_pipelines(spark, settings, [PIPELINE], available_now=True, on_batch=on_batch)
        return time.perf_counter() - started, batches

    # ---------------------------------------------------------------- modes

    def throughput(self, events: int) -> dict[str, Any]:
        """Available-now drain of ``events``: pipeline vs reference, tables compared."""
        topic = self.topic(events)
        self.spark()
        load = _load()
        print(f"throughput {events:,}: reference ...", file=sys.stderr)
        ref, ref_silver = self.reference(topic)
        if ref.events != events:
            raise RuntimeError(f"the reference read {ref.events} events, expected {events}")
        print(f"throughput {events:,}: reference, columnar decode ...", file=sys.stderr)
        columnar, columnar_silver = self.reference(topic, decoder="columnar")
        print(f"throughput {events:,}: pipeline ...", file=sys.stderr)
        settings = self.settings(topic)
        seconds, batches = self.drain(settings)
        rows = sum(b["rows"] for b in batches)
        keys = list(settings.pipeline(PIPELINE).keys)
        verified = compare_tables(_read(ref_silver), _read(_silver(settings)), keys)
        verified["pipeline_input_rows"] = rows
        same = compare_tables(_read(ref_silver), _read(columnar_silver), keys)
        verified["reference_decoders_agree"] = same["all_versions_equal"]
        in_batches = sum(b["seconds"] for b in batches)
        run = {
            "events": events,
            "load_average_1m": load,
            "reference": {
                "seconds": ref.seconds,
                "events_per_s": _rate(events, ref.seconds),
                "batches": ref.batches,
                "phases": {k: round(v, 3) for k, v in ref.phases.items()},
            },
            "reference_columnar": {
                "seconds": columnar.seconds,
                "events_per_s": _rate(events, columnar.seconds),
                "phases": {k: round(v, 3) for k, v in columnar.phases.items()},
            },
            "ratio_to_reference_columnar": _ratio(
                _rate(events, seconds), _rate(events, columnar.seconds)
            ),
            "pipeline": {
                "seconds": seconds,
                "events_per_s": _rate(events, seconds),
                "in_foreach_batch_seconds": in_batches,
                "batches": batches,
                "input_rows": rows,
            },
            "ratio": _ratio(_rate(events, seconds), _rate(events, ref.seconds)),
            "verified": verified,
            "ok": bool(
                verified["all_versions_equal"]
                and verified["reference_decoders_agree"]
                and rows == events
            ),
        }
        self.report.setdefault("throughput_runs", []).append(run)
        return run

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

    def latency(self, rate: int, seconds: int, trigger: str, skip_s: float) -> dict[str, Any]:
        """Live producer at ``rate``/s: event commit → visible in silver, both engines."""
        from cdc.config import parse_duration_seconds
        from cdc.kafka_admin import ensure_topic

        spark = self.spark()
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
            "load_average_1m": _load(),
        }

        # Pipeline.
        topic = self.register("bench.latency.pipeline")
        ensure_topic(self.bootstrap, topic, self.args.partitions)
        settings = self.settings(topic, trigger=trigger)
        producer = RateProducer(self.bootstrap, topic, events, rate, self.args.linger_ms)
        thread = threading.Thread(target=producer.run, name="rate-producer", daemon=True)
        print(f"latency: pipeline, {rate:,} ev/s for {seconds}s ...", file=sys.stderr)

        def covered(batches: list[Any]) -> bool:
            if thread.is_alive() or len(producer.delivered) < count:
                return False
            ends = batches[-1].ends
            need: dict[int, int] = {}
            for partition, offset, _ in producer.delivered:
                need[partition] = max(need.get(partition, 0), offset + 1)
            return all(ends.get(p, 0) >= o for p, o in need.items())

        batches = run_query_until(
            spark, settings, PIPELINE, covered, timeout_s=seconds + 180, on_start=thread.start
        )
        thread.join()
        visible = [(b.ends, b.visible_at) for b in batches]
        lat, missing = latencies(producer.delivered[skip:], visible)
        out["pipeline"] = _latency_summary(lat, missing, producer)
        out["pipeline"]["batches"] = len(batches)
        out["pipeline"]["mean_batch_seconds"] = statistics.fmean(b.seconds for b in batches)
        out["pipeline"]["per_batch"] = [
            {"rows": b.rows, "seconds": round(b.seconds, 3), **b.phases} for b in batches
        ]
        out["pipeline"]["mean_phase_seconds"] = {
            phase: statistics.fmean(b.phases.get(phase, 0.0) for b in batches)
            for phase in ("read", "bronze", "state", "fold", "merge")
        }

        # Reference, as a live consumer with the same trigger.
        topic = self.register("bench.latency.reference")
        ensure_topic(self.bootstrap, topic, self.args.partitions)
        self._runs += 1
        live = LiveReference(
            self.bootstrap,
            topic,
            str(self.workdir / f"run{self._runs}" / "reference" / "dim_contact"),
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

        No Spark: the decoded batch goes straight to the pipeline's ``BatchWriter.process``
        (bronze append, normalise, read the batch's keys, fold, MERGE), as ``foreachBatch``
        would run it. The dimension is loaded first with one create per key, then
        ``history_rounds`` rounds of one event per key (updates, a third of them tracked,
        and deletes and re-creates), one batch per round.
        """
        from cdc.contracts import TopicDecoder, load_contracts
        from cdc.pipelines import BatchWriter

        topic = self.register(f"bench.merge.{keys}.{history_rounds}")
        contract = load_contracts(self.contracts)[topic]
        decoder = TopicDecoder(self.registry, contract)
        settings = self.settings(topic)
        writer = BatchWriter(
            PIPELINE,
            settings.pipeline(PIPELINE),
            settings,
            settings.checkpoint_path(PIPELINE),
        )
        phases: dict[str, list[float]] = {"read_keys": [], "merge": [], "bronze": [], "total": []}
        timings: dict[str, float] = {}
        for role, method, name in (
            ("silver", "read_keys", "read_keys"),
            ("silver", "merge_scd2", "merge"),
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
                table = decoder.decode_batch(chunk)
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
    from cdc.jvm import classpath

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


def print_report(report: dict[str, Any]) -> None:
    """Human-readable summary: each pipeline figure next to the reference's."""
    m = report["machine"]
    print()
    print("cdc benchmark: Debezium contact envelopes (Confluent Avro) -> SCD2 silver (Delta)")
    print(
        f"  keys {report['keys']:,}  partitions {report['partitions']}  batch "
        f"(maxRecordsPerTrigger) {report['batch']:,}  Delta writer: {report['delta_writer']}"
        " (pipeline and reference)"
    )
    print(
        "  reference: 1 process, confluent-kafka -> fastavro -> apply_scd2 -> MERGE, no bronze;"
        " pipeline: Spark "
        f"{report.get('spark_master', '?')} ({report.get('parallelism', '?')} slots), Spark's "
        f"Kafka source {m.get('spark_kafka_source', '?')} + mapInArrow decode, bronze + silver"
    )
    print(f"  broker: Apache Kafka {m.get('kafka_broker', '?')} (embedded, KRaft, log on disk)")
    for run in report.get("throughput_runs", []):
        r, s = run["reference"], run["pipeline"]
        v = run["verified"]
        verdict = "identical" if v["all_versions_equal"] else "DIFFERENT"
        load = run["load_average_1m"]
        print(f"\n  throughput, {run['events']:,} events (available-now; load {load})")
        print(
            f"    reference {r['events_per_s']:>9,.0f} ev/s  {r['seconds']:6.2f} s   phases: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in r["phases"].items())
        )
        c = run["reference_columnar"]
        print(
            f"    reference {c['events_per_s']:>9,.0f} ev/s  {c['seconds']:6.2f} s   the same with "
            "the pipeline's columnar decoder: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in c["phases"].items())
        )
        print(
            f"    pipeline  {s['events_per_s']:>9,.0f} ev/s  {s['seconds']:6.2f} s   "
            f"{len(s['batches'])} batches, foreachBatch {s['in_foreach_batch_seconds']:.1f}s, "
            f"outside it (query start, planning, commits) "
            f"{s['seconds'] - s['in_foreach_batch_seconds']:.1f}s"
        )
        print(
            f"    ratio pipeline/reference {_f(run['ratio'])} (fastavro reference), "
            f"{_f(run['ratio_to_reference_columnar'])} (columnar reference)   silver tables "
            f"{verdict} ({v['reference_versions']:,} versions, {v['reference_current_rows']:,} "
            "current)"
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
    lt = report.get("latency")
    if lt:
        print(
            f"\n  latency, {lt['rate']:,} ev/s for {lt['seconds']}s, trigger {lt['trigger']}; "
            f"delivery report -> silver MERGE returned; first {lt['skipped_first_events']:,} "
            f"events excluded; producer linger.ms {lt['producer_linger_ms']} "
            f"(load {lt['load_average_1m']})"
        )
        for name in ("reference", "pipeline"):
            x = lt[name]
            print(
                f"    {name:<9} p50 {_f(x['p50_s'])} s  p99 {_f(x['p99_s'])} s  max "
                f"{_f(x['max_s'])} s  ({x['events']:,} events, {x['batches']} batches, "
                f"{x['not_visible']} not visible)"
            )
        ratio = _ratio(lt["pipeline"]["p99_s"], lt["reference"]["p99_s"])
        print(f"    p99 pipeline/reference {_f(ratio)}   target p99 <= 5 s")
        pl_ = lt["pipeline"]
        if "mean_phase_seconds" in pl_:
            parts = ", ".join(f"{k} {v:.2f}s" for k, v in pl_["mean_phase_seconds"].items())
            print(
                f"    pipeline mean batch {pl_['mean_batch_seconds']:.2f}s over "
                f"{pl_['batches']} batches: {parts}"
            )
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


def _pair(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(","))
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers a,b: {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (1 when a check failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"comma-separated subset of {', '.join(MODES)} (default: all)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the performance issue's sizes")
    size.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    parser.add_argument("--events", type=int, help="events (CI 200,000; --full 1,000,000)")
    parser.add_argument("--keys", type=int, help="distinct keys (CI 20,000; --full 100,000)")
    parser.add_argument("--batch", type=int, help="maxRecordsPerTrigger (default 50,000)")
    parser.add_argument("--partitions", type=int, default=4, help="topic partitions (4)")
    parser.add_argument("--warmup-batches", type=int, default=1, help="steady: excluded (1)")
    parser.add_argument("--rate", type=int, help="latency: events/s (CI 1,000; --full 2,000)")
    parser.add_argument("--seconds", type=int, help="latency: producing time (CI 20; --full 120)")
    parser.add_argument("--trigger", default="1 second", help="latency: trigger ('1 second')")
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
    parser.add_argument("--dimension-keys", type=_pair, help="scaling: two dimension sizes a,b")
    parser.add_argument("--merge-batch", type=int, help="scaling: updates per merged batch")
    parser.add_argument(
        "--history-rounds",
        type=int,
        help="scaling: rounds of updates loaded before the history comparison (CI 20; 0 = skip)",
    )
    parser.add_argument("--workdir", type=Path, help="keep tables here (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON result ({RESULTS})")
    args = parser.parse_args(argv)
    base = FULL if args.full else QUICK if args.quick else CI
    for name in ("events", "keys", "batch", "rate", "seconds", "merge_batch", "history_rounds"):
        if getattr(args, name) is None:
            setattr(args, name, base[name])
    for name in ("memory_events", "scaling_events", "dimension_keys"):
        if getattr(args, name) is None:
            setattr(args, name, base[name])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)} (valid: {', '.join(MODES)})")
    if min(args.events, args.keys, args.batch, args.partitions, args.rate, args.seconds) < 1:
        parser.error("sizes, rates and durations must be positive")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from cdc.broker import EmbeddedBroker

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    if args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "modes": modes,
        "events": args.events,
        "keys": args.keys,
        "batch": args.batch,
        "partitions": args.partitions,
        "delta_writer": DELTA_WRITER,
        "machine": _machine(),
    }
    exit_code = 0
    try:
        with EmbeddedBroker.start_on_free_port() as broker:
            print(f"embedded broker at {broker.bootstrap}; workdir {workdir}", file=sys.stderr)
            bench = Bench(broker.bootstrap, workdir, args)
            bench.report = report
            try:
                if "throughput" in modes:
                    bench.throughput(args.events)
                if "steady" in modes:
                    report["steady"] = bench.steady(args.events, args.warmup_batches)
                if "latency" in modes:
                    report["latency"] = bench.latency(
                        args.rate, args.seconds, args.trigger, args.latency_skip
                    )
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
    print_report(report)
    if "error" in report:
        print(f"  error: {report['error']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"  result: {args.output}")
    if exit_code:
        print(
            "benchmark FAILED: see above (a benchmark of a wrong result is worthless)",
            file=sys.stderr,
        )
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
