"""The ``cdc`` command line. Every command takes ``--env`` and ``--set dotted.key=value``.

A :class:`~cdc.errors.CdcError` becomes one line on stderr and exit code 2; only a bug
shows a traceback (exit code 1). Both are cleaned of every configured secret first
(:func:`cdc.runtime.logs.redact`), like every log line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from cdc.config.settings import ENVS, WAREHOUSE_TARGETS, Settings, load_settings
from cdc.errors import CdcError, ConfigError, first_line
from cdc.runtime.logs import configure_logging, redact, redact_secrets_of

# Each command imports the modules it needs when it runs (imports inside the functions below):
# `cdc --help` and every command load only what that command uses; Spark, the Kafka clients
# and the warehouses' drivers are slow to import.

if TYPE_CHECKING:
    from cdc.companions.maintenance import TableRef
    from cdc.lineage.events import Table
    from cdc.lineage.runs import RunHandle
    from cdc.ops.metrics import ServiceMetrics
    from cdc.pipeline.batch import BatchStats
    from cdc.warehouse.publish import PublishResult

__all__ = ["main"]

log = logging.getLogger("cdc")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _port(text: str) -> int:
    """argparse type: a TCP port (1-65535)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env", default="local", help=f"environment: {', '.join(ENVS)} (default local)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set kafka.bootstrap_servers=host:9092 (repeatable)",
    )
    parser.add_argument("--config-dir", type=Path, default=None, help="folder with <env>.yaml")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a line per micro-batch on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text or as JSON objects (pipeline, batch id, counts as fields)",
    )


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="cdc", description="Streaming CDC: Kafka + Avro -> Delta bronze/silver SCD2"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run pipelines (all, or one with --pipeline)")
    _common(run)
    run.add_argument("--pipeline", help="run only this pipeline")
    run.add_argument(
        "--database", help="run only the tables of this databases stanza (new ones too)"
    )
    run.add_argument(
        "--available-now", action="store_true", help="drain what is in Kafka now, then exit"
    )

    produce = sub.add_parser(
        "produce", help="send JSON lines as Avro (Confluent framing) to a topic"
    )
    _common(produce)
    produce.add_argument("--topic", required=True)
    produce.add_argument(
        "--file", required=True, type=Path, help="JSON lines: {key, value, partition?}"
    )
    produce.add_argument(
        "--partitions", type=int, default=3, help="partitions if the topic is created"
    )

    broker = sub.add_parser(
        "broker", help="start the embedded Apache Kafka broker (KRaft, one node, log on disk)"
    )
    _common(broker)
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument(
        "--port", type=_port, default=None, help="default: the port of kafka.bootstrap_servers"
    )
    broker.add_argument(
        "--data-dir",
        type=Path,
        default=Path("var/kafka"),
        help="the broker's folder; topics survive restarts (default var/kafka)",
    )

    schemas = sub.add_parser("schemas", help="registry tools")
    schemas_sub = schemas.add_subparsers(
        dest="schemas_command", required=True, parser_class=_Parser
    )
    check = schemas_sub.add_parser("check", help="verify BACKWARD compatibility of every subject")
    _common(check)

    demo = sub.add_parser(
        "demo", help="embedded broker + generated data set + all pipelines, then a summary"
    )
    _common(demo)
    demo.add_argument(
        "--workdir", type=Path, default=Path("var/demo"), help="wiped and reused (default var/demo)"
    )
    demo.add_argument("--seed", type=int, default=7)

    status = sub.add_parser("status", help="offsets, lag and table versions per pipeline")
    _common(status)
    status.add_argument("--pipeline")
    status.add_argument(
        "--json", action="store_true", help="one JSON document (a list, one entry per pipeline)"
    )

    maintain = sub.add_parser("maintain", help="OPTIMIZE/Z-ORDER, VACUUM and health of tables")
    maintain_sub = maintain.add_subparsers(
        dest="maintain_command", required=True, parser_class=_Parser
    )
    m_optimize = maintain_sub.add_parser(
        "optimize", help="compact and Z-ORDER each table (purge deletion vectors on delta-spark)"
    )
    m_vacuum = maintain_sub.add_parser("vacuum", help="delete files no recent version needs")
    m_health = maintain_sub.add_parser(
        "health", help="files, small files, versions; exit 1 when a threshold is exceeded"
    )
    for command in (m_optimize, m_vacuum, m_health):
        _common(command)
        command.add_argument(
            "--table", help="a pipeline (its tables) or <layer>/<table>, e.g. silver/dim_contact"
        )
    m_vacuum.add_argument(
        "--retention-hours",
        type=float,
        default=None,
        help="keep files versions of the last N hours need (default and floor:"
        " maintenance.min_retention_hours)",
    )
    m_vacuum.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    m_vacuum.add_argument(
        "--force", action="store_true", help="allow a retention below the configured floor"
    )

    dr = sub.add_parser("dr", help="DR snapshots of the lake, their verification and restore")
    dr_sub = dr.add_subparsers(dest="dr_command", required=True, parser_class=_Parser)
    dr_snapshot = dr_sub.add_parser(
        "snapshot", help="copy a consistent version of every table to the DR location"
    )
    dr_verify = dr_sub.add_parser(
        "verify",
        help="check a snapshot's signature, files (size, SHA-256) and tables (version, rows)",
    )
    dr_restore = dr_sub.add_parser(
        "restore",
        help="rebuild a snapshot's tables under --to; into the lake root, re-point the pipelines",
        description=(
            "Refuses /, a place inside or around the live lake, the checkpoints or the DR"
            " location, and a manifest that is damaged, unsigned or names a path outside its"
            " table. Into the configured lake root, the checkpoints of the restored pipelines"
            " are moved aside and their replays prepared; anywhere else, they are left alone"
            " unless --repoint-checkpoints."
        ),
    )
    dr_repoint = dr_sub.add_parser(
        "repoint",
        help="move the pipelines' checkpoints aside to resume on a restored lake at --to",
        description=(
            "For each pipeline whose bronze or quarantine is at --to: move its checkpoint"
            " aside (kept as <pipeline>.replaced-<UTC time>) and prepare a replay from the"
            " first offset those tables do not hold. Then start the pipelines with lake.root"
            " set to --to. Refused while a pipeline runs; needs the broker."
        ),
    )
    for command in (dr_snapshot, dr_verify, dr_restore, dr_repoint):
        _common(command)
    for command in (dr_snapshot, dr_verify, dr_restore):
        command.add_argument("--location", help="the DR location (default: dr.location)")
    for command in (dr_verify, dr_restore):
        command.add_argument("--snapshot", help="snapshot id (default: the latest)")
        command.add_argument(
            "--allow-unsigned",
            action="store_true",
            help="trust a manifest and latest.json without a valid signature (dr.manifest_key);"
            " their shape and paths are still checked",
        )
    dr_restore.add_argument("--to", required=True, help="the lake root to rebuild the tables in")
    dr_repoint.add_argument("--to", required=True, help="the restored lake root")
    dr_restore.add_argument("--table", help="only this table, e.g. silver/dim_contact")
    dr_restore.add_argument(
        "--version",
        type=int,
        default=None,
        help="with --table: its Delta version, from the newest snapshot that recorded it",
    )
    checkpoints = dr_restore.add_mutually_exclusive_group()
    checkpoints.add_argument(
        "--tables-only",
        action="store_true",
        help="restore the tables but leave the checkpoints as they are (no broker needed)",
    )
    checkpoints.add_argument(
        "--repoint-checkpoints",
        action="store_true",
        help="re-point the restored pipelines at --to even when it is not the configured lake"
        " root (their checkpoints are moved aside; start them with lake.root set to --to)",
    )

    publish = sub.add_parser(
        "publish",
        help="copy gold tables to the warehouse: what changed since the version it holds",
        description=(
            "Publish each gold table's current Delta version to the warehouse (warehouse.*):"
            " the rows changed since the version its control table names, upserted and"
            " deleted by key in one transaction with the control table's update. A table"
            " already at its version is left alone (a re-run publishes nothing)."
        ),
    )
    _common(publish)
    publish.add_argument(
        "--table",
        dest="tables",
        action="extend",
        nargs="+",
        default=[],
        metavar="T",
        help="gold table(s) to publish (repeatable; default: every gold table)",
    )
    publish.add_argument(
        "--target", choices=WAREHOUSE_TARGETS, help="the warehouse (default: warehouse.target)"
    )

    sla = sub.add_parser("sla", help="service-level checks")
    sla_sub = sla.add_subparsers(dest="sla_command", required=True, parser_class=_Parser)
    sla_check = sla_sub.add_parser(
        "check",
        help="judge freshness and no-records SLAs; notify Slack/SNS once per breach",
        description=(
            "Judge each pipeline's freshness and no-records SLAs (defaults.sla,"
            " pipelines.<name>.sla) and send a breach to the configured notify targets when"
            " it opens and when it closes. An unreachable broker or lake is a breach of its"
            " own (broker_unreachable, lake_unreachable). Exit code 1 while any breach is open."
        ),
    )
    _common(sla_check)
    sla_check.add_argument("--pipeline")

    replay = sub.add_parser(
        "replay",
        help="restart a pipeline from offsets, a timestamp or the earliest offsets",
        description=(
            "Move the pipeline's checkpoint aside (kept as <pipeline>.replaced-<UTC time>) and"
            " restart it from the given position. Records already in bronze are not appended"
            " again; silver re-applies them (a no-op unless corrected events arrived since)."
            " Refused while the pipeline runs."
        ),
    )
    _common(replay)
    replay.add_argument("--pipeline", required=True)
    position = replay.add_mutually_exclusive_group(required=True)
    position.add_argument(
        "--offsets",
        metavar="JSON",
        help='per partition, e.g. {"crm.contacts": {"0": 42}}; partitions not named resume'
        " where the pipeline stopped",
    )
    position.add_argument(
        "--timestamp",
        metavar="ISO8601",
        help="first record at or after this time (Kafka timestamp), e.g. 2026-01-05T08:00:00Z",
    )
    position.add_argument(
        "--earliest", action="store_true", help="every partition from its earliest offset"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="print what would be re-read; change nothing"
    )
    replay.add_argument(
        "--no-run",
        action="store_true",
        help="only prepare the checkpoint (the always-on app applies it when restarted)",
    )
    replay.add_argument(
        "--diff",
        action="store_true",
        help="report per table the keys and versions the replay added, closed, rewrote and"
        " removed, with examples; with --dry-run it replays into a scratch copy of the tables",
    )

    verify = sub.add_parser(
        "verify",
        help="check the SCD2 invariants of silver tables (and repeated event ids of facts)",
        description=(
            "Check whole silver tables: per SCD2 key at most one current version, is_current"
            " agreeing with valid_to, no inverted or overlapping intervals, no unexplained gap,"
            " no repeated (keys, _seq_open); per facts table no repeated event id. Lists the"
            " first violations of each kind with their keys and counts the rest. Exit code 1"
            " when any table has a violation."
        ),
    )
    _common(verify)
    verify.add_argument(
        "--table",
        dest="tables",
        action="append",
        default=[],
        metavar="T",
        help="silver/<target> or <target>, e.g. silver/dim_contact (repeatable; default: all)",
    )
    verify.add_argument("--pipeline", help="only this pipeline's silver table")
    verify.add_argument("--json", action="store_true", help="one JSON document (a list of tables)")

    snapshot = sub.add_parser(
        "snapshot",
        help="ask the Debezium connector for an incremental snapshot of a table, and watch it",
        description=(
            "Send Debezium's execute-snapshot signal for the pipeline's table to the"
            " connector's Kafka signal topic (partition 0, keyed by the connector's"
            " topic.prefix), then report the snapshot rows (op r) as they arrive on the topic."
            " The connector needs the kafka signal channel (signal.enabled.channels)."
            " Exit code 1 when no snapshot row arrived within --wait."
        ),
    )
    _common(snapshot)
    snapshot.add_argument(
        "--table", required=True, metavar="T", help="the pipeline, or its silver target"
    )
    snapshot.add_argument("--filter", help="SQL condition on the rows to read (optional)")
    snapshot.add_argument(
        "--blocking", action="store_true", help="a blocking snapshot (streaming pauses)"
    )
    snapshot.add_argument(
        "--wait", type=float, default=300.0, metavar="S", help="watch at most S seconds (300)"
    )
    snapshot.add_argument(
        "--quiet",
        type=float,
        default=30.0,
        metavar="S",
        help="done after S seconds without a snapshot row (30)",
    )

    gold = sub.add_parser("gold", help="the gold tables, built from silver")
    gold_sub = gold.add_subparsers(dest="gold_command", required=True, parser_class=_Parser)
    gold_build = gold_sub.add_parser(
        "build",
        help="refresh the gold tables from silver's changes since the last build",
        description=(
            "Build gold/customer_360, gold/daily_revenue, gold/opportunity_pipeline and"
            " gold/customer_features from silver. Incremental: only the grains silver's changes"
            " since the last build touch are recomputed, and only rows that differ are written;"
            " a build that changes nothing writes no Delta version. One line per table."
        ),
    )
    _common(gold_build)
    gold_build.add_argument(
        "--table",
        dest="tables",
        action="extend",
        nargs="+",
        metavar="T",
        help="only these gold tables (repeatable; default: all)",
    )
    gold_build.add_argument(
        "--full", action="store_true", help="recompute every grain (the same result, slower)"
    )
    gold_build.add_argument(
        "--as-of",
        metavar="YYYY-MM-DD",
        help="the reference day: features describe it, 90-day windows end on it (default: the"
        " day of the newest order or behaviour event, at most today)",
    )

    governance = sub.add_parser(
        "governance",
        help="who may read what: plan, apply and check the access policy per target",
        description=(
            "The access policy of the environment (config/governance/<env>.yaml:"
            " roles, the tables each reads, column masks, row scopes), enforced by each"
            " target: postgres (roles, column privileges, masked security_barrier views,"
            " row-level security, pgaudit), lakeformation (LF-tags and grants), duckdb (one"
            " read-only file per audience), snowflake (masking and row access policies)."
            " plan prints what apply would change; check exits 1 when a target has drifted."
        ),
    )
    governance_sub = governance.add_subparsers(
        dest="governance_command", required=True, parser_class=_Parser
    )
    for name, text in (
        ("plan", "print what apply would change"),
        ("apply", "make the targets match the policy"),
        ("check", "report drift between the policy and the targets (exit 1 when any)"),
    ):
        command = governance_sub.add_parser(name, help=text)
        _common(command)
        command.add_argument(
            "--target",
            choices=("postgres", "lakeformation", "duckdb", "snowflake"),
            help="one target (default: every target the policy configures)",
        )
    docs = governance_sub.add_parser(
        "docs", help="write the runbook's access tables from the policy files of every env"
    )
    _common(docs)
    docs.add_argument(
        "--output",
        type=Path,
        default=Path("docs/runbooks/data-access-governance.md"),
        help="the runbook (default docs/runbooks/data-access-governance.md)",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.env, args.overrides, args.config_dir)
    redact_secrets_of(settings)
    if settings.databases and args.command != "broker":
        settings = _with_databases(settings)
    return settings


