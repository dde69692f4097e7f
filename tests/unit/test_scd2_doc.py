"""Every worked example of docs/scd2.md, run through the service's own SCD2 path.

Each ```` ```yaml scd2-example ```` block names its input records, batch by batch, and the
table they must give. Records become Avro-shaped bronze rows (Debezium envelopes with the
registry's full ``source`` block), go through :func:`cdc.ingest.changes.scd2_changes` and
:func:`cdc.core.scd2.apply_scd2` one batch at a time with bronze as history and the orphan state,
as the writers do, and the resulting table must be the one the document states.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute
import pytest
import yaml

from cdc.core.scd2 import (
    UNAVAILABLE_VALUE,
    Scd2Spec,
    apply_scd2,
    empty_dimension,
    empty_orphans,
    unresolvable_unavailable,
)
from cdc.ingest.changes import scd2_changes
from tests.support.envelopes import SOURCE_TYPE
from tests.support.paths import REPO_ROOT

DOC = REPO_ROOT / "docs" / "scd2.md"
SPEC = Scd2Spec.build(
    ["id"],
    ["id", "email", "phone"],
    track_history_except=["phone"],
    unavailable=[UNAVAILABLE_VALUE],
)
SCHEMA: dict[str, pl.DataType] = {"id": pl.String(), "email": pl.String(), "phone": pl.String()}
IDENTITY = ["id", "_seq_open"]
T0 = 1_767_600_000_000  # 08:00:00 on the examples' clock

_ROW = pa.struct([("id", pa.string()), ("email", pa.string()), ("phone", pa.string())])
_VALUE = pa.struct(
    [("before", _ROW), ("after", _ROW), ("op", pa.string()), ("source", SOURCE_TYPE)]
)
_BRONZE = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", "UTC")),
        ("key", pa.struct([("id", pa.string())])),
        ("value", _VALUE),
    ]
)


def examples() -> list[dict[str, Any]]:
    text = DOC.read_text()
    blocks = re.findall(r"^```yaml scd2-example\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    return [yaml.safe_load(b) for b in blocks]


def test_the_document_has_an_example_per_rule() -> None:
    names = [e["name"] for e in examples()]
    assert len(names) >= 12 and len(set(names)) == len(names)


def bronze(records: list[dict[str, Any]], offsets: list[int]) -> pa.Table:
    rows = []
    for r, offset in zip(records, offsets, strict=True):
        value = None
        if not r.get("tombstone"):
            source: dict[str, Any] = {f.name: r.get(f.name) for f in SOURCE_TYPE}
            source["connector"] = r.get("connector", "postgresql")
            source["ts_ms"] = T0 + r["ts"]
            image = {"id": r["id"], "email": r.get("email"), "phone": r.get("phone")}
            value = {
                "before": {"id": r["id"], "email": None, "phone": None} if r["op"] == "d" else None,
                "after": None if r["op"] == "d" else image,
                "op": r["op"],
                "source": source,
            }
        kafka_ms = T0 + r.get("kafka_ts", r.get("ts", 0))
        rows.append(
            {
                "topic": "doc",
                "partition": 0,
                "offset": offset,
                "timestamp": datetime.fromtimestamp(kafka_ms / 1000, UTC),
                "key": {"id": r["id"]},
                "value": value,
            }
        )
    return pa.Table.from_pylist(rows, _BRONZE)


def run(batches: list[list[dict[str, Any]]]) -> tuple[pl.DataFrame, list[int]]:
    """The table the batches give, and the offsets quarantined on the way."""
    table = empty_dimension(SPEC, SCHEMA)
    seen = empty_orphans(SPEC, SCHEMA)
    received: list[pa.Table] = []
    quarantined: list[int] = []
    next_offset = 0
    for batch in batches:
        offsets = []
        for r in batch:  # an explicit offset re-delivers that record
            offsets.append(r.get("offset", next_offset))
            next_offset += "offset" not in r
        rows = bronze(batch, offsets)
        # As the writers do before anything lands: a placeholder nothing can stand for.
        rejected = unresolvable_unavailable(
            scd2_changes(rows, SPEC, "envelope", None), table.select("id"), SPEC
        )
        bad = rejected.get_column("_source_offset").to_list()
        quarantined += bad
        rows = rows.filter(
            pa.compute.invert(pa.compute.is_in(rows["offset"], pa.array(bad, pa.int64())))
        )
        received.append(rows)
        changes = scd2_changes(rows, SPEC, "envelope", None)
        history = scd2_changes(pa.concat_tables(received), SPEC, "envelope", None)
        result = apply_scd2(table, changes, SPEC, history=history, seen=seen)
        table = table.join(result.deletes, on=IDENTITY, how="anti")
        table = table.join(result.upserts.select(IDENTITY), on=IDENTITY, how="anti")
        table = pl.concat([table, result.upserts], how="vertical_relaxed")
        assert result.orphans is not None
        seen = pl.concat([seen, result.orphans], how="vertical_relaxed")
    return table.sort(IDENTITY), quarantined


@pytest.mark.parametrize("example", examples(), ids=lambda e: e["name"])
def test_worked_example(example: dict[str, Any]) -> None:
    table, quarantined = run(example["batches"])
    assert quarantined == example.get("quarantined", [])
    got = []
    for row in table.iter_rows(named=True):
        got.append(
            {
                "id": row["id"],
                "email": row["email"],
                "phone": row["phone"],
                "from": int(row["valid_from"].timestamp() * 1000) - T0,
                "to": None
                if row["valid_to"] is None
                else int(row["valid_to"].timestamp() * 1000) - T0,
                "current": row["is_current"],
                "offset": row["_source_offset"],
            }
        )
    want = example["expect"]
    # Compare the columns each expected row names; is_current always follows `to`.
    assert [{k: g[k] for k in w} for g, w in zip(got, want, strict=False)] == want
    assert len(got) == len(want)
    assert [g["current"] for g in got] == [w["to"] is None for w in want]
