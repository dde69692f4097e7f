"""Debezium's semantic types through a real broker into silver, on both writers (issue 25).

A ``pg.things`` table as Debezium registers it (``numeric`` without a scale, ``date``,
timestamps at three precisions, ``timestamptz``, times of day) is onboarded next to the
project's own topics: a registry and contracts of the test's own, a pipeline stanza given as
overrides. Silver holds each value exactly, in its Delta type; a value that does not fit goes to
quarantine with its reason.
"""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.config.lake import table_paths
from cdc.ingest.contracts import load_contracts
from cdc.ingest.produce import produce_file
from cdc.ingest.registry import FileRegistry
from cdc.pipeline.queries import run_pipelines
from tests.support.debezium_types import CONTRACT, T0, encode, envelope, row, vsd, write_registry
from tests.support.local_settings import make_settings
from tests.support.paths import CONTRACTS_PATH, REGISTRY_PATH
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("writer", WRITERS)
def test_debezium_types_land_exactly_on_both_writers(
    spark: Any, fresh_kafka: str, tmp_path: Path, writer: str
) -> None:
    registry_root = tmp_path / "avro"
    shutil.copytree(REGISTRY_PATH, registry_root)
    write_registry(registry_root, key_id=901, value_id=902)
    contracts_path = tmp_path / "contracts.yaml"
    contracts = yaml.safe_load(CONTRACTS_PATH.read_text()) | CONTRACT
    contracts_path.write_text(yaml.safe_dump(contracts))
    registry = FileRegistry.load(registry_root)

    changes = [
        row(
            1,
            amount=vsd("12.5"),
            ratio=vsd("123.4500000000"),
            born=20_458,
            at_us=(T0 * 1000) + 123_456,
            at_ns=(T0 * 1_000_000) + 123_456_789,
            zoned="2026-01-05T09:00:00.123456789+01:00",
            t_us=3_723_004_005,
        ),
        row(2, amount=vsd("1.234")),  # three places into decimal(10, 2): quarantined
        row(1, amount=vsd("-99999999.99"), born=20_459),  # a tracked change of key 1
    ]
    lines = []
    for n, after in enumerate(changes, start=1):
        key = encode(registry, "pg.things-key", {"id": after["id"]})
        value = encode(
            registry, "pg.things-value", envelope(after, n * 1000, "c" if n < 3 else "u")
        )
        lines.append(
            {
                "key_b64": base64.b64encode(key).decode(),
                "value_b64": base64.b64encode(value).decode(),
                "partition": 0,
            }
        )
    source = tmp_path / "things.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = produce_file(
        fresh_kafka, registry, load_contracts(contracts_path), "pg.things", source
    )
    assert report.sent == 3

    settings = make_settings(
        fresh_kafka,
        tmp_path,
        f"lake.writer={writer}",
        f"registry.path={registry_root}",
        f"registry.contracts={contracts_path}",
        "pipelines.pg_things.topic=pg.things",
        "pipelines.pg_things.kind=scd2",
        "pipelines.pg_things.target=dim_things",
        "pipelines.pg_things.keys=[id]",
    )
    run_pipelines(spark, settings, ["pg_things"], available_now=True)

    paths = table_paths(settings, settings.pipeline("pg_things"))
    quarantine = read_table(paths["quarantine"])
    assert quarantine["error_code"].to_list() == ["value_out_of_range"]
    assert quarantine["error"].to_list() == ["after.amount: 1.234 has more than 2 decimal places"]
    silver = read_table(paths["silver"]).sort("_seq_open")
    assert silver.height == 2
    first, second = silver.to_dicts()
    at = datetime(2026, 1, 5, 8, 0, 0)
    assert first["amount"] == Decimal("12.50") and second["amount"] == Decimal("-99999999.99")
    assert first["ratio"] == Decimal("123.4500000000")
    assert (first["born"], second["born"]) == (date(2026, 1, 5), date(2026, 1, 6))
    assert first["at_us"] == at.replace(microsecond=123_456)
    assert first["at_ns"] == at.replace(microsecond=123_456)
    assert first["zoned"] == datetime(2026, 1, 5, 8, 0, 0, 123_456, tzinfo=UTC)
    assert first["t_us"] == 3_723_004_005
    assert (first["is_current"], second["is_current"]) == (False, True)
    schema = dict(silver.schema)
    assert str(schema["amount"]) == "Decimal(precision=10, scale=2)"
    assert str(schema["at_us"]) == "Datetime(time_unit='us', time_zone=None)"
    assert str(schema["zoned"]) == "Datetime(time_unit='us', time_zone='UTC')"