def _with_databases(settings: Settings) -> Settings:
    """``settings`` with a pipeline per table topic of its ``databases`` stanzas (the broker's
    topics now); without the broker, the configured pipelines alone, said on stderr."""
    from cdc.errors import BrokerUnavailableError
    from cdc.pipeline.databases import with_tables

    try:
        return with_tables(settings)
    except BrokerUnavailableError as exc:
        print(
            f"warning: the tables of databases {', '.join(settings.databases)} are left out: {exc}",
            file=sys.stderr,
        )
        return settings


def _check_contracts(settings: Settings, names: Sequence[str]) -> None:
    """Fail before Spark starts, in one line, when a pipeline's topic has no contract or an
    expectation does not fit its record."""
    from cdc.ingest.contracts import load_contracts

    contracts = load_contracts(settings.registry.contracts)
    missing = [  # a database's table without one is read as Debezium's envelope
        f"{name} (topic {settings.pipeline(name).topic})"
        for name in names
        if settings.pipeline(name).topic not in contracts
        and settings.pipeline(name).database is None
    ]
    if missing:
        raise ConfigError(
            f"no contract in {settings.registry.contracts} for pipeline {', '.join(missing)};"
            f" topics with a contract: {', '.join(sorted(contracts))}"
        )
    from cdc.pipeline.expectations import expectations_for

    for name in names:  # expectations against the record's columns, before Spark starts too
        expectations_for(name, settings.pipeline(name), settings)


