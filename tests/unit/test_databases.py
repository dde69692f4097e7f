"""A ``databases`` stanza expanded into one pipeline per table topic (cdc.pipeline.databases)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdc.errors import ConfigError
from cdc.ingest.registry import FileRegistry
from cdc.pipeline import queries
from cdc.pipeline.databases import expand, generated
from tests.support.debezium_types import KEY, VALUE
from tests.support.local_settings import local_settings

TOPICS = [
    "shop.public.orders",
    "shop.public.customers",
    "shop.public.audit_log",  # excluded
    "shop.public.fresh",  # no subjects yet: left for a later look
    "shop-signal",  # not a table topic
    "crm.contacts",  # the configuration's own pipeline
]


@pytest.fixture()
def registry(tmp_path: Path) -> FileRegistry:
    root = tmp_path / "avro"
    index: dict[str, dict[str, list[dict[str, int]]]] = {"subjects": {}}
    next_id = 500
    for topic in ("shop.public.orders", "shop.public.customers", "shop.public.audit_log"):
        for side, schema in (("key", KEY), ("value", VALUE)):
            subject = f"{topic}-{side}"
            (root / subject).mkdir(parents=True)
            (root / subject / "v1.avsc").write_text(json.dumps(schema))
            index["subjects"][subject] = [{"version": 1, "id": next_id}]
            next_id += 1
    (root / "index.json").write_text(json.dumps(index))
    return FileRegistry.load(root)


def settings(tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return local_settings(
        tmp_path,
        r"databases.shop.include=shop\.public\..*",
        r"databases.shop.exclude=[shop\.public\.audit_.*]",
        "databases.shop.target=shop_{table}",
        "databases.shop.pipeline.track_history_except=[notes]",
        *extra,
    )


def test_each_matching_table_topic_is_a_pipeline_keyed_by_its_key_schema(
    tmp_path: Path, registry: FileRegistry
) -> None:
    expanded = expand(
        settings(
            tmp_path,
            "databases.shop.tables.orders.kind=facts",
            "databases.shop.tables.orders.event_id=id",
        ),
        TOPICS,
        registry,
    )
    found = generated(expanded)
    assert sorted(found) == ["shop__customers", "shop__orders"]
    customers = found["shop__customers"]
    assert (customers.topic, customers.kind, customers.target, customers.keys) == (
        "shop.public.customers",
        "scd2",
        "shop_customers",
        ("id",),
    )
    assert customers.track_history_except == ("notes",) and customers.database == "shop"
    orders = found["shop__orders"]
    assert (orders.kind, orders.event_id, orders.target) == ("facts", "id", "shop_orders")
    assert expanded.pipeline("crm_contacts").database is None  # the configuration's own


def test_a_stanza_may_not_set_what_each_table_decides(
    tmp_path: Path, registry: FileRegistry
) -> None:
    with pytest.raises(ConfigError, match=r"database 'shop': pipeline sets keys"):
        expand(settings(tmp_path, "databases.shop.pipeline.keys=[x]"), TOPICS, registry)


def test_a_table_whose_pipeline_is_invalid_is_named(tmp_path: Path, registry: FileRegistry) -> None:
    bad = settings(tmp_path, "databases.shop.tables.orders.kind=facts")
    with pytest.raises(ConfigError, match=r"topic 'shop.public.orders': .*event_id"):
        expand(bad, TOPICS, registry)


class _StopsWhileWatched:
    """A streaming query that stops, failed, between two reads of ``isActive``: the moment a
    run's watch loop has looked at its error and before it asks whether all have stopped."""

    def __init__(self) -> None:
        self.reads = 0

    @property
    def isActive(self) -> bool:
        self.reads += 1
        return self.reads < 2

    def exception(self) -> Exception:
        return RuntimeError("ExpectationFailedError: notes_set failed on 1 row(s)")

    def stop(self) -> None:
        pass


def test_a_table_that_fails_as_the_run_ends_is_still_reported(
    tmp_path: Path, registry: FileRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    expanded = expand(settings(tmp_path), TOPICS, registry)
    monkeypatch.setattr(queries, "start_query", lambda *args: _StopsWhileWatched())
    expected = r"1 table\(s\) failed.*shop__orders: .*notes_set"
    with pytest.raises(queries.PipelineFailedError, match=expected):
        queries.run_pipelines(Any, expanded, ["shop__orders"], True, poll_seconds=0)
