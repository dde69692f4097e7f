"""``make bench``: the Spark pipeline vs. a single-process reference on the same topic.

    python -m benchmarks.run [--events N] [--keys K] [--batch B] [--partitions P] [--quick]

Starts an embedded Tansu broker, produces N Debezium contact envelopes over K keys to a
fresh topic (:mod:`benchmarks.events`), then drains that topic twice into fresh SCD2
tables: once with the reference (:mod:`benchmarks.reference`: one process, confluent-kafka
→ fastavro → ``apply_scd2`` → delta-rs MERGE, micro-batches of B records) and once with
the pipeline (``cdc.pipelines.run_pipelines`` on ``crm_contacts`` with
``maxRecordsPerTrigger`` = B, available-now). The Spark run is timed warm: a small warm-up
run on its own topic and tables starts the JVM and the Python workers first. Both silver
tables must hold the same rows, or the numbers are not printed as a result.

Prints events/s of both and the ratio pipeline/reference, and writes the same figures to
``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.events import ProduceStats, produce_events
from benchmarks.reference import ReferenceResult, run_reference
from cdc.config import Settings, load_settings
from cdc.registry import FileRegistry

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "latest.json"
PIPELINE = "crm_contacts"
DELTA_WRITER = "delta-rs merge on driver"
QUICK = {"events": 20_000, "keys": 2_000, "batch": 5_000}
DEFAULTS = {"events": 200_000, "keys": 20_000, "batch": 50_000}
WARMUP_EVENTS = 5_000

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


def _settings(bootstrap: str, root: Path, topic: str, batch: int, contracts: Path) -> Settings:
    return load_settings(
        "local",
        overrides=[
            f"kafka.bootstrap_servers={bootstrap}",
            f"registry.contracts={contracts}",
            "kafka.embedded=false",
            f"lake.root={root / 'lake'}",
            f"checkpoints.root={root / 'checkpoints'}",
            f"pipelines.{PIPELINE}.topic={topic}",
            f"defaults.max_records_per_trigger={batch}",
            "metrics.enabled=false",
        ],
        config_dir=REPO / "config",
        environ={},
    )


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


def _run_spark(settings: Settings, warmup: Settings) -> tuple[float, int, list[dict[str, Any]]]:
    """Warm up on ``warmup``, then time ``run_pipelines`` on ``settings``."""
    from cdc.pipelines import BatchStats, run_pipelines
    from cdc.spark import build_session

    conf = {**settings.spark.conf, "spark.ui.showConsoleProgress": "false"}
    spark = build_session(app_name="cdc-bench", master=settings.spark.master, conf=conf)
    run_pipelines(spark, warmup, [PIPELINE], available_now=True)
    batches: list[dict[str, Any]] = []

    def on_batch(name: str, stats: BatchStats) -> None:
        batches.append(
            {
                "batch_id": stats.batch_id,
                "rows": stats.input_rows,
                "seconds": round(stats.seconds, 3),
            }
        )

    started = time.perf_counter()
    run_pipelines(spark, settings, [PIPELINE], available_now=True, on_batch=on_batch)
    seconds = time.perf_counter() - started
    parallelism = int(spark.sparkContext.defaultParallelism)
    return seconds, parallelism, batches


def _machine() -> dict[str, Any]:
    memory = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import deltalake
    import pyspark

    return {
        "cpus": os.cpu_count(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "deltalake": deltalake.__version__,
    }


def _rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else float("nan")


def _print_report(report: dict[str, Any]) -> None:
    p, r, s = report["produce"], report["reference"], report.get("pipeline")
    print()
    print("cdc benchmark: Debezium contact envelopes (Confluent Avro) -> SCD2 silver (Delta)")
    print(
        f"  events {report['events']:,}  keys {report['keys']:,}  partitions "
        f"{report['partitions']}  batch (maxRecordsPerTrigger) {report['batch']:,}"
    )
    print(
        f"  produce    {p['produce_seconds']:8.2f} s  {p['events_per_s']:>10,.0f} ev/s"
        "   (setup, not compared)"
    )
    print(
        f"  reference  {r['seconds']:8.2f} s  {r['events_per_s']:>10,.0f} ev/s"
        "   1 process: consume -> fastavro -> apply_scd2 -> MERGE (no bronze)"
    )
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in r["phases"].items())
    print(f"             phases: {phases}")
    if s is None:
        print(f"  pipeline   not run: {report.get('pipeline_error', 'skipped (--reference-only)')}")
    else:
        print(
            f"  pipeline   {s['seconds']:8.2f} s  {s['events_per_s']:>10,.0f} ev/s"
            f"   Spark {s['master']} ({s['parallelism']} slots), bronze + silver, "
            f"{len(s['batches'])} batches; warm: a {s['warmup_events']:,}-event warm-up run"
            " started the JVM and Python workers first (excluded)"
        )
        in_batches = sum(b["seconds"] for b in s["batches"])
        print(
            f"             foreachBatch (read + decode + bronze + silver) {in_batches:.1f}s, "
            f"the rest (query start, offsets, checkpoint commits) "
            f"{s['seconds'] - in_batches:.1f}s"
        )
        print(f"  ratio pipeline/reference  {report['ratio']:.2f}")
    print(f"  Delta writer: {report['delta_writer']} (both runs)")
    v = report.get("verified")
    if v:
        verdict = (
            "identical"
            if v["all_versions_equal"]
            else ("current rows equal, history differs" if v["current_equal"] else "DIFFERENT")
        )
        print(
            f"  silver tables: {verdict} ({v['reference_versions']:,} versions, "
            f"{v['reference_current_rows']:,} current rows in the reference; "
            f"{v['pipeline_versions']:,} / {v['pipeline_current_rows']:,} in the pipeline's)"
        )
    m = report["machine"]
    print(
        f"  machine: {m['cpus']} CPUs (load average {m['load_average_1m_at_start']} at start), "
        f"{m['memory_gib']} GiB, {m['platform']}, Python "
        f"{m['python']}, PySpark {m['pyspark']}, deltalake {m['deltalake']}; broker, reference "
        "and Spark share the machine, so the figures compare engines, not clusters"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (1 when the tables differ)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, help=f"events (default {DEFAULTS['events']:,})")
    parser.add_argument("--keys", type=int, help=f"distinct keys (default {DEFAULTS['keys']:,})")
    parser.add_argument(
        "--batch", type=int, help=f"records per micro-batch (default {DEFAULTS['batch']:,})"
    )
    parser.add_argument("--partitions", type=int, default=4, help="topic partitions (default 4)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 20k events, 2k keys, batch 5k unless given",
    )
    parser.add_argument("--reference-only", action="store_true", help="skip the Spark run")
    parser.add_argument("--workdir", type=Path, help="keep tables here (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON result ({RESULTS})")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    events = args.events or base["events"]
    keys = args.keys or base["keys"]
    batch = args.batch or base["batch"]
    if min(events, keys, batch, args.partitions) < 1:
        parser.error("--events, --keys, --batch and --partitions must be positive")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from cdc.broker import EmbeddedBroker

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cdc-bench-"))
    if args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
    registry = FileRegistry.load(REPO / "schemas" / "avro")
    topic = f"bench.contacts.{events}"
    warmup_topic = "bench.contacts.warmup"
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "events": events,
        "keys": min(keys, events),
        "batch": batch,
        "partitions": args.partitions,
        "delta_writer": DELTA_WRITER,
        "machine": _machine(),
    }
    exit_code = 0
    try:
        with EmbeddedBroker.start_on_free_port() as broker:
            print(f"embedded broker at {broker.bootstrap}; workdir {workdir}", file=sys.stderr)
            stats: ProduceStats = produce_events(
                broker.bootstrap, topic, events, keys, args.partitions, registry
            )
            report["produce"] = {
                **asdict(stats),
                "events_per_s": _rate(events, stats.produce_seconds),
            }
            print(
                f"produced {events:,} events to {topic} in {stats.produce_seconds:.1f}s "
                f"(encoded in {stats.encode_seconds:.1f}s)",
                file=sys.stderr,
            )

            contracts = write_contracts(workdir / "contracts.yaml", [topic, warmup_topic])
            settings = _settings(broker.bootstrap, workdir / "pipeline", topic, batch, contracts)
            print("reference run ...", file=sys.stderr)
            ref: ReferenceResult = run_reference(
                broker.bootstrap,
                topic,
                str(workdir / "reference" / "dim_contact"),
                settings.pipeline(PIPELINE),
                registry,
                batch,
            )
            if ref.events != events:
                raise RuntimeError(f"the reference read {ref.events} events, expected {events}")
            report["reference"] = {
                "seconds": ref.seconds,
                "events_per_s": _rate(events, ref.seconds),
                "batches": ref.batches,
                "phases": {k: round(v, 3) for k, v in ref.phases.items()},
            }
            if not args.reference_only:
                warm_events = min(WARMUP_EVENTS, events)
                produce_events(
                    broker.bootstrap,
                    warmup_topic,
                    warm_events,
                    max(1, min(keys, warm_events) // 10),
                    args.partitions,
                    registry,
                )
                warmup = _settings(
                    broker.bootstrap, workdir / "warmup", warmup_topic, batch, contracts
                )
                print("pipeline warm-up, then the timed run ...", file=sys.stderr)
                try:
                    seconds, parallelism, batches = _run_spark(settings, warmup)
                except Exception as exc:  # report what failed, keep the reference figures
                    report["pipeline_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    log.exception("pipeline run failed")
                    exit_code = 1
                else:
                    rows = sum(b["rows"] for b in batches)
                    report["pipeline"] = {
                        "seconds": seconds,
                        "events_per_s": _rate(events, seconds),
                        "master": settings.spark.master,
                        "parallelism": parallelism,
                        "batches": batches,
                        "input_rows": rows,
                        "warmup_events": warm_events,
                    }
                    report["ratio"] = (
                        report["pipeline"]["events_per_s"] / report["reference"]["events_per_s"]
                    )
                    verified = compare_tables(
                        _read(str(workdir / "reference" / "dim_contact")),
                        _read(_silver(settings)),
                        list(settings.pipeline(PIPELINE).keys),
                    )
                    verified["pipeline_input_rows"] = rows
                    report["verified"] = verified
                    if not (verified["all_versions_equal"] and rows == events):
                        exit_code = 1
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    _print_report(report)
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
