"""SCD2 invariants (cdc.core.invariants) and ``cdc verify`` (cdc.ops.verify) on tables corrupted on
purpose.

A dimension built by ``scd2_from_events`` from any history is sound; each corruption below
breaks exactly one invariant on one key, in memory and in a real Delta table that
``cdc verify`` reads.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.cli import main
from cdc.core.invariants import SCD2_KINDS, check_facts, check_scd2, summarize
from cdc.ops.metrics import ServiceMetrics
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.batch_check import record_batch_check
from tests.support.endpoints import metric_samples
from tests.support.scd2_events import SPEC, Dimension, frame, to_log
from tests.support.scd2_one_pass import scd2_from_events

KEYS = ["contact_id"]
IDENTITY = ["contact_id", "_seq_open"]
ACCEPTED = (0, 1_893_456_000_000)
"""The accepted source times of the pure checks: 1970-01-01 to 2030-01-01 (epoch ms)."""
HOSTILE_MS = 372_036_854_775_807
"""+13759-05-19: the valid time a source.ts_ms of 2**63-1 became before it was quarantined."""


def generated_history(keys: int, seed: int) -> list[dict[str, Any]]:
    """Each key: an insert, then tracked and untracked updates, deletes and re-inserts."""
    rng = random.Random(seed)
    changes = []
    for k in range(keys):
        ts, alive = rng.randrange(50), False
        for _ in range(rng.randint(1, 8)):
            ts += rng.choice([0, 1, 3, 10])  # equal times happen
            if not alive or rng.random() < 0.8:
                email = rng.choice("ab") if alive else rng.choice("abc")
                changes.append(
                    {
                        "contact_id": f"k{k:03d}",
                        "kind": "U",
                        "ts": ts,
                        "email": email,
                        "phone": rng.choice(["1", "2", None]),
                    }
                )
                alive = True
            else:
                changes.append({"contact_id": f"k{k:03d}", "kind": "D", "ts": ts, "email": "a"})
                alive = False
    rng.shuffle(changes)  # the log's order is not the source's
    return changes


def sound_table(keys: int = 300, seed: int = 11) -> pl.DataFrame:
    table = scd2_from_events(frame(to_log(generated_history(keys, seed))), SPEC)
    assert check_scd2(table, KEYS).height == 0
    return table


def with_next(table: pl.DataFrame) -> pl.DataFrame:
    """Each version with the key's next version's opener and valid_from."""
    return table.sort(IDENTITY).with_columns(
        _next_open=pl.col("_seq_open").shift(-1).over(KEYS),
        _next_from=pl.col("valid_from").shift(-1).over(KEYS),
        _prev_close=pl.col("_seq_close").shift(1).over(KEYS),
    )


class Targets:
    """Versions of distinct keys that each corruption needs, found in a sound table."""

    def __init__(self, table: pl.DataFrame) -> None:
        rows = with_next(table)
        self.table = table
        self._used: set[str] = set()
        by_next = pl.col("_seq_close") == pl.col("_next_open")
        opens = table.select("_seq_open")
        self.rows = {
            "current": rows.filter(pl.col("is_current")),
            # closed by the next version, which opens at least 2 ms later
            "by_next": rows.filter(
                by_next & (pl.col("_next_from") - pl.col("valid_from") >= timedelta(milliseconds=2))
            ),
            # closed by a delete (its closer opens nothing), after the epoch's first ms
            "by_delete": rows.filter(
                pl.col("_seq_close").is_not_null() & (pl.col("valid_from").dt.epoch("ms") > 0)
            ).join(opens.rename({"_seq_open": "_seq_close"}), on="_seq_close", how="anti"),
            # closed by the next version and closing the previous one: its loss leaves a hole
            "middle": rows.filter(by_next & (pl.col("_prev_close") == pl.col("_seq_open"))),
            "closed": rows.filter(~pl.col("is_current")),
            # a key's only version
            "alone": rows.filter(pl.col("is_current") & (pl.len().over(KEYS) == 1)),
        }

    def take(self, what: str) -> dict[str, Any]:
        """A version of a key no other corruption took."""
        for row in self.rows[what].iter_rows(named=True):
            if row["contact_id"] not in self._used:
                self._used.add(row["contact_id"])
                return row
        raise AssertionError(f"the generated history has no {what} version left")


def _is(row: dict[str, Any]) -> pl.Expr:
    return (pl.col("contact_id") == row["contact_id"]) & (pl.col("_seq_open") == row["_seq_open"])


def corrupt(table: pl.DataFrame, kind: str, targets: Targets) -> tuple[pl.DataFrame, str, str]:
    """``table`` with one violation of ``kind``; the key and version it concerns."""
    if kind == "multiple_current":
        row = targets.take("current")
        copy = table.filter(_is(row)).with_columns(
            pl.col("_seq_open") + "~",  # sorts right after the original: opaque, not decoded
            pl.col("valid_from") + timedelta(seconds=1),
        )
        return pl.concat([table, copy]), row["contact_id"], ""
    if kind == "current_flag":
        row = targets.take("current")
        return _set(table, row, is_current=pl.lit(False)), row["contact_id"], row["_seq_open"]
    if kind == "inverted":
        row = targets.take("by_delete")
        # Still a time a sequence holds: only the interval is wrong.
        broken = _set(table, row, valid_to=pl.col("valid_from") - timedelta(milliseconds=1))
        return broken, row["contact_id"], row["_seq_open"]
    if kind == "overlap":
        row = targets.take("by_next")
        valid_to = pl.lit(row["_next_from"] + timedelta(minutes=1))
        return _set(table, row, valid_to=valid_to), row["contact_id"], row["_seq_open"]
    if kind == "gap":
        row = targets.take("by_next")
        middle = row["valid_from"] + (row["_next_from"] - row["valid_from"]) / 2
        return _set(table, row, valid_to=pl.lit(middle)), row["contact_id"], row["_seq_open"]
    if kind == "lost_version":  # a gap too: the version that closed the previous one is gone
        row = targets.take("middle")
        previous = with_next(table).filter(
            (pl.col("contact_id") == row["contact_id"]) & (pl.col("_next_open") == row["_seq_open"])
        )
        return table.filter(~_is(row)), row["contact_id"], previous["_seq_open"].item()
    if kind == "duplicate_identity":
        row = targets.take("closed")
        return pl.concat([table, table.filter(_is(row))]), row["contact_id"], row["_seq_open"]
    if kind == "valid_time_out_of_range":
        row = targets.take("alone")
        hostile = pl.lit(HOSTILE_MS * 1000).cast(pl.Datetime("us", "UTC"))
        return _set(table, row, valid_from=hostile), row["contact_id"], row["_seq_open"]
    raise AssertionError(kind)


def _set(table: pl.DataFrame, row: dict[str, Any], **values: pl.Expr) -> pl.DataFrame:
    return table.with_columns(
        pl.when(_is(row)).then(value).otherwise(pl.col(name)).alias(name)
        for name, value in values.items()
    )


CORRUPTIONS = [*SCD2_KINDS, "lost_version"]


def reported_kind(corruption: str) -> str:
    return "gap" if corruption == "lost_version" else corruption


# ------------------------------------------------------------------------------ pure checks


_change = st.fixed_dictionaries(
    {
        "contact_id": st.sampled_from(["c1", "c2", "c3"]),
        "kind": st.sampled_from(["U", "U", "U", "D", "T"]),
        "ts": st.integers(0, 12),
        "email": st.sampled_from(["a", "b"]),
        "phone": st.sampled_from(["1", "2", None]),
    }
)


@settings(max_examples=200, deadline=None)
@given(changes=st.lists(_change, max_size=30), data=st.data())
def test_any_history_in_any_batches_gives_a_sound_table(
    changes: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Inserts, updates, deletes, tombstones, equal times, any log order and batch split."""
    log = to_log(data.draw(st.permutations(changes)))
    if not log:
        return
    assert check_scd2(scd2_from_events(frame(log), SPEC), KEYS).to_dicts() == []
    cuts = data.draw(st.lists(st.integers(0, len(log)), max_size=5))
    dim, received = Dimension(), []
    for a, b in itertools.pairwise(sorted({0, len(log), *cuts})):
        received += log[a:b]
        if b > a:
            dim.apply(frame(log[a:b]), history=frame(received))
    assert check_scd2(dim.table, KEYS).to_dicts() == []


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_each_corruption_is_reported_as_its_kind_on_its_key(corruption: str) -> None:
    table = sound_table()
    broken, key, seq_open = corrupt(table, corruption, Targets(table))
    shuffled = broken.sample(fraction=1.0, shuffle=True, seed=3)  # any row order
    found = check_scd2(shuffled, KEYS, ACCEPTED)
    assert found.select("kind", "key", "seq_open").to_dicts() == [
        {
            "kind": reported_kind(corruption),
            "key": {"contact_id": key},
            "seq_open": seq_open or None,
        }
    ]