def _check_broker(settings: Settings) -> None:
    """Fail fast, in one line, when the configured Kafka cluster cannot be reached."""
    from cdc.runtime.kafka_admin import require_broker

    require_broker(settings.kafka)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    names = list(settings.selected(args.pipeline))
    if args.database is not None:
        if args.database not in settings.databases:
            known = ", ".join(sorted(settings.databases)) or "none"
            raise ConfigError(f"no databases stanza {args.database!r} (stanzas: {known})")
        names = [n for n in names if settings.pipeline(n).database == args.database]
    if not names:
        raise ConfigError("no enabled pipelines to run")
    from cdc.pipeline.queries import run_pipelines
    from cdc.runtime.faults import FAULT_ENV, fault_hook_from_env
    from cdc.runtime.spark import build_session

    fault_hook = fault_hook_from_env()
    if fault_hook is not None and settings.env == "prod":
        raise ConfigError(f"{FAULT_ENV} is for tests and refused in env prod")
    _check_contracts(settings, names)
    from cdc.runtime.locks import PipelineLock

    # Two queries on one checkpoint corrupt it: one writer per pipeline, replays included.
    with ExitStack() as locks:
        for name in names:
            locks.enter_context(
                PipelineLock(settings.checkpoints.root, name, action="starting it again")
            )
        _check_broker(settings)

        spark = build_session(
            app_name=f"cdc-{settings.env}",
            master=settings.spark.master,
            conf=settings.spark.conf,
            object_store=settings.lake.on_object_store,
            lineage=_spark_lineage(settings),
        )
        mode = "available-now" if args.available_now else "continuous"
        print(f"running {', '.join(names)} ({mode}, env {settings.env})", file=sys.stderr)
        feeds: list[BatchCallback] = []
        registry = None
        if settings.metrics.enabled:
            metrics = _serve_metrics(settings, names, spark, locks)
            feeds.append(metrics.on_batch)
            registry = metrics.registry
        if _wants_progress(args):
            feeds.append(print_progress)
        from cdc.lineage import streaming_run

        # The queries' OpenLineage runs: START now, RUNNING per micro-batch, then the end.
        def discover(current: Settings) -> Settings:
            """The tables created since (a database's new topics), each locked for its run."""
            found = _with_databases(current)
            for name, pipeline in found.pipelines.items():
                if pipeline.database is not None and name not in current.pipelines:
                    locks.enter_context(
                        PipelineLock(settings.checkpoints.root, name, action="starting it again")
                    )
                    print(f"new table {pipeline.topic}: pipeline {name}", file=sys.stderr)
            return found

        with streaming_run(settings, names, spark, registry) as lineage_feed:
            if lineage_feed is not None:
                feeds.append(lineage_feed)
            run_pipelines(
                spark,
                settings,
                names,
                available_now=args.available_now,
                fault_hook=fault_hook,
                on_batch=_fan_out(feeds),
                discover=discover if settings.databases and args.pipeline is None else None,
            )
    return 0


