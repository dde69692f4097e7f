"""``cdc demo``: the whole data path on the embedded default, end to end, in one command.

Starts an embedded broker, produces a generated CRM + events data set (with updates,
deletes, tombstones, duplicates and a few invalid records) through the same path as
``cdc produce``, drains every pipeline with ``--available-now`` semantics and prints a
summary read back from the Delta tables. Then it builds the gold tables, publishes them to the
embedded warehouse (a DuckDB file beside the lake) and prints the answer of one example query
run there: the top five accounts by revenue over the last 90 days.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

import polars as pl

from cdc.config.lake import table_paths
from cdc.config.settings import Settings, load_settings
from cdc.gold import build_gold
from cdc.ingest.contracts import load_contracts
from cdc.ingest.produce import produce_file
from cdc.ingest.registry import FileRegistry
from cdc.pipeline.queries import run_pipelines
from cdc.runtime.broker import EmbeddedBroker
from cdc.runtime.spark import build_session
from cdc.store import DeltaRsStore
from cdc.warehouse import open_warehouse
from cdc.warehouse.publish import publish
from cdc_demo.data import generate, write_jsonl

# duckdb is imported for the example query only, after the demo's pipelines ran.

__all__ = ["DEMO_QUERY", "publish_gold", "run_demo", "summarize"]

DEMO_QUERY = """\
SELECT name, region, revenue_90d, reporting_currency
FROM {schema}.customer_360
ORDER BY revenue_90d DESC NULLS LAST, account_id
LIMIT 5"""
"""The example query the demo answers from the warehouse (``{schema}``: ``warehouse.schema``)."""


def _read(uri: str) -> pl.DataFrame | None:
    table = DeltaRsStore().read(uri)  # a query: deletion vectors are honoured
    if table is None:
        return None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def summarize(settings: Settings, out: TextIO) -> dict[str, int]:
    """Print rows per table, quarantine reasons and one contact's SCD2 history.

    Returns:
        Row counts keyed ``<layer>/<table>`` (and ``quarantine`` for the total).
    """
    counts: dict[str, int] = {}
    quarantined: list[pl.DataFrame] = []
    for name, pipeline in settings.pipelines.items():
        for role, uri in table_paths(settings, pipeline).items():
            df = _read(uri)
            rows = 0 if df is None else df.height
            counts[f"{role}/{Path(uri).name}"] = rows
            if role == "quarantine" and df is not None:
                quarantined.append(df.select("topic", "partition", "offset", "error_code", "error"))
        del name
    print("\nRows per table", file=out)
    for table, rows in sorted(counts.items()):
        print(f"  {table:<34} {rows:>7}", file=out)
    total_q = sum(q.height for q in quarantined)
    counts["quarantine"] = total_q
    print(f"\nQuarantined: {total_q} records", file=out)
    if quarantined:
        reasons = (
            pl.concat(quarantined).group_by("topic", "error_code").len().sort("topic", "error_code")
        )
        for row in reasons.iter_rows(named=True):
            print(f"  {row['topic']:<18} {row['error_code']:<18} {row['len']}", file=out)
        example = pl.concat(quarantined).sort("topic", "offset").row(0, named=True)
        print(
            f"  e.g. {example['topic']}[{example['partition']}]@{example['offset']}: "
            f"{example['error']}",
            file=out,
        )
    contacts = _read(table_paths(settings, settings.pipeline("crm_contacts"))["silver"])
    if contacts is not None and contacts.height:
        busiest = (
            contacts.group_by("contact_id")
            .len()
            .sort(["len", "contact_id"], descending=[True, False])
        ).row(0)[0]
        history = contacts.filter(pl.col("contact_id") == busiest).sort("_seq_open")
        print(f"\nSCD2 history of contact {busiest}", file=out)
        when = "%Y-%m-%d %H:%M:%S"
        with pl.Config(
            tbl_rows=20,
            tbl_cols=8,
            fmt_str_lengths=40,
            tbl_width_chars=160,
            tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True,
        ):
            print(
                history.select(
                    "account_id",
                    "email",
                    "last_name",
                    "phone",
                    pl.col("valid_from").dt.strftime(when),
                    pl.col("valid_to").dt.strftime(when),
                    "is_current",
                ),
                file=out,
            )
    return counts


def publish_gold(settings: Settings, out: TextIO) -> dict[str, int]:
    """Build the gold tables, publish them to the DuckDB warehouse, answer :data:`DEMO_QUERY`.

    Returns:
        Rows per gold table (``gold/<table>``) and per published warehouse table
        (``warehouse/<table>``, counted there).
    """
    import duckdb

    counts: dict[str, int] = {}
    print("\nGold tables", file=out)
    for built in build_gold(settings):
        print(f"  {built.line()}", file=out)
        counts[f"gold/{built.table}"] = built.rows
    warehouse = open_warehouse(settings)
    print(f"\nPublished to {warehouse.describe()}", file=out)
    published = publish(settings, on_result=lambda r: print(f"  {r.line()}", file=out))
    schema = settings.warehouse.schema
    path = settings.warehouse.duckdb_path(settings.lake)
    with duckdb.connect(path, read_only=True) as con:
        for result in published:
            row = con.execute(f'SELECT count(*) FROM "{schema}"."{result.table}"').fetchone()
            counts[f"warehouse/{result.table}"] = int(row[0]) if row else 0
        cursor = con.execute(DEMO_QUERY.format(schema=schema))
        names = [d[0] for d in cursor.description or ()]
        answer = pl.DataFrame(cursor.fetchall(), schema=names, orient="row")
    print("\nTop 5 accounts by revenue over the last 90 days (from the warehouse):", file=out)
    print("  " + DEMO_QUERY.format(schema=schema).replace("\n", "\n  "), file=out)
    with pl.Config(
        tbl_rows=10,
        fmt_str_lengths=40,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
    ):
        print(answer, file=out)
    return counts


def run_demo(
    workdir: Path, seed: int = 7, overrides: list[str] | None = None, out: TextIO = sys.stdout
) -> dict[str, int]:
    """Run the demo in ``workdir`` (wiped first) and print the summary.

    Returns:
        The row counts printed in the summary.
    """
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    with EmbeddedBroker.start_on_free_port(workdir=workdir / "kafka") as broker:
        print(f"embedded broker at {broker.bootstrap}", file=out)
        settings = load_settings(
            "local",
            overrides=[
                f"kafka.bootstrap_servers={broker.bootstrap}",
                f"lake.root={workdir / 'lake'}",
                f"checkpoints.root={workdir / 'checkpoints'}",
                *(overrides or []),
            ],
        )
        registry = FileRegistry.load(settings.registry.path)
        contracts = load_contracts(settings.registry.contracts)
        dataset = generate(seed=seed)
        files = write_jsonl(dataset, workdir / "input")
        for topic, path in sorted(files.items()):
            report = produce_file(broker.bootstrap, registry, contracts, topic, path)
            print(f"produced {report.sent:>5} records to {topic} ({path.name})", file=out)
        spark = build_session(
            app_name="cdc-demo", master=settings.spark.master, conf=settings.spark.conf
        )
        names = list(settings.pipelines)
        print(f"running {len(names)} pipelines until drained ...", file=out)
        run_pipelines(spark, settings, names, available_now=True)
        counts = summarize(settings, out)
    counts |= publish_gold(settings, out)
    print(
        f"\ndone in {time.monotonic() - started:.0f}s; tables under {workdir / 'lake'}, warehouse"
        f" {settings.warehouse.duckdb_path(settings.lake)}",
        file=out,
    )
    (workdir / "summary.json").write_text(json.dumps(counts, indent=2, sort_keys=True))
    return counts