def test_details_say_what_is_wrong() -> None:
    table = sound_table()
    targets = Targets(table)
    details = {}
    for corruption in CORRUPTIONS:
        table, key, _ = corrupt(table, corruption, targets)
        details[corruption] = key
    found = check_scd2(table, KEYS, ACCEPTED)
    by_key = {r["key"]["contact_id"]: (r["kind"], r["detail"]) for r in found.to_dicts()}
    assert {c: by_key[k][0] for c, k in details.items()} == {
        c: reported_kind(c) for c in CORRUPTIONS
    }
    assert by_key[details["multiple_current"]][1].startswith("2 current versions (opened ")
    assert by_key[details["current_flag"]][1].startswith("is_current false but valid_to null")
    assert by_key[details["inverted"]][1].startswith("valid_to ")
    assert " before valid_from " in by_key[details["inverted"]][1]
    assert " overlaps the next version, opened " in by_key[details["overlap"]][1]
    assert "but the next version, which closed it, opens at" in by_key[details["gap"]][1]
    assert "that the table does not hold" in by_key[details["lost_version"]][1]
    assert (
        by_key[details["duplicate_identity"]][1] == "2 rows share this identity (keys, _seq_open)"
    )
    assert by_key[details["valid_time_out_of_range"]][1] == (
        "valid_from +13759-05-19 02:46:15.807000+00:00 is outside the accepted source times"
        " (source_time_window), 1970-01-01 00:00:00+00:00 to 2030-01-01 00:00:00+00:00"
    )
    # Kinds come in a fixed order; the whole table's violations once each.
    assert found["kind"].to_list() == sorted(
        found["kind"].to_list(), key=lambda k: SCD2_KINDS.index(k)
    )
    assert found.height == len(CORRUPTIONS)