def _companion(
    settings: Settings,
    job: str,
    inputs: Sequence[Table] = (),
    outputs: Sequence[Table] = (),
    *,
    spark: Any = None,
) -> AbstractContextManager[RunHandle]:
    """A companion command's OpenLineage run (:func:`cdc.lineage.companion_run`)."""
    from cdc.lineage.runs import companion_run

    return companion_run(settings, job, inputs, outputs, spark=spark)


def _spark_lineage(settings: Settings) -> bool:
    """Whether a session needs the OpenLineage Spark agent's JAR."""
    return settings.lineage.enabled and settings.lineage.spark_agent


BatchCallback = Callable[[str, "BatchStats"], None]


def _wants_progress(args: argparse.Namespace) -> bool:
    choice = getattr(args, "progress", None)
    return sys.stderr.isatty() if choice is None else bool(choice)


def print_progress(name: str, stats: BatchStats) -> None:
    """One line per written micro-batch on stderr (``--progress``)."""
    parts = [f"{stats.input_rows} records", f"bronze +{stats.bronze_rows}"]
    if stats.quarantined:
        parts.append(f"quarantine +{stats.quarantined}")
    changes = (stats.inserted, stats.updated, stats.closed)
    if any(changes):
        parts.append("silver {} inserted, {} updated, {} closed".format(*changes))
    print(
        f"{name} batch {stats.batch_id}: {', '.join(parts)} in {stats.seconds:.1f}s",
        file=sys.stderr,
    )


