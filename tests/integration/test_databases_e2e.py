"""A whole database in one job (issue 25, item 3), on a real broker.

Four table topics of a ``shop`` connector (``shop.public.*``) and their subjects, registered as
Debezium registers them (no contract of their own), one topic excluded, one not a table's:

* ``cdc run --available-now`` with one ``databases`` stanza runs a query per table, keyed by
  each table's key schema: every table lands; a poison record lands in its own table's
  quarantine; a table whose expectation fails stops alone (the others land, the run exits 1
  naming it);
* while a run goes on, a table created meanwhile (topic and subjects) gets a query of its own
  and lands.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cdc.cli import main
from cdc.config.lake import table_paths
from cdc.ingest.contracts import TopicContract
from cdc.ingest.produce import produce_file
from cdc.ingest.registry import FileRegistry
from cdc.pipeline.databases import with_tables
from cdc.pipeline.queries import run_pipelines
from tests.support.debezium_types import KEY, VALUE, encode, envelope, vsd
from tests.support.local_settings import cli_args, make_settings
from tests.support.paths import REGISTRY_PATH
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STANZA = (
    r"databases.shop.include=shop\.public\..*",
    r"databases.shop.exclude=[shop\.public\.audit_.*]",
    "databases.shop.target=shop_{table}",
    "databases.shop.discover_every_seconds=0.5",
)


def register(root: Path, topic: str, first_id: int) -> None:
    index = json.loads((root / "index.json").read_text())
    for n, (side, schema) in enumerate((("key", KEY), ("value", VALUE))):
        subject = f"{topic}-{side}"
        (root / subject).mkdir()
        (root / subject / "v1.avsc").write_text(json.dumps(schema))
        index["subjects"][subject] = [{"version": 1, "id": first_id + n}]
    (root / "index.json").write_text(json.dumps(index))


def send(bootstrap: str, root: Path, tmp: Path, topic: str, rows: list[Any]) -> None:
    """``rows``: (id, notes) changes, or raw bytes (a poison record)."""
    registry = FileRegistry.load(root)
    lines = []
    for n, row in enumerate(rows, start=1):
        if isinstance(row, bytes):
            key = encode(registry, f"{topic}-key", {"id": 99})
            value = row
        else:
            ident, notes = row
            key = encode(registry, f"{topic}-key", {"id": ident})
            after = {"id": ident, "notes": notes, "amount": vsd("1.50")}
            value = encode(registry, f"{topic}-value", envelope(after, n * 10))
        lines.append(
            {
                "key_b64": base64.b64encode(key).decode(),
                "value_b64": base64.b64encode(value).decode(),
            }
        )
    path = tmp / f"{topic}-{time.monotonic_ns()}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    contract = TopicContract(topic, f"{topic}-key", f"{topic}-value", "envelope")
    assert produce_file(bootstrap, registry, {topic: contract}, topic, path).sent == len(rows)


@pytest.fixture()
def shop(fresh_kafka: str, tmp_path: Path) -> Path:
    root = tmp_path / "avro"
    shutil.copytree(REGISTRY_PATH, root)
    for n, table in enumerate(("alpha", "beta", "gamma", "audit_log")):
        register(root, f"shop.public.{table}", 700 + 2 * n)
    send(fresh_kafka, root, tmp_path, "shop.public.alpha", [(1, "a1"), (2, "a2")])
    send(fresh_kafka, root, tmp_path, "shop.public.beta", [(1, "b1"), b"not avro at all"])
    send(fresh_kafka, root, tmp_path, "shop.public.gamma", [(1, None)])
    send(fresh_kafka, root, tmp_path, "shop.public.audit_log", [(1, "x")])
    return root


def test_one_stanza_runs_every_table_and_a_failing_table_stops_alone(
    spark: Any, fresh_kafka: str, tmp_path: Path, shop: Path
) -> None:
    gamma_must_have_notes = (
        "databases.shop.tables.gamma.expectations=[{name: notes_set, not_null: notes,"
        " action: fail}]"
    )
    overrides = (*STANZA, f"registry.path={shop}", gamma_must_have_notes)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        args = ["run", "--available-now", "--database", "shop"]
        code = main([*args, *cli_args(fresh_kafka, tmp_path, *overrides)])
    assert code == 2
    assert "1 table(s) failed, the others ran: shop__gamma:" in err.getvalue()
    assert "notes_set" in err.getvalue()
    settings = make_settings(fresh_kafka, tmp_path, *overrides)
    settings = with_tables(settings)

    def table(name: str, role: str) -> Any:
        return read_table(table_paths(settings, settings.pipeline(name))[role])

    assert sorted(table("shop__alpha", "silver")["notes"].to_list()) == ["a1", "a2"]
    assert table("shop__beta", "silver")["notes"].to_list() == ["b1"]
    assert table("shop__beta", "quarantine")["error_code"].to_list() == ["not_framed"]
    assert "shop__audit_log" not in settings.pipelines
    assert not (tmp_path / "lake" / "silver" / "shop_gamma").exists()


def test_a_table_created_while_running_gets_its_own_query(
    spark: Any, fresh_kafka: str, tmp_path: Path, shop: Path
) -> None:
    settings = make_settings(fresh_kafka, tmp_path, *STANZA, f"registry.path={shop}")

    def discover(current: Any) -> Any:
        return with_tables(current)

    settings = discover(settings)
    names = sorted(n for n, p in settings.pipelines.items() if p.database)
    assert names == ["shop__alpha", "shop__beta", "shop__gamma"]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_pipelines(spark, settings, names, available_now=False, discover=discover)
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        register(shop, "shop.public.delta", 720)
        send(fresh_kafka, shop, tmp_path, "shop.public.delta", [(7, "d7")])
        silver = tmp_path / "lake" / "silver" / "shop_delta"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (silver / "_delta_log").exists():
            time.sleep(0.5)
        assert (silver / "_delta_log").exists(), errors
        assert "shop__delta" in {q.name for q in spark.streams.active}
    finally:
        for query in spark.streams.active:
            query.stop()
        runner.join(60)
    assert not errors
    assert read_table(str(silver))["notes"].to_list() == ["d7"]