def test_composite_keys_and_a_table_without_seq_max() -> None:
    rows = pl.DataFrame(
        {
            "base": ["EUR", "EUR", "EUR", "USD"],
            "quote": ["USD", "USD", "USD", "EUR"],
            "valid_from": [0, 10, 10, 0],
            "valid_to": [10, None, None, None],
            "is_current": [False, True, True, True],
            "_seq_open": ["a", "b", "c", "a"],
            "_seq_close": ["b", None, None, None],
        }
    ).with_columns(pl.col("valid_from", "valid_to").cast(pl.Datetime("us", "UTC")))
    found = check_scd2(rows, ["base", "quote"])
    assert found.select("kind", "key").to_dicts() == [
        {"kind": "multiple_current", "key": {"base": "EUR", "quote": "USD"}}
    ]
    assert found["detail"].item() == "2 current versions (opened b, c)"


def test_missing_columns_are_named() -> None:
    rows = pl.DataFrame({"id": [1], "valid_from": [1], "valid_to": [1], "is_current": [True]})
    with pytest.raises(ValueError, match="not an SCD2 dimension: no column _seq_open, _seq_close"):
        check_scd2(rows, ["id"])
    with pytest.raises(ValueError, match="an SCD2 check needs the key columns"):
        check_scd2(pl.DataFrame(), [])