def _fan_out(feeds: list[BatchCallback]) -> BatchCallback | None:
    if not feeds:
        return None
    if len(feeds) == 1:
        return feeds[0]

    def both(name: str, stats: BatchStats) -> None:
        for feed in feeds:
            feed(name, stats)

    return both


def _serve_metrics(
    settings: Settings, names: list[str], spark: Any, stack: ExitStack
) -> ServiceMetrics:
    """Start ``/metrics``, ``/healthz`` and ``/readyz`` and the query listener (closed with
    ``stack``)."""
    from cdc.ops.metrics import MetricsServer, QueryListener, ServiceMetrics

    metrics = ServiceMetrics(names, sla={name: settings.sla(name) for name in names})
    host, port = settings.metrics.host, settings.metrics.port

    def broker_up() -> bool:
        try:
            _check_broker(settings)
        except CdcError:
            return False
        return True

    try:
        server = MetricsServer(metrics, host, port, broker_up)
    except OSError as exc:
        raise ConfigError(
            f"metrics.port: cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            " (another process uses it? set metrics.port, or metrics.enabled=false)"
        ) from None
    stack.enter_context(server)
    listener = QueryListener(spark, metrics)
    stack.callback(listener.close)
    print(f"metrics on http://{host}:{server.port}/metrics", file=sys.stderr)
    return metrics


def _cmd_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pipeline = settings.pipeline(args.pipeline)
    from cdc.ops.replay import ReplayPosition, dry_run_report, replay_pipeline, run_available_now

    if args.offsets is not None:
        position = ReplayPosition.from_offsets(args.offsets, pipeline.topic)
    elif args.timestamp is not None:
        position = ReplayPosition.from_timestamp(args.timestamp)
    else:
        position = ReplayPosition.earliest()
    if args.diff and args.no_run and not args.dry_run:
        raise ConfigError(
            "--diff compares the tables after the replay ran: drop --no-run, or use"
            " --dry-run --diff to see it without changing anything"
        )
    _check_contracts(settings, [args.pipeline])
    _check_broker(settings)

    def runner(s: Settings, name: str, on_batch: BatchCallback) -> None:
        extra = [print_progress] if _wants_progress(args) else []
        run_available_now(s, name, _fan_out([on_batch, *extra]) or on_batch)

    from cdc.ops.replay_diff import diff_pipeline, format_diff, scratch_lake, table_versions

    if args.dry_run:
        print(dry_run_report(settings, args.pipeline, position))
        if args.diff:
            with scratch_lake(settings, args.pipeline) as (scratch, versions):
                replay_pipeline(scratch, args.pipeline, position, runner=runner)
                diffs = diff_pipeline(settings, args.pipeline, versions, scratch)
            print(format_diff(args.pipeline, diffs, dry_run=True))
        return 0
    before = table_versions(settings, args.pipeline) if args.diff else None
    outcome = replay_pipeline(
        settings, args.pipeline, position, runner=None if args.no_run else runner
    )
    print(outcome.summary())
    if before is not None:
        diffs = diff_pipeline(settings, args.pipeline, before)
        print(format_diff(args.pipeline, diffs, dry_run=False))
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from cdc.ingest.contracts import load_contracts
    from cdc.ingest.produce import produce_file
    from cdc.ingest.registry import FileRegistry

    if not args.file.is_file():
        raise ConfigError(f"--file {args.file}: no such file")
    report = produce_file(
        settings.kafka.bootstrap_servers,
        FileRegistry.load(settings.registry.path),
        load_contracts(settings.registry.contracts),
        args.topic,
        args.file,
        partitions_if_create=args.partitions,
        client_config=settings.kafka.client_config(),
    )
    print(f"sent {report.sent} records to {args.topic}")
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    port = args.port
    if port is None:
        _, _, tail = settings.kafka.bootstrap_servers.split(",")[0].rpartition(":")
        if not tail.isdigit():
            raise ConfigError(
                f"kafka.bootstrap_servers {settings.kafka.bootstrap_servers!r} has no port"
            )
        port = int(tail)
    from cdc.runtime.broker import run_broker_forever

    run_broker_forever(args.host, port, workdir=args.data_dir)
    return 0


