"""A generated PostgreSQL history as Debezium writes it, against the independent oracle
(issue 25, item 6).

One table (``pg.things``, :mod:`tests.support.debezium_types`) over three runs on a real broker
(keys hashed onto three partitions): creates and updates whose ``text`` column is often the
TOAST placeholder (an update that left it unchanged), ``numeric`` values without a declared
scale at full precision (``VariableScaleDecimal``), an incremental snapshot whose rows (``op:
r``) arrive after streaming changes newer than them, a placeholder with no earlier version,
a column added mid-stream (a second registry version), a primary-key change (delete,
tombstone, create under the new key) and deletes. Silver must equal the oracle
(:mod:`tests.support.scd2_oracle`: plain Python from docs/scd2.md, which decides the
quarantine and the placeholders' values on its own), and the quarantine must hold exactly what
it rejected.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.config.lake import table_paths
from cdc.core.scd2 import UNAVAILABLE_VALUE as PH
from cdc.ingest.contracts import load_contracts
from cdc.ingest.produce import produce_file
from cdc.ingest.registry import FileRegistry
from cdc.pipeline.queries import run_pipelines
from tests.support.debezium_types import (
    CONTRACT,
    T0,
    VALUE,
    add_version,
    encode,
    envelope,
    vsd,
    with_label,
    write_registry,
)
from tests.support.local_settings import make_settings
from tests.support.paths import CONTRACTS_PATH, REGISTRY_PATH
from tests.support.scd2_oracle import Record, scd2_oracle, unavailable_rejects
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLUMNS = ("notes", "amount", "ratio", "label")
PARTITIONS = 3


class History:
    """The records of one run after another, with their Kafka coordinates and the oracle's
    view of each (partition = key mod 3, offsets in produce order on a fresh topic)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lsn = 100
        self.offsets = [0] * PARTITIONS
        self.runs: list[list[tuple[dict[str, Any], Record]]] = []
        self.state: dict[int, dict[str, Any]] = {}  # the source table, as the database has it

    def next_lsn(self) -> int:
        self.lsn += self.rng.randint(1, 5)
        return self.lsn

    def values(self, labelled: bool) -> dict[str, Any]:
        r = self.rng
        digits = r.randint(1, 10)
        return {
            "notes": f"note {r.randint(0, 3)}",
            "amount": f"{r.randint(-999, 999)}.{r.randint(0, 99):02d}",
            "ratio": f"{r.randint(0, 10**8)}.{r.randint(0, 10**digits - 1):0{digits}d}",
            **({"label": r.choice(["a", "b", None])} if labelled else {}),
        }

    def record(
        self, run: list[Any], key: int, op: str | None, values: dict[str, Any] | None, lsn: int
    ) -> None:
        partition = key % PARTITIONS
        offset = self.offsets[partition]
        self.offsets[partition] += 1
        landed: tuple[tuple[str, Any], ...] = ()
        if values is not None and op in ("c", "u", "r"):
            landed = tuple((c, _landed(c, values.get(c))) for c in COLUMNS)
        oracle = Record(str(key), op, landed, (lsn,), T0 + lsn, partition, offset)
        line = {"key": key, "op": op, "values": values, "lsn": lsn, "partition": partition}
        run.append((line, oracle))


def _landed(column: str, value: Any) -> Any:
    """What silver holds for a value the source sent (the placeholder kept for the oracle)."""
    if value is None or value == PH:
        return value
    if column == "amount":
        return Decimal(value).quantize(Decimal("0.01"))
    if column == "ratio":
        return Decimal(value).quantize(Decimal("1E-10"))
    return value


def generate(seed: int) -> History:
    h = History(seed)
    # Run 1: creates, updates (TOASTed notes when unchanged), a snapshot read late.
    run: list[Any] = []
    for key in range(1, 7):
        values = h.values(False)
        h.state[key] = values
        h.record(run, key, "c", values, h.next_lsn())
    snapshot_lsn = h.next_lsn()  # the incremental snapshot reads keys 1-4 and 7-8 here
    read = {k: dict(h.state.get(k) or h.values(False)) for k in (1, 2, 3, 4, 7, 8)}
    for _ in range(8):
        key = h.rng.randint(1, 6)
        new, sent = h.values(False), {}
        if h.rng.random() < 0.6:  # notes unchanged: TOASTed, so Debezium sends the placeholder
            new["notes"] = h.state[key]["notes"]
            sent["notes"] = PH
        h.state[key] = new
        h.record(run, key, "u", {**new, **sent}, h.next_lsn())
    for key, values in read.items():  # the snapshot's rows arrive after newer changes
        h.state.setdefault(key, values)
        h.record(run, key, "r", values, snapshot_lsn)
    h.record(run, 9, "u", {**h.values(False), "notes": PH}, h.next_lsn())  # no prior: rejected
    h.runs.append(run)
    # Run 2: a column added (registry v2), TOAST, a primary-key change 3 -> 30.
    run = []
    for key in (1, 2, 4, 5, 7):
        new = {**h.values(True), "notes": PH if h.rng.random() < 0.6 else h.values(True)["notes"]}
        h.record(run, key, "u", new, h.next_lsn())
    lsn = h.next_lsn()
    h.record(run, 3, "d", None, lsn)
    h.record(run, 3, None, None, lsn)  # the tombstone after the delete
    h.record(run, 30, "c", {**h.values(True)}, h.next_lsn())
    h.runs.append(run)
    # Run 3: more changes, a delete, a placeholder right after a re-insert's create.
    run = []
    for _ in range(6):
        key = h.rng.choice([1, 2, 4, 5, 6, 7, 8, 30])
        h.record(run, key, "u", {**h.values(True), "notes": PH}, h.next_lsn())
    h.record(run, 6, "d", None, h.next_lsn())
    h.record(run, 6, "c", h.values(True), h.next_lsn())
    h.record(run, 6, "u", {**h.values(True), "notes": PH}, h.next_lsn())
    h.runs.append(run)
    return h