def test_facts_repeat_no_event_id() -> None:
    facts = pl.DataFrame({"event_id": ["e1", "e2", "e2", "e3", "e2"], "amount": [1, 2, 2, 3, 2]})
    found = check_facts(facts, "event_id")
    assert found.to_dicts() == [
        {
            "kind": "duplicate_event_id",
            "key": {"event_id": "e2"},
            "seq_open": None,
            "detail": "3 rows hold this event",
        }
    ]
    assert check_facts(facts.unique("event_id"), "event_id").height == 0


def test_summary_caps_the_examples_per_kind() -> None:
    table = sound_table()
    copies = table.filter(~pl.col("is_current")).head(7)
    report = summarize(check_scd2(pl.concat([table, copies]), KEYS), cap=2)
    assert report.counts == {"duplicate_identity": 7}
    assert len(report.examples["duplicate_identity"]) == 2
    first = copies.sort(IDENTITY).row(0, named=True)
    assert report.summary().startswith(
        f"duplicate_identity 7 (contact_id={first['contact_id']}, contact_id="
    )
    assert report.summary().endswith(", ...)")


# --------------------------------------------------------------------- after a batch: metrics


def test_a_batch_check_is_logged_counted_and_exported(caplog: pytest.LogCaptureFixture) -> None:
    table = sound_table()
    broken, key, _ = corrupt(table, "multiple_current", Targets(table))
    report = summarize(check_scd2(broken, KEYS), cap=3)
    stats = BatchStats(batch_id=4)
    with caplog.at_level(logging.WARNING, logger="cdc.pipeline.batch_check"):
        record_batch_check("crm_contacts", stats, report, "delta-rs")
    assert stats.invariant_violations == {"multiple_current": 1}
    [record] = caplog.records
    assert record.getMessage() == (
        "pipeline crm_contacts batch 4: 1 SCD2 invariant violation(s) in the keys it touched:"
        f" multiple_current 1 (contact_id={key}) (the batch is committed; list them with"
        " `cdc verify --pipeline crm_contacts`)"
    )
    assert record.counts == {"multiple_current": 1}  # type: ignore[attr-defined]

    metrics = ServiceMetrics(["crm_contacts"])
    before = metric_samples(metrics.exposition().decode())
    label = (("kind", "multiple_current"), ("pipeline", "crm_contacts"))
    assert before[("cdc_scd2_invariant_violations_total", label)] == 0  # exported from the start
    for kind in SCD2_KINDS:  # every kind, valid_time_out_of_range included
        series = (("kind", kind), ("pipeline", "crm_contacts"))
        assert before[("cdc_scd2_invariant_violations_total", series)] == 0
    metrics.on_batch("crm_contacts", stats)
    metrics.on_batch("crm_contacts", stats)
    got = metric_samples(metrics.exposition().decode())
    assert got[("cdc_scd2_invariant_violations_total", label)] == 2
    gauge = ("cdc_scd2_invariant_last_check_violations", (("pipeline", "crm_contacts"),))
    assert got[gauge] == 1
    sound = BatchStats(batch_id=5)
    caplog.clear()
    record_batch_check("crm_contacts", sound, summarize(check_scd2(table, KEYS), cap=3), "x")
    assert sound.invariant_violations == {} and caplog.records == []
    metrics.on_batch("crm_contacts", sound)
    assert metric_samples(metrics.exposition().decode())[gauge] == 0


# ---------------------------------------------------------------------------- cdc verify


def _args(tmp_path: Path, *extra: str) -> list[str]:
    out = []
    for item in (f"lake.root={tmp_path / 'lake'}", f"checkpoints.root={tmp_path / 'cp'}"):
        out += ["--set", item]
    return [*out, *extra]


def _write(uri: Path, rows: pl.DataFrame, partition_by: list[str] | None = None) -> None:
    write_deltalake(
        str(uri),
        rows.to_arrow(compat_level=pl.CompatLevel.oldest()),
        mode="overwrite",
        partition_by=partition_by,
    )