def _cmd_schemas_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from cdc.ingest.registry import FileRegistry, check_path

    problems = check_path(settings.registry.path)
    if problems:
        for problem in problems:
            print(f"cdc: schemas: {problem}", file=sys.stderr)
        print(
            f"cdc: error: {len(problems)} registry problem(s) in {settings.registry.path}",
            file=sys.stderr,
        )
        return 2
    subjects = FileRegistry.load(settings.registry.path).subjects()
    print(f"ok: {len(subjects)} subjects, every version BACKWARD compatible with its predecessor")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from cdc.errors import BrokerUnavailableError
    from cdc.ops.status import format_status, pipeline_status

    # The tables and checkpoints are shown either way; an unreachable broker (lag unknown)
    # still ends in the one-line error and exit code 2.
    unreachable: BrokerUnavailableError | None = None
    try:
        _check_broker(settings)
    except BrokerUnavailableError as exc:
        unreachable = exc
    statuses = [
        pipeline_status(settings, name, broker=unreachable is None)
        for name in settings.selected(args.pipeline)
    ]
    if args.json:
        import json

        print(json.dumps([s.to_json() for s in statuses], indent=2))
    else:
        print("\n".join(format_status(s) for s in statuses))
    if unreachable is not None:
        raise unreachable
    return 0


def _cmd_dr(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from cdc.companions.dr import UnsoundSnapshotError

    try:
        if args.dr_command == "repoint":  # checkpoints only: no data is read or written
            from cdc.lineage.runs import NO_RUN

            return _dr_on_storage(args, settings, NO_RUN)
        with _companion(settings, f"dr.{args.dr_command}", *_dr_datasets(args, settings)) as run:
            return _dr_on_storage(args, settings, run)
    except UnsoundSnapshotError as exc:  # what verify reports as "NOT sound": exit code 1
        print(f"cdc: not sound: {exc}", file=sys.stderr)
        return 1


def _dr_datasets(args: argparse.Namespace, settings: Settings) -> tuple[list[Table], list[Table]]:
    """A DR command's datasets: the configured lake tables and their DR copies."""
    from cdc.companions.maintenance import maintenance_tables
    from cdc.lineage.datasets import dr_tables

    location = args.location or settings.dr.location
    if location is None:  # the command stops with its own error
        return [], []
    names = [args.table] if getattr(args, "table", None) else None
    names = names or [ref.name for ref in maintenance_tables(settings)]
    if args.dr_command == "restore":
        return dr_tables(settings, location, names, to=args.to)
    inputs, outputs = dr_tables(settings, location, names)
    return (outputs, []) if args.dr_command == "verify" else (inputs, outputs)


def _dr_warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"cdc: warning: {warning}", file=sys.stderr)


def _dr_on_storage(args: argparse.Namespace, settings: Settings, run: RunHandle) -> int:
    from cdc.companions import dr

    try:
        return _dr_command(args, settings, run)
    except OSError as exc:  # pyarrow.fs: the DR location or the lake refused or is unreachable
        raise dr.DrError(f"dr {args.dr_command}: storage failed: {first_line(exc)}") from None