def lines(registry: FileRegistry, run: list[Any]) -> list[dict[str, Any]]:
    out = []
    for line, _ in run:
        key = encode(registry, "pg.things-key", {"id": line["key"]})
        doc: dict[str, Any] = {
            "key_b64": base64.b64encode(key).decode(),
            "partition": line["partition"],
        }
        if line["op"] is None:
            doc["value"] = None
        else:
            values = line["values"]
            row = None
            if values is not None:
                row = {"id": line["key"], **{c: values.get(c) for c in ("notes", "label")}}
                row |= {c: vsd(values[c]) for c in ("amount", "ratio")}
                if "label" not in values:
                    row.pop("label")
            before = {"id": line["key"]} if line["op"] == "d" else None
            value = encode(
                registry, "pg.things-value", envelope(row, line["lsn"], line["op"], before)
            )
            doc["value_b64"] = base64.b64encode(value).decode()
        out.append(doc)
    return out


@pytest.mark.parametrize("writer", WRITERS)
def test_a_generated_debezium_history_equals_the_oracle(
    spark: Any, fresh_kafka: str, tmp_path: Path, writer: str
) -> None:
    history = generate(seed=2512)
    root = tmp_path / "avro"
    shutil.copytree(REGISTRY_PATH, root)
    write_registry(root, key_id=911, value_id=912)
    contracts_path = tmp_path / "contracts.yaml"
    contracts = yaml.safe_load(CONTRACTS_PATH.read_text()) | CONTRACT
    contracts["pg.things"]["decimals"] = {"amount": [10, 2], "default": [38, 10]}
    contracts_path.write_text(yaml.safe_dump(contracts))
    settings = make_settings(
        fresh_kafka,
        tmp_path,
        f"lake.writer={writer}",
        f"registry.path={root}",
        f"registry.contracts={contracts_path}",
        "pipelines.pg_things.topic=pg.things",
        "pipelines.pg_things.kind=scd2",
        "pipelines.pg_things.target=dim_things",
        "pipelines.pg_things.keys=[id]",
    )
    for n, run in enumerate(history.runs):
        if n == 1:  # the source table gains a column: its schema's next version
            add_version(root, "pg.things-value", with_label(VALUE), 913)
        registry = FileRegistry.load(root)
        path = tmp_path / f"run-{n}.jsonl"
        path.write_text("".join(json.dumps(doc) + "\n" for doc in lines(registry, run)))
        report = produce_file(
            fresh_kafka,
            registry,
            load_contracts(contracts_path),
            "pg.things",
            path,
            partitions_if_create=PARTITIONS,
        )
        assert report.sent == len(run)
        run_pipelines(spark, settings, ["pg_things"], available_now=True)

    batches = [[record for _, record in run] for run in history.runs]
    rejected = unavailable_rejects(batches, (PH,))
    paths = table_paths(settings, settings.pipeline("pg_things"))
    quarantine = read_table(paths["quarantine"])
    got_rejected = set(quarantine.select("partition", "offset").iter_rows())
    assert got_rejected == set().union(*rejected)
    assert set(quarantine["error_code"]) == {"unavailable_without_prior"}
    accepted = [
        r
        for batch, out in zip(batches, rejected, strict=True)
        for r in batch
        if (r.partition, r.offset) not in out
    ]
    want = sorted(
        [
            (
                int(v.key),
                *(v.values[c] for c in COLUMNS),
                v.valid_from - T0,
                None if v.valid_to is None else v.valid_to - T0,
                v.is_current,
            )
            for v in scd2_oracle(accepted, set(COLUMNS), (PH,))
        ],
        key=repr,
    )
    silver = read_table(paths["silver"])
    got = sorted(
        [
            (
                r["id"],
                *(r[c] for c in COLUMNS),
                int(r["valid_from"].timestamp() * 1000) - T0,
                None if r["valid_to"] is None else int(r["valid_to"].timestamp() * 1000) - T0,
                r["is_current"],
            )
            for r in silver.iter_rows(named=True)
        ],
        key=repr,
    )
    assert got == want
    assert PH not in silver["notes"].to_list()
    assert len(want) > 20 and any(v[-1] for v in want) and rejected[0]