def test_cdc_verify_lists_each_corruption_with_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    silver = tmp_path / "lake" / "silver"
    table = sound_table()
    _write(silver / "dim_contact", table, ["is_current"])  # the writers' layout
    _write(silver / "fact_orders", pl.DataFrame({"event_id": ["e1", "e2"], "amount": [1, 2]}))
    assert main(["verify", "--table", "silver/dim_contact", *_args(tmp_path)]) == 0
    keys = table["contact_id"].n_unique()
    assert capsys.readouterr().out.startswith(
        f"silver/dim_contact: {table.height:,} rows, {keys:,} keys, 0 violations: sound ("
    )

    targets, broken, expected = Targets(table), table, {}
    for corruption in CORRUPTIONS:
        broken, key, seq_open = corrupt(broken, corruption, targets)
        expected[corruption] = (key, seq_open)
    _write(silver / "dim_contact", broken, ["is_current"])
    _write(
        silver / "fact_orders", pl.DataFrame({"event_id": ["e1", "e2", "e1"], "amount": [1, 2, 1]})
    )

    assert main(["verify", *_args(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    dim = out.index(next(line for line in out if line.startswith("silver/dim_contact: ")))
    assert out[dim].startswith(
        f"silver/dim_contact: {broken.height:,} rows, {keys:,} keys, 8 violations:"
        " multiple_current 1, current_flag 1, inverted 1, overlap 1, gap 2,"
        " duplicate_identity 1, valid_time_out_of_range 1 ("
    )
    listed = out[dim + 1 : dim + 9]
    for corruption, (key, seq_open) in expected.items():
        version = f" (version {seq_open})" if seq_open else ""
        head = f"  {reported_kind(corruption)} contact_id={key}{version}: "
        assert sum(line.startswith(head) for line in listed) == 1, (corruption, listed)
    facts = next(line for line in out if line.startswith("silver/fact_orders: "))
    assert facts.startswith("silver/fact_orders: 3 rows, 2 event ids, 1 violation:")
    assert "  duplicate_event_id event_id=e1: 2 rows hold this event" in out
    # Tables that do not exist yet are sound.
    assert "silver/dim_account: no table yet" in out

    assert main(["verify", "--pipeline", "crm_contacts", "--json", *_args(tmp_path)]) == 1
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["table"] == "silver/dim_contact" and doc["violations"] == 8
    assert doc["counts"]["gap"] == 2
    gap_keys = {v["key"]["contact_id"] for v in doc["listed"] if v["kind"] == "gap"}
    assert gap_keys == {expected["gap"][0], expected["lost_version"][0]}

    # Only the table asked for; the others are not read.
    assert main(["verify", "--table", "fact_orders", *_args(tmp_path)]) == 1
    assert capsys.readouterr().out.startswith("silver/fact_orders: 3 rows, 2 event ids, 1 ")


def test_cdc_verify_caps_the_listing_per_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = sound_table()
    copies = table.filter(~pl.col("is_current")).head(13)
    _write(tmp_path / "lake" / "silver" / "dim_contact", pl.concat([table, copies]))
    assert main(["verify", "--table", "dim_contact", *_args(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("  duplicate_identity contact_id=") for line in out) == 10
    assert out[-1] == "  ... and 3 more duplicate_identity"


def test_cdc_verify_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--table", "silver/dim_nothing", *_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdc: error: --table 'silver/dim_nothing' names no silver table;")
    assert "silver/dim_contact" in err and err.count("\n") == 1

    assert main(["verify", "--pipeline", "nope", *_args(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("cdc: error: unknown pipeline 'nope'; valid: ")

    # A table without the SCD2 columns cannot be judged: said in one line, exit 2.
    _write(tmp_path / "lake" / "silver" / "dim_account", pl.DataFrame({"account_id": ["a1"]}))
    assert main(["verify", "--pipeline", "crm_accounts", *_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"cdc: error: silver/dim_account ({tmp_path / 'lake' / 'silver' / 'dim_account'}):"
        " not an SCD2 dimension: no column valid_from, valid_to, is_current, _seq_open,"
        " _seq_close\n"
    )
