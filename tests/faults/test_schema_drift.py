"""Schema drift: producers writing with schemas other than the consumer's reader schema.

The decoder reads every record with the reader schema, ``crm.contacts-value`` latest (v3,
id 15), whatever writer schema id the record carries; the writer id must be resolvable in the
consumer's registry. The consumer's registry here is a copy of ``schemas/avro`` that also
holds the producers' schemas:

* (a) **extra field**: a producer ahead of the consumer adds ``Value.nickname`` (id 101). The
  record lands in bronze decoded as v3, ``extra_fields`` naming the field; silver is as if
  the producer had written v3.
* (b) **optional field removed**: a producer drops ``Value.phone`` (id 102), and an old
  producer still writes v1 (id 4, without v2's ``marketing_opt_in``/``job_title``). The reader
  fills the defaults; bronze and silver equal the clean run.
* (c) **breaking change**: ``Value.updated_at`` becomes a string (id 103): quarantined as
  ``schema_mismatch``, the error naming the field.

The producers' schemas are registered each as version 1 of a subject of their own: the file
registry reads with the *latest* version of the contract's subject, so registering them as
v4 of ``crm.contacts-value`` would make them the reader. That is the other case, tested last:

* (d) **the registry of record evolves**: ``crm.contacts-value`` gains v4 = v3 + an optional
  ``nickname`` (BACKWARD compatible, ``cdc schemas check`` accepts it) after silver already
  holds v3 rows. v4 becomes the reader: bronze and silver gain the column, null for changes
  written before it, and silver equals the one-pass SCD2 model with the column tracked.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.ingest.registry import RegisteredSchema, check_path
from cdc.pipeline.queries import run_pipelines
from tests.support.faults import (
    PIPELINE,
    VALUE_SUBJECT,
    Event,
    Rec,
    Reference,
    assert_exactly_once,
    assert_frames_equal,
    assert_silver_matches_model,
    base_builder,
    base_stream,
    cdc_run,
    coordinate_map,
    envelope,
    key_bytes,
    partition_of,
    produce,
    read_tables,
    reencode,
    register,
    registry,
    remap_rows,
    remap_silver,
    settings,
    value_bytes,
    writer_schema,
)
from tests.support.paths import REGISTRY_PATH

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUDIT = ["_ingested_at", "_batch_id", "_topic_id"]


def _add_nickname(fields: list[dict[str, Any]]) -> None:
    fields.append({"name": "nickname", "type": ["null", "string"], "default": None})


def _drop_phone(fields: list[dict[str, Any]]) -> None:
    fields[:] = [f for f in fields if f["name"] != "phone"]


def _updated_at_as_string(fields: list[dict[str, Any]]) -> None:
    for f in fields:
        if f["name"] == "updated_at":
            f["type"] = "string"


EXTRA = writer_schema(101, "drift.extra-value", _add_nickname)
SLIM = writer_schema(102, "drift.slim-value", _drop_phone)
BROKEN = writer_schema(103, "drift.broken-value", _updated_at_as_string)


def _rows(datum: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in (datum["before"], datum["after"]) if r is not None]


def drifted_stream() -> tuple[list[Rec], dict[str, tuple[int, list[str] | None]], list[Rec]]:
    """The base stream with some records re-encoded, and two breaking records inserted.

    Returns:
        (records, {rid: (writer id, expected extra_fields)} of re-encoded ones, breaking ones)
    """
    v1 = registry().get(VALUE_SUBJECT, 1)
    upserts = [r for r in base_stream() if r.reason is None and r.datum is not None]
    recs = list(base_stream())
    drifted: dict[str, tuple[int, list[str] | None]] = {}

    def pick(test: Any, count: int) -> list[Rec]:
        found = [r for r in upserts if r.rid not in drifted and r.datum and test(r.datum)]
        return found[:count]

    def swap(rec: Rec, new: Rec, schema_id: int, extras: list[str] | None) -> None:
        recs[recs.index(rec)] = new
        drifted[rec.rid] = (schema_id, extras)

    def nickname(d: dict[str, Any]) -> None:
        for row in _rows(d):
            row["nickname"] = f"nick-{row['contact_id']}"

    def no_phone(d: dict[str, Any]) -> None:
        for row in _rows(d):
            del row["phone"]

    def v1_only(d: dict[str, Any]) -> None:
        for row in _rows(d):
            del row["marketing_opt_in"], row["job_title"]

    # (a) one create, one update (``before`` set): both carry the extra field.
    for rec in pick(lambda d: d["op"] == "c", 1) + pick(lambda d: d["op"] == "u", 1):
        extras = ["value.before.nickname", "value.after.nickname"]
        swap(rec, reencode(rec, EXTRA, nickname), EXTRA.schema_id, extras)
    # (b) phone is null wherever it is dropped, so the reader's default gives the same row.
    for rec in pick(lambda d: all(r["phone"] is None for r in _rows(d)), 2):
        swap(rec, reencode(rec, SLIM, no_phone), SLIM.schema_id, None)
    defaults = lambda d: all(  # noqa: E731
        r["marketing_opt_in"] is False and r["job_title"] is None for r in _rows(d)
    )
    for rec in pick(defaults, 2):
        swap(rec, reencode(rec, v1, v1_only), v1.schema_id, None)

    # (c) breaking records for two existing contacts, inserted mid-stream.
    broken: list[Rec] = []
    for position, cid in ((26, "c06"), (12, "c02")):
        neighbour = recs[position]
        ts = neighbour.ts + 5
        after = {
            "contact_id": cid,
            "account_id": "a2",
            "email": f"{cid}.broken@acme.io",
            "first_name": "Broken",
            "last_name": "Writer",
            "phone": None,
            "updated_at": "2026-01-05T09:00:00Z",
        }
        datum = envelope("c", ts, None, after)
        rec = Rec(
            f"broken-{cid}",
            partition_of(cid),
            ts,
            key_bytes(cid),
            value_bytes(datum, BROKEN),
            reason="schema_mismatch",
            datum=datum,
        )
        recs.insert(position + 1, rec)
        broken.append(rec)
    assert len(drifted) == 6
    return recs, drifted, broken


def test_schema_drift_extra_removed_and_breaking_fields(
    fresh_kafka: str, reference: Reference, tmp_path: Path
) -> None:
    consumer_registry = tmp_path / "registry"
    shutil.copytree(REGISTRY_PATH, consumer_registry)
    register(consumer_registry, [EXTRA, SLIM, BROKEN])
    recs, drifted, broken = drifted_stream()
    sent = produce(fresh_kafka, recs)
    option = f"registry.path={consumer_registry}"
    run = cdc_run(fresh_kafka, tmp_path, option)
    assert run.returncode == 0, run.stderr[-3000:]
    got = read_tables(settings(fresh_kafka, tmp_path, option))
    assert_exactly_once(got, sent)  # (c) in quarantine as schema_mismatch, the rest in bronze

    # (c) the error says which field broke.
    assert got.quarantine is not None
    at = {x.rec.rid: x.coords for x in sent}
    quarantined = {(r["partition"], r["offset"]): r for r in got.quarantine.iter_rows(named=True)}
    for rec in broken:
        row = quarantined[at[rec.rid]]
        assert row["value_schema_id"] == BROKEN.schema_id
        assert "drift.broken-value" in row["error"] and "updated_at" in row["error"], row["error"]

    # (a)/(b) bronze: the clean run's rows, except the bytes, writer id and extra fields of
    # the re-encoded records.
    where = coordinate_map(sent, reference.sent)
    ref = reference.tables
    assert got.bronze is not None and ref.bronze is not None and ref.silver is not None
    by_rid = {x.rec.rid: x for x in sent}
    ref_at = {x.rec.rid: x.coords for x in reference.sent}
    patched = {ref_at[rid]: (by_rid[rid].rec.value, sid, ex) for rid, (sid, ex) in drifted.items()}
    want_rows = ref.bronze.drop(AUDIT).to_dicts()
    for row in want_rows:
        patch = patched.get((row["partition"], row["offset"]))
        if patch is not None:
            row["value_raw"], row["value_schema_id"], row["extra_fields"] = patch
    want = pl.DataFrame(want_rows, schema=ref.bronze.drop(AUDIT).schema)
    assert_frames_equal(
        remap_rows(got.bronze, where).drop(AUDIT), want, ["partition", "offset"], "bronze"
    )
    # ... and silver is exactly the clean run's.
    assert got.silver is not None
    assert_frames_equal(
        remap_silver(got.silver, where), ref.silver, ["contact_id", "_seq_open"], "silver"
    )
    assert_frames_equal(got.orphans, ref.orphans, ["contact_id"], "orphans")


def test_new_optional_field_as_the_subjects_next_version_reaches_bronze_and_silver(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    builder = base_builder()
    old = produce(fresh_kafka, builder.recs)
    run_pipelines(spark, settings(fresh_kafka, tmp_path), [PIPELINE], available_now=True)

    evolved = tmp_path / "registry"
    shutil.copytree(REGISTRY_PATH, evolved)
    v4 = RegisteredSchema(VALUE_SUBJECT, 4, 101, EXTRA.schema)
    (evolved / VALUE_SUBJECT / "v4.avsc").write_text(json.dumps(v4.schema, indent=2))
    index = json.loads((evolved / "index.json").read_text())
    index["subjects"][VALUE_SUBJECT].append({"version": v4.version, "id": v4.schema_id})
    (evolved / "index.json").write_text(json.dumps(index, indent=2))
    assert check_path(evolved) == []  # what `cdc schemas check` runs in CI

    more = builder.continue_as("v")

    def with_nickname(rec: Rec, nickname: str) -> Rec:
        assert rec.event is not None and rec.event.row is not None
        new = reencode(rec, v4, lambda d: d["after"].update(nickname=nickname))
        return replace(
            new, event=Event(rec.event.cid, "U", {**rec.event.row, "nickname": nickname})
        )

    recs = [
        with_nickname(more.upsert("c03", email="user3.v3@acme.io"), "Tre"),  # tracked + new
        with_nickname(more.upsert("c12", "c", email="c12@acme.io"), "Twelve"),  # new contact
        more.upsert("c07", phone="+44 7"),  # a producer still on v3 (untracked change)
        with_nickname(more.upsert("c03"), "Trey"),  # only the new column changes: tracked
    ]
    new = produce(fresh_kafka, recs)
    option = f"registry.path={evolved}"
    run = cdc_run(fresh_kafka, tmp_path, option)
    assert run.returncode == 0, run.stderr[-3000:]
    got = read_tables(settings(fresh_kafka, tmp_path, option))
    assert_exactly_once(got, old + new)
    assert got.bronze is not None
    after = got.bronze.schema["value"].fields[1].dtype  # value.after
    assert "nickname" in [f.name for f in after.fields]  # type: ignore[union-attr]
    assert_silver_matches_model(got.silver, old + new, added=("nickname",))
