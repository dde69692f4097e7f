"""What a new schema version changes in a table's columns (cdc.ingest.schema_changes)."""

from __future__ import annotations

import pyarrow as pa

from cdc.core.widening import widened_schema
from cdc.ingest.schema_changes import SchemaChange, column_changes, describe, key_changes

HELD = pa.schema(
    [
        ("contact_id", pa.string()),
        ("email", pa.large_string()),  # another reader's layout of the same Delta type
        ("phone", pa.string()),
        ("score", pa.int32()),
        ("amount", pa.decimal128(10, 2)),
        ("ratio", pa.float32()),
        ("valid_from", pa.timestamp("us", "UTC")),
    ]
)


def reader(*fields: tuple[str, pa.DataType]) -> pa.StructType:
    return pa.struct(list(fields))


def test_the_same_columns_are_no_change() -> None:
    row = reader(*((f.name, f.type) for f in HELD if f.name != "valid_from"))
    assert column_changes(HELD, row, ignore=["valid_from"]) == []


def test_additions_and_widenings_are_not_breaking() -> None:
    row = reader(
        ("contact_id", pa.string()),
        ("email", pa.string()),
        ("phone", pa.string()),
        ("score", pa.int64()),
        ("amount", pa.decimal128(12, 3)),
        ("ratio", pa.float64()),
        ("tier", pa.string()),
    )
    changes = column_changes(HELD, row, ignore=["valid_from"])
    assert changes == [
        SchemaChange("widened", "score", "int → long"),
        SchemaChange("widened", "amount", "decimal128(10, 2) → decimal128(12, 3)"),
        SchemaChange("widened", "ratio", "float → double"),
        SchemaChange("added", "tier", "string"),
    ]
    assert not any(c.breaking for c in changes)


def test_drops_renames_narrowing_and_retyping_are_breaking() -> None:
    row = reader(
        ("contact_id", pa.string()),
        ("mail", pa.string()),  # alias: was email
        ("score", pa.int16()),
        ("amount", pa.decimal128(12, 1)),  # fewer places: narrowed
        ("ratio", pa.string()),
    )
    changes = column_changes(HELD, row, aliases={"mail": ("email",)}, ignore=["valid_from"])
    assert [(c.kind, c.column) for c in changes] == [
        ("renamed", "mail"),
        ("narrowed", "score"),
        ("narrowed", "amount"),
        ("retyped", "ratio"),
        ("dropped", "phone"),
    ]
    assert all(c.breaking for c in changes)
    assert describe(changes[:2]) == "renames 'mail' (was 'email'), narrows 'score' (int → smallint)"


def test_a_key_the_configuration_names_must_be_the_whole_key() -> None:
    assert key_changes(["id"], pa.struct([("id", pa.int32())])) == []
    [gone] = key_changes(["id"], pa.struct([("tenant", pa.string()), ("code", pa.string())]))
    assert gone.text() == "changes the key 'id' (no longer has id; now also has tenant, code)"
    [wider] = key_changes(["id"], pa.struct([("id", pa.int32()), ("region", pa.string())]))
    assert wider.breaking and "now also has region" in wider.detail


def test_the_widened_schema_of_a_table() -> None:
    held = pa.schema(
        [
            ("key", pa.struct([("id", pa.int32())])),
            (
                "value",
                pa.struct([("after", pa.struct([("score", pa.int32()), ("t", pa.string())]))]),
            ),
            ("tags", pa.list_(pa.float32())),
            ("ratio", pa.float64()),
        ]
    )
    incoming = pa.schema(
        [
            ("key", pa.struct([("id", pa.int64())])),
            (
                "value",
                pa.struct(
                    [("after", pa.struct([("score", pa.int64()), ("t", pa.large_string())]))]
                ),
            ),
            ("tags", pa.list_(pa.float64())),
            ("ratio", pa.float32()),  # narrower: kept (a breaking change, decided elsewhere)
            ("new", pa.int8()),  # not held: an addition, not a widening
        ]
    )
    wider = widened_schema(held, incoming)
    assert wider is not None
    assert wider.field("key").type == pa.struct([("id", pa.int64())])
    assert wider.field("value").type.field("after").type.field("score").type == pa.int64()
    assert wider.field("tags").type.value_type == pa.float64()
    assert wider.field("value").type.field("after").type.field("t").type == pa.string()
    assert wider.field("ratio").type == pa.float64()
    assert wider.names == held.names
    assert widened_schema(held, held) is None