def _dr_command(args: argparse.Namespace, settings: Settings, run: RunHandle) -> int:
    from cdc.companions import dr

    if args.dr_command == "snapshot":
        taken = dr.snapshot(settings, args.location)
        from cdc.lineage.datasets import dr_tables

        copies = {t.name: t.rows for t in taken.tables}
        run.add(*dr_tables(settings, taken.location, copies, rows=copies))
        _dr_warn(taken.warnings)
        for table in taken.tables:
            print(table.line())
        print(f"snapshot {taken.snapshot} at {taken.location} in {taken.seconds:.1f}s")
        return 0
    if args.dr_command == "verify":
        checked = dr.verify(
            settings, args.location, args.snapshot, allow_unsigned=args.allow_unsigned
        )
        _dr_warn(checked.warnings)
        for problem in checked.problems:
            print(f"problem: {problem}")
        print(f"snapshot {checked.snapshot}: {'NOT sound' if checked.problems else 'sound'}")
        return 1 if checked.problems else 0
    if args.dr_command == "repoint":
        _check_broker(settings)
        for done in dr.repoint(settings, args.to):
            print(done.line(args.to))
        print(f"start the pipelines with lake.root={args.to}")
        return 0
    repoint = False if args.tables_only else True if args.repoint_checkpoints else None
    if repoint or (repoint is None and dr.is_lake_root(settings, args.to)):
        _check_broker(settings)  # before anything is copied
    restored = dr.restore(
        settings,
        args.to,
        location=args.location,
        snapshot_id=args.snapshot,
        repoint=repoint,
        table=args.table,
        version=args.version,
        allow_unsigned=args.allow_unsigned,
    )
    _dr_warn(restored.warnings)
    for name, version in sorted(restored.tables.items()):
        print(f"{name}: restored at version {version}")
    print(f"restored snapshot {restored.snapshot} into {args.to} in {restored.seconds:.1f}s")
    print("\n".join(restored.checkpoint_lines(settings.lake.root)))
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    if args.target is not None:
        args.overrides = [*args.overrides, f"warehouse.target={args.target}"]
    settings = _settings(args)
    from cdc.runtime.faults import FAULT_ENV, fault_hook_from_env
    from cdc.warehouse.publish import publish

    fault_hook = fault_hook_from_env()
    if fault_hook is not None and settings.env == "prod":
        raise ConfigError(f"{FAULT_ENV} is for tests and refused in env prod")
    from cdc.gold import GOLD_TABLES
    from cdc.lineage.datasets import publish_tables, warehouse_dataset

    names = [n for n in dict.fromkeys(args.tables or GOLD_TABLES) if n in GOLD_TABLES]
    with _companion(settings, "publish", *publish_tables(settings, names)) as run:

        def on_result(result: PublishResult) -> None:
            run.count({warehouse_dataset(settings, result.table): result.upserted + result.deleted})
            print(result.line(), flush=True)

        publish(settings, args.tables or None, fault_hook=fault_hook, on_result=on_result)
    return 0


