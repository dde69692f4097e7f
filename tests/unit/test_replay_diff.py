"""``cdc replay --diff``'s comparison of a table before and after, on small frames."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl

from cdc.ops.replay_diff import diff_table, format_diff


def t(second: int) -> datetime:
    return datetime(2026, 1, 5, 8, 0, second, tzinfo=UTC)


def dim(*rows: tuple[str, str, int, int | None, str]) -> pl.DataFrame:
    """Rows ``(key, _seq_open, valid_from s, valid_to s, email)``."""
    return pl.DataFrame(
        [
            {
                "contact_id": k,
                "email": email,
                "valid_from": t(vf),
                "valid_to": None if vt is None else t(vt),
                "is_current": vt is None,
                "_seq_open": seq,
                "_seq_close": None,
                "_source_offset": 0,
            }
            for k, seq, vf, vt, email in rows
        ],
        schema_overrides={"valid_to": pl.Datetime("us", "UTC")},
    )


def test_each_kind_of_change_is_counted_with_an_example() -> None:
    before = dim(
        ("a", "s1", 1, None, "a@x"),  # will be closed
        ("b", "s1", 1, 5, "b@x"),  # will be rewritten (its end moves)
        ("b", "s5", 5, None, "b2@x"),  # unchanged
        ("c", "s1", 1, None, "c@x"),  # will be removed (merged away)
    )
    after = dim(
        ("a", "s1", 1, 4, "a@x"),
        ("a", "s4", 4, None, "a2@x"),  # added
        ("b", "s1", 1, 3, "b@x"),
        ("b", "s3", 3, 5, "b1@x"),  # added
        ("b", "s5", 5, None, "b2@x"),
        ("d", "s9", 9, None, "d@x"),  # added, a new key
    )
    d = diff_table("silver", before, after, ["contact_id"], "scd2", "dim_contact")
    assert (d.keys_added, d.added, d.closed, d.rewritten, d.removed, d.unchanged) == (
        1,
        3,
        1,
        1,
        1,
        1,
    )
    assert d.keys_touched == 4
    text = "\n".join(d.examples)
    assert "closed    contact_id=a version from 2026-01-05T08:00:01Z: valid_to None ->" in text
    assert "rewritten contact_id=b version from 2026-01-05T08:00:01Z: valid_to" in text
    assert "removed   contact_id=c version from 2026-01-05T08:00:01Z" in text
    assert "added     contact_id=d version from 2026-01-05T08:00:09Z (current)" in text


def test_nothing_changed_says_so() -> None:
    rows = dim(("a", "s1", 1, None, "a@x"))
    diffs = [
        diff_table("silver", rows, rows, ["contact_id"], "scd2", "dim_contact"),
        diff_table("bronze", rows, rows, [], "log", "crm_contacts"),
    ]
    report = format_diff("crm_contacts", diffs, dry_run=False)
    assert report.endswith("no table changed")
    silver_row = report.split("\n")[2].split()
    assert silver_row == ["silver/dim_contact", "1", "1", "0", "0", "0", "0", "0", "1"]


def test_facts_diff_by_event_id() -> None:
    def facts(ids: list[str]) -> pl.DataFrame:
        rows: list[dict[str, Any]] = [{"event_id": i, "amount": 1} for i in ids]
        return pl.DataFrame(rows)

    d = diff_table(
        "silver", facts(["e1", "e2"]), facts(["e1", "e2", "e3"]), ["event_id"], "facts", "f"
    )
    assert (d.added, d.removed, d.unchanged) == (1, 0, 2)
    assert d.examples == ["added    event_id=e3"]
    first = diff_table("silver", None, facts(["e1"]), ["event_id"], "facts", "f")
    assert (first.rows_before, first.added) == (0, 1)