def _cmd_maintain(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from cdc.companions import maintenance
    from cdc.lineage.datasets import maintain_tables

    refs = maintenance.maintenance_tables(settings, args.table)
    tables = maintain_tables(settings, [ref.uri for ref in refs])
    job = f"maintain.{args.maintain_command}"
    if args.maintain_command == "health":
        with _companion(settings, job, tables):  # reads the tables' logs, writes nothing
            reports = maintenance.health(settings, refs)
            for report in reports:
                print(report.line())
        return 1 if any(r.problems for r in reports) else 0
    if args.maintain_command == "vacuum":
        maintenance.retention(settings, args.retention_hours, args.force)  # before Spark starts
    spark = None
    if settings.lake.writer == "delta-spark":
        from cdc.runtime.spark import build_session

        spark = build_session(
            app_name=f"cdc-{settings.env}-maintain",
            master=settings.spark.master,
            conf=settings.spark.conf,
            object_store=settings.lake.on_object_store,
            lineage=_spark_lineage(settings),
        )
    with _companion(settings, job, tables, tables, spark=spark):
        return _maintain_tables(args, settings, refs, spark)


def _maintain_tables(
    args: argparse.Namespace, settings: Settings, refs: list[TableRef], spark: Any
) -> int:
    from cdc.companions import maintenance

    if args.maintain_command == "optimize":
        done: Sequence[maintenance.OptimizeOutcome | maintenance.VacuumOutcome] = (
            maintenance.optimize(settings, refs, spark)
        )
    else:
        done = maintenance.vacuum(
            settings,
            refs,
            args.retention_hours,
            dry_run=args.dry_run,
            force=args.force,
            spark=spark,
        )
    for result in done:  # every table's line, failures too: one did not stop the others
        print(result.line())
    failed = [d for d in done if d.error is not None]
    if failed:
        raise maintenance.MaintenanceError(
            f"{args.maintain_command.upper()} failed on {len(failed)} of {len(done)} tables"
            f" ({', '.join(d.table.name for d in failed)}); the others were done"
        )
    return 0


def _cmd_sla_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    names = list(settings.selected(args.pipeline))
    if not names:
        raise ConfigError("no enabled pipelines to check")
    from cdc.lineage.datasets import sla_tables
    from cdc.ops.sla import check_slas

    with _companion(settings, "sla.check", sla_tables(settings, names)):
        # An unreachable broker or lake is a breach of its own (notified), not an error.
        result = check_slas(settings, names)
        print("\n".join(result.lines(names)))
    return 1 if result.breaches else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.env != "local":
        raise ConfigError("cdc demo runs on the embedded default only (--env local)")
    from cdc_demo.run import run_demo

    run_demo(args.workdir.resolve(), seed=args.seed, overrides=args.overrides)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from cdc.ops.verify import verify

    checks = verify(settings, args.tables, args.pipeline)
    if args.json:
        print(json.dumps([c.to_json() for c in checks], indent=2))
    else:
        for check in checks:
            print("\n".join(check.lines()))
    return 0 if all(c.sound for c in checks) else 1


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from cdc.ops.snapshot import send_snapshot_signal, signal_for, watch_snapshot
    from cdc.runtime.kafka_admin import KafkaMetadata

    settings = _settings(args)
    name = _pipeline_of_table(settings, args.table)
    signal = signal_for(
        settings, name, kind="blocking" if args.blocking else "incremental", filter=args.filter
    )
    topic = settings.pipeline(name).topic
    meta = KafkaMetadata.for_settings(settings.kafka)
    try:
        marks = meta.topic_watermarks([topic])
    finally:
        meta.close()
    start = {p: wm.high for (_, p), wm in marks.items()}
    send_snapshot_signal(settings, signal)
    print(
        f"sent execute-snapshot {signal.id} for {', '.join(signal.collections)} to"
        f" {signal.topic} (connector {signal.connector}); watching {topic}"
    )
    progress = watch_snapshot(
        settings,
        name,
        start,
        wait_s=args.wait,
        quiet_s=args.quiet,
        report=lambda p: print(p.line(name), flush=True),
    )
    if not progress.rows:
        print(
            f"no snapshot row arrived on {topic} within {args.wait:g} s: is the kafka signal"
            f" channel enabled on connector {signal.connector} (signal.enabled.channels) and"
            f" does it read {signal.topic}?"
        )
        return 1
    return 0


def _pipeline_of_table(settings: Settings, table: str) -> str:
    """The pipeline named ``table``, or whose silver target it is."""
    if table in settings.pipelines:
        return table
    target = table.removeprefix("silver/")
    found = [n for n, p in settings.pipelines.items() if p.target == target]
    if not found:
        known = ", ".join(sorted(settings.pipelines))
        raise ConfigError(f"no pipeline or silver table {table!r} (pipelines: {known})")
    return found[0]


def _cmd_gold(args: argparse.Namespace) -> int:
    from cdc.gold import build_gold, parse_day

    as_of = None if args.as_of is None else parse_day(args.as_of, "--as-of")
    settings = _settings(args)
    from cdc.gold import GOLD_TABLES, gold_path
    from cdc.lineage.datasets import count_rows, gold_tables

    names = [n for n in dict.fromkeys(args.tables or GOLD_TABLES) if n in GOLD_TABLES]
    with _companion(settings, "gold.build", *gold_tables(settings, names)) as run:
        results = build_gold(settings, args.tables, full=args.full, as_of=as_of)
        run.count(count_rows((gold_path(settings, r.table), r.upserted) for r in results))
        for result in results:
            print(result.line())
    return 0


def _cmd_governance(args: argparse.Namespace) -> int:
    from cdc.governance import run

    if args.governance_command == "docs":
        from cdc.governance.runbook import write_runbook

        written = write_runbook(args.output, args.config_dir, args.overrides)
        print(f"wrote {written}")
        return 0
    settings = _settings(args)
    access = run.load_access(settings, args.config_dir)
    drifted = False
    for name in run.target_names(access.policy, args.target):
        with run.open_target(name, access, settings) as target:
            if args.governance_command == "plan":
                outcome = target.plan()
            elif args.governance_command == "apply":
                outcome = target.apply()
            else:
                outcome = target.check()
                drifted = drifted or bool(outcome.changes)
        lines = outcome.lines()
        if args.governance_command == "apply" and outcome.changes:
            lines[0] = f"{name}: applied {len(outcome.changes)} change(s)"
        elif args.governance_command == "check" and outcome.changes:
            lines[0] = f"{name}: DRIFT: {len(outcome.changes)} difference(s) from the policy"
        print("\n".join(lines), flush=True)
    return 1 if drifted else 0


_COMMANDS = {
    "demo": _cmd_demo,
    "run": _cmd_run,
    "produce": _cmd_produce,
    "broker": _cmd_broker,
    "status": _cmd_status,
    "replay": _cmd_replay,
    "verify": _cmd_verify,
    "snapshot": _cmd_snapshot,
    "gold": _cmd_gold,
    "publish": _cmd_publish,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cdc`` console script; returns the exit code."""
    try:
        args = _build_parser().parse_args(argv)
        configure_logging(
            verbose=getattr(args, "verbose", False),
            json_lines=getattr(args, "log_format", "text") == "json",
        )
        if not getattr(args, "verbose", False):
            # py4j logs a foreachBatch failure with its traceback; cdc reports it in one line.
            logging.getLogger("py4j").setLevel(logging.CRITICAL)
        if args.command == "schemas":
            return _cmd_schemas_check(args)
        if args.command == "sla":
            return _cmd_sla_check(args)
        if args.command == "maintain":
            return _cmd_maintain(args)
        if args.command == "dr":
            return _cmd_dr(args)
        if args.command == "governance":
            return _cmd_governance(args)
        return _COMMANDS[args.command](args)
    except CdcError as exc:
        print(redact(f"cdc: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A bug: its traceback, for debugging, but cleaned like every other output (a
        # library's exception text may quote a secret setting's value).
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
