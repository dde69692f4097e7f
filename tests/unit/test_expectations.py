"""Data-quality expectations: each check with each action, config errors, the counts ``cdc
status`` reads, and the same verdicts from Polars (delta-rs) and Spark (delta-spark)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from cdc.config.expectations import ACTIONS, ExpectationSettings
from cdc.config.settings import Settings, load_settings
from cdc.core.ranges import merge_ranges
from cdc.errors import ConfigError, ExpectationFailedError
from cdc.ingest.changes import split_batch
from cdc.ops.metrics import METRIC_NAMES, ServiceMetrics
from cdc.ops.status import PipelineStatus, format_status
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.expectations import (
    COUNTS_FILE,
    Expectations,
    RuleTotal,
    expectations_for,
    read_counts,
    record_counts,
    rule_totals,
)
from cdc.store.delta_rs import DeltaRsStore
from tests.support.endpoints import metric_samples
from tests.support.paths import REPO_ROOT

RECORD = pa.schema(
    [
        ("id", pa.string()),
        ("n", pa.int64()),
        ("i", pa.int32()),
        ("amount", pa.decimal128(18, 2)),
        ("f", pa.float64()),
        ("s", pa.string()),
        ("b", pa.bool_()),
    ]
)


def rec(
    id: str | None = "a",
    n: int | None = 5,
    i: int | None = 1,
    amount: str | None = "1.50",
    f: float | None = 0.5,
    s: str | None = "AB",
    b: bool | None = True,
) -> dict[str, Any]:
    return {
        "id": id,
        "n": n,
        "i": i,
        "amount": None if amount is None else Decimal(amount),
        "f": f,
        "s": s,
        "b": b,
    }


NULLS = dict.fromkeys(RECORD.names)
ROWS = [  # (partition, offset, record)
    (1, 10, rec()),
    (1, 11, rec(id="b", n=-1, i=-7, amount="-2.00", f=float("nan"), s="ab", b=False)),
    (0, 12, NULLS),
    (0, 3, rec(id="c", n=200, i=300, amount="10.00", f=2.0, s="ABC", b=True)),
]


def decoded(
    rows: list[tuple[int, int, dict[str, Any] | None]],
    *,
    envelope: bool = False,
    ops: list[str | None] | None = None,
    errors: list[str | None] | None = None,
) -> pa.Table:
    """A decoded batch as :mod:`cdc.ingest.contracts` yields it (flat value, or a Debezium
    envelope)."""
    n = len(rows)
    record = pa.struct(list(RECORD))
    if envelope:
        value_type = pa.struct([("before", record), ("after", record), ("op", pa.string())])
        ops = ops or ["c"] * n
        values: list[Any] = [
            None if op is None else {"before": None, "after": r, "op": op}
            for (_, _, r), op in zip(rows, ops, strict=True)
        ]
    else:
        value_type = record
        values = [r for _, _, r in rows]
    errors = errors or [None] * n
    return pa.table(
        {
            "topic": pa.array(["t"] * n, pa.string()),
            "partition": pa.array([p for p, _, _ in rows], pa.int32()),
            "offset": pa.array([o for _, o, _ in rows], pa.int64()),
            "timestamp": pa.array(
                [datetime(2026, 1, 5, tzinfo=UTC)] * n, pa.timestamp("us", "UTC")
            ),
            "key_raw": pa.array([f"k{o}".encode() for _, o, _ in rows], pa.binary()),
            "value_raw": pa.array([f"v{o}".encode() for _, o, _ in rows], pa.binary()),
            "key_schema_id": pa.array([1] * n, pa.int32()),
            "value_schema_id": pa.array([2] * n, pa.int32()),
            "value": pa.array(values, value_type),
            "error_code": pa.array(errors, pa.string()),
            "error": pa.array([e and f"why {e}" for e in errors], pa.string()),
        }
    )


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Table equality where NaN equals NaN (``pa.Table.equals`` says it does not)."""
    return a.schema == b.schema and str(a.to_pylist()) == str(b.to_pylist())


def rule(spec: dict[str, Any]) -> ExpectationSettings:
    return ExpectationSettings.model_validate(spec)


def checks(*specs: dict[str, Any], image: str = "value") -> Expectations:
    return Expectations("orders", [rule(s) for s in specs], image, RECORD)  # type: ignore[arg-type]


CASES = [  # (check, its words, the ROWS (by index) that fail it)
    ({"not_null": "id"}, "not_null id", [2]),
    ({"range": {"column": "n", "min": 0, "max": 100}}, "range 0 <= n <= 100", [1, 3]),
    ({"range": {"column": "f", "min": 0}}, "range f >= 0", [1]),  # NaN is in no range
    ({"range": {"column": "amount", "max": "9.99"}}, "range amount <= 9.99", [3]),
    ({"regex": {"column": "s", "pattern": "[A-Z]{2}"}}, "regex s matches '[A-Z]{2}'", [1, 3]),
    ({"allowed": {"column": "b", "values": [True]}}, "allowed b in (true)", [1]),
    ({"allowed": {"column": "f", "values": [0.5, 2]}}, "allowed f in (0.5, 2)", [1]),  # NaN
    ({"expr": "amount >= 0 AND f < 1"}, "expr amount >= 0 AND f < 1", [1, 3]),
]


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(("check", "words", "failing"), CASES, ids=[c[1] for c in CASES])
def test_each_check_with_each_action(
    check: dict[str, Any], words: str, failing: list[int], action: str
) -> None:
    batch = decoded(ROWS)
    judge = checks({"name": "q", "action": action, **check})
    if action == "fail":
        first = min((ROWS[i][0], ROWS[i][1]) for i in failing)
        with pytest.raises(ExpectationFailedError) as caught:
            judge.apply(batch, 7, {})
        assert str(caught.value) == (
            f"pipeline orders: expectation q ({words}) failed for {len(failing)} record(s) of"
            f" batch 7, the first at partition@offset {first[0]}@{first[1]}; nothing of the"
            " batch was committed"
        )
        return
    out, counts = judge.apply(batch, 7, {})
    assert counts == {"q": {action: len(failing)}}
    if action == "warn":
        assert same_rows(out, batch)
        return
    assert out.column("error_code").to_pylist() == [
        "expectation" if i in failing else None for i in range(len(ROWS))
    ]
    assert out.column("error").to_pylist() == [
        f"expectation q failed: {words}" if i in failing else None for i in range(len(ROWS))
    ]
    assert same_rows(
        out.drop_columns(["error_code", "error"]), batch.drop_columns(["error_code", "error"])
    )


def test_dropped_records_go_to_quarantine_with_their_bytes_and_every_failed_rule() -> None:
    judge = checks(
        {"name": "n_small", "range": {"column": "n", "max": 100}, "action": "drop"},
        {"name": "s_upper", "regex": {"column": "s", "pattern": "[A-Z]+"}, "action": "drop"},
        {"name": "i_known", "not_null": "i"},
    )
    out, counts = judge.apply(decoded(ROWS), 0, {})
    assert counts == {"n_small": {"drop": 1}, "s_upper": {"drop": 1}, "i_known": {"warn": 1}}
    split = split_batch(out, 0, datetime.now(UTC))
    assert split.valid.column("offset").to_pylist() == [10, 12]  # the null row passes both
    quarantine = split.quarantine.to_pylist()
    assert [(r["offset"], r["error_code"], r["error"]) for r in quarantine] == [
        (11, "expectation", "expectation s_upper failed: regex s matches '[A-Z]+'"),
        (3, "expectation", "expectation n_small failed: range n <= 100"),
    ]
    assert [(r["key_raw"], r["value_raw"]) for r in quarantine] == [
        (b"k11", b"v11"),
        (b"k3", b"v3"),
    ]
    two = checks(
        {"name": "n_pos", "range": {"column": "n", "min": 0}, "action": "drop"},
        {"name": "b_true", "allowed": {"column": "b", "values": [True]}, "action": "drop"},
    )
    out, _ = two.apply(decoded(ROWS), 0, {})
    assert out.column("error").to_pylist()[1] == (
        "expectation n_pos failed: range n >= 0; expectation b_true failed: allowed b in (true)"
    )


def test_nulls_pass_every_check_but_not_null() -> None:
    judge = checks(
        {"name": "r", "range": {"column": "i", "min": 0}},
        {"name": "x", "regex": {"column": "s", "pattern": "z"}},
        {"name": "a", "allowed": {"column": "s", "values": ["z"]}},
        {"name": "e", "expr": "n > 0"},
        {"name": "nn", "not_null": "b"},
    )
    flags = judge.flags(decoded([(0, 0, NULLS)]))
    assert flags.row(0, named=True) == {"r": False, "x": False, "a": False, "e": False, "nn": True}


def test_deletes_tombstones_invalid_and_landed_records_are_not_checked() -> None:
    bad = rec(id=None)
    rows = [(0, o, bad) for o in range(6)]
    batch = decoded(
        rows,
        envelope=True,
        ops=["c", "d", None, "u", "r", "c"],  # offset 2: a tombstone (no value)
        errors=[None, None, None, "decode_error", None, None],
    )
    judge = checks({"name": "id_set", "not_null": "id", "action": "drop"}, image="after")
    flags = judge.flags(batch, {0: [(5, 6)]})  # offset 5 landed before (a replay)
    assert flags.get_column("id_set").to_list() == [True, False, False, False, True, False]
    out, counts = judge.apply(batch, 0, {0: [(5, 6)]})
    assert counts == {"id_set": {"drop": 2}}
    assert out.column("error_code").to_pylist() == [
        "expectation",
        None,
        None,
        "decode_error",
        "expectation",
        None,
    ]


def test_an_empty_batch_has_zero_counts() -> None:
    judge = checks(
        {"name": "w", "not_null": "id"}, {"name": "f", "not_null": "s", "action": "fail"}
    )
    batch = decoded(ROWS).slice(0, 0)
    assert judge.apply(batch, 0, {}) == (batch, {"w": {"warn": 0}})


EXPRESSIONS = [  # (SQL over ROWS, which rows it is false for)
    ("n > 0 AND s = 'AB'", [1, 3]),
    ("n < 0 OR NOT b", [0, 3]),
    ("NOT (s LIKE 'A%')", [0, 3]),
    ("s IN ('AB', 'ab')", [3]),
    ("s NOT IN ('ab')", [1]),
    ("id IS NOT NULL", [2]),
    ("COALESCE(n, 0) >= 0", [1]),
    ("LENGTH(s) = 2", [3]),
    ("n * 2 + i <= 100", [3]),
    ("amount / 2 > 0", [1]),
    ("i % 2 = 1", [1, 3]),  # -7 % 2 is -1 in both engines
    ("UPPER(s) = 'AB'", [3]),
    ("LOWER(s) = 'ab'", [3]),
    ("ABS(n) < 100", [3]),
    ("n BETWEEN 0 AND 10", [1, 3]),
    ("s <> 'ABC'", [3]),
    ("CASE WHEN b THEN n < 100 ELSE false END", [1, 2, 3]),  # null b: ELSE
]


@pytest.mark.parametrize(("sql", "false_for"), EXPRESSIONS, ids=[e[0] for e in EXPRESSIONS])
def test_expr_is_false_only_where_sql_says_so(sql: str, false_for: list[int]) -> None:
    flags = checks({"name": "e", "expr": sql}).flags(decoded(ROWS))
    assert flags.get_column("e").to_list() == [i in false_for for i in range(len(ROWS))]


# ---------------------------------------------------------------------------- config


def settings_with(*overrides: str) -> Settings:
    return load_settings(
        "local",
        overrides=["lake.root=/tmp/lake", "checkpoints.root=/tmp/checkpoints", *overrides],
        config_dir=REPO_ROOT / "config",
    )


def config_error(rules: str, pipeline: str = "orders") -> str:
    with pytest.raises(ConfigError) as caught:
        settings = settings_with(f"pipelines.{pipeline}.expectations={rules}")
        expectations_for(pipeline, settings.pipeline(pipeline), settings)
    return str(caught.value)


LOAD = "invalid configuration ({}): pipelines.orders.expectations"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            "[{name: a}]",
            ".0: Value error, expectation a: set exactly one of not_null, range,"
            " regex, allowed, expr",
        ),
        (
            "[{name: a, not_null: x, expr: 'n > 1'}]",
            ".0: Value error, expectation a: set exactly"
            " one of not_null, range, regex, allowed, expr (found: not_null, expr)",
        ),
        (
            "[{name: Amount-OK, not_null: x}]",
            ".0.name: Value error, expectation name 'Amount-OK'"
            " is not a name: lowercase letters, digits and _, at most 64 characters",
        ),
        (
            "[{name: a, not_null: x}, {name: a, not_null: y}]",
            ": Value error, expectation a is defined twice",
        ),
        (
            "[{name: a, regex: {column: x, pattern: '(?<=a)b'}}]",
            ".0: Value error, expectation a:"
            " regex '(?<=a)b' does not compile: look-around, including look-ahead and"
            " look-behind, is not supported",
        ),
        (
            "[{name: a, expr: 'amount >'}]",
            ".0: Value error, expectation a: expr 'amount >' is"
            " not a SQL expression: unable to parse 'amount >' as Expr",
        ),
        (
            "[{name: a, expr: 'nosuch(amount) > 1'}]",
            ".0: Value error, expectation a: expr"
            " 'nosuch(amount) > 1' is not a SQL expression: unsupported function 'nosuch'",
        ),
        (
            "[{name: a, range: {column: x}}]",
            ".0.range: Value error, a range needs min, max or both",
        ),
        (
            "[{name: a, range: {column: x, min: 2, max: 1}}]",
            ".0.range: Value error, range min 2 is greater than max 1",
        ),
        (
            "[{name: a, range: {column: x, min: yes}}]",
            ".0.range.min: Value error, bound True is not a number",
        ),
        (
            "[{name: a, not_null: x, action: stop}]",
            ".0.action: Input should be 'warn', 'drop' or 'fail'",
        ),
        ("[{name: a, not_null: x, when: always}]", None),
    ],
)
def test_a_bad_rule_is_refused_when_the_config_loads(rules: str, message: str | None) -> None:
    text = config_error(rules)
    source = REPO_ROOT / "config" / "local.yaml"
    if message is None:  # an unknown key lists the valid ones
        assert text == (
            f"invalid configuration ({source}): unknown key"
            " 'pipelines.orders.expectations.0.when'; valid keys: name, not_null, range, regex,"
            " allowed, expr, action"
        )
    else:
        assert text == LOAD.format(source) + message


ORDER_COLUMNS = (
    "event_id, order_id, account_id, contact_id, status, amount, currency, ordered_at, event_ts"
)


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        (
            "[{name: a, not_null: amout}]",
            f"no column 'amout' in the record (columns: {ORDER_COLUMNS})",
        ),
        (
            "[{name: a, range: {column: status, min: 0}}]",
            "range needs a numeric column; status is string",
        ),
        (
            "[{name: a, regex: {column: amount, pattern: x}}]",
            "regex needs a string column; amount is decimal128(18, 2)",
        ),
        (
            "[{name: a, allowed: {column: status, values: [placed, 1]}}]",
            "allowed value 1 cannot be a value of status (string)",
        ),
        (
            "[{name: a, expr: 'amout > 0 AND statu = 1'}]",
            f"expr names amout, statu, not a column of the record (columns: {ORDER_COLUMNS})",
        ),
        (
            "[{name: a, expr: 'UPPER(status)'}]",
            "expr is String, not a boolean",
        ),
        ('[{name: a, expr: "status > 1"}]', "cannot compare string with numeric type"),
    ],
)
def test_a_rule_that_does_not_fit_the_record_is_refused_at_start(rules: str, problem: str) -> None:
    text = config_error(rules)
    if "cannot compare" in problem:  # Polars' words, then the literal's type
        assert text.startswith(f"pipeline orders: expectation a: {problem} ("), text
    else:
        assert text == f"pipeline orders: expectation a: {problem}"


def test_scd2_envelope_rules_read_the_after_image() -> None:
    text = config_error("[{name: a, not_null: op}]", pipeline="crm_contacts")
    assert text.startswith("pipeline crm_contacts: expectation a: no column 'op' in the record")
    assert "(columns: contact_id, account_id, email, " in text
    settings = settings_with("pipelines.crm_contacts.expectations=[{name: a, not_null: email}]")
    judge = expectations_for("crm_contacts", settings.pipeline("crm_contacts"), settings)
    assert judge is not None and judge.image == "after"
    assert expectations_for("behavior", settings.pipeline("behavior"), settings) is None


# ---------------------------------------------------------------------------- counts


def test_counts_add_up_once_per_batch_and_survive_a_replay(tmp_path: Path) -> None:
    checkpoint = tmp_path / "orders"
    assert read_counts(checkpoint) == {}
    record_counts(checkpoint, 0, {"w": {"warn": 2}, "d": {"drop": 1}})
    record_counts(checkpoint, 0, {"w": {"warn": 2}, "d": {"drop": 1}})  # batch 0 run again
    record_counts(checkpoint, 1, {"w": {"warn": 0}, "d": {"drop": 0}})  # nothing to add
    record_counts(checkpoint, 2, {"w": {"warn": 3}, "d": {"drop": 0}})
    assert read_counts(checkpoint) == {"w": {"warn": 5}, "d": {"drop": 1}}
    assert json.loads((checkpoint / COUNTS_FILE).read_text())["batch"] == 2

    # cdc replay moves the checkpoint aside; the new one starts its batch ids at 0 again.
    checkpoint.rename(tmp_path / "orders.replaced-1")
    checkpoint.mkdir()
    start = {"replayed_from": "orders.replaced-1"}
    (checkpoint / "cdc-start.json").write_text(json.dumps(start))
    assert read_counts(checkpoint) == {"w": {"warn": 5}, "d": {"drop": 1}}
    record_counts(checkpoint, 0, {"w": {"warn": 1}, "d": {"drop": 4}})
    assert read_counts(checkpoint) == {"w": {"warn": 6}, "d": {"drop": 5}}


def test_status_and_metrics_show_the_counts_per_rule() -> None:
    rules = [
        rule({"name": "w", "not_null": "id"}),
        rule({"name": "d", "range": {"column": "n", "min": 0}, "action": "drop"}),
        rule({"name": "f", "expr": "n < 1000", "action": "fail"}),
    ]
    totals = rule_totals(rules, {"w": {"warn": 6}, "d": {"drop": 5}, "gone": {"warn": 2}})
    assert totals == [
        RuleTotal("w", "warn", "not_null id", 6),
        RuleTotal("d", "drop", "range n >= 0", 5),
        RuleTotal("f", "fail", "expr n < 1000", None),
        RuleTotal("gone", "warn", "", 2),
    ]
    status = PipelineStatus("orders", "events.orders", "fact_orders", None, None, None, [], totals)
    assert format_status(status).splitlines()[3:] == [
        "  expectation w (warn: not_null id): 6 failed",
        "  expectation d (drop: range n >= 0): 5 failed",
        "  expectation f (fail: expr n < 1000): stops the query",
        "  expectation gone (warn: no longer configured): 2 failed",
    ]
    assert status.to_json()["expectations"][1] == {
        "rule": "d",
        "action": "drop",
        "check": "range n >= 0",
        "failed": 5,
    }

    assert "cdc_expectation_failures_total" in METRIC_NAMES
    metrics = ServiceMetrics(["orders"])
    stats = BatchStats(0, expectation_failures={"w": {"warn": 2}, "d": {"drop": 1}})
    metrics.on_batch("orders", stats)
    metrics.on_batch("orders", stats)
    got = metric_samples(metrics.exposition().decode())
    labels = (("action", "warn"), ("pipeline", "orders"), ("rule", "w"))
    assert got[("cdc_expectation_failures_total", labels)] == 4
    labels = (("action", "drop"), ("pipeline", "orders"), ("rule", "d"))
    assert got[("cdc_expectation_failures_total", labels)] == 2


# ----------------------------------------------------------------- Spark = Polars


def spark_flags(spark: Any, judge: Expectations, batch: pa.Table, landed: list[bool]) -> Any:
    from pyspark.sql import functions as F

    df = spark.createDataFrame(batch.append_column("_cdc_landed", pa.array(landed, pa.bool_())))
    return judge.flag_spark(df, F.col("_cdc_landed")).orderBy("partition", "offset")


def local_flags(judge: Expectations, batch: pa.Table, landed: list[bool]) -> list[dict[str, bool]]:
    partitions, offsets = batch.column("partition").to_pylist(), batch.column("offset").to_pylist()
    coords = list(zip(partitions, offsets, strict=True))
    ranges = merge_ranges(
        (p, o, o + 1) for (p, o), done in zip(coords, landed, strict=True) if done
    )
    rows = judge.flags(batch, ranges).with_columns(
        pl.Series("_p", [p for p, _ in coords]), pl.Series("_o", [o for _, o in coords])
    )
    return list(rows.sort("_p", "_o").drop("_p", "_o").iter_rows(named=True))


def spark_parity(
    spark: Any, judge: Expectations, batch: pa.Table, landed: list[bool]
) -> list[dict[str, bool]]:
    from cdc.pipeline.expectations import FLAGS_COLUMN

    flagged = spark_flags(spark, judge, batch, landed)
    got = [row[FLAGS_COLUMN].asDict() for row in flagged.select(FLAGS_COLUMN).collect()]
    assert got == local_flags(judge, batch, landed)
    return got


@pytest.mark.integration
@pytest.mark.slow
def test_spark_gives_the_verdicts_polars_gives(spark: Any) -> None:
    from pyspark.sql import functions as F

    from cdc.pipeline.expectations import FLAGS_COLUMN

    specs = [
        {"name": f"r{i}", "action": "drop" if i % 2 else "warn", **c}
        for i, (c, _, _) in enumerate(CASES)
    ]
    judge = checks(*specs)
    batch = decoded(ROWS)
    got = spark_parity(spark, judge, batch, [False] * len(ROWS))
    # The verdicts themselves, not only their agreement (rows ordered by partition, offset).
    order = [3, 2, 0, 1]
    for i, (_, _, failing) in enumerate(CASES):
        assert [row[f"r{i}"] for row in got] == [j in failing for j in order]

    flagged = spark_flags(spark, judge, batch, [False] * len(ROWS))
    local_out, local_counts = judge.apply(batch, 4, {})
    marked = flagged.select("partition", "offset", "error_code", "error").collect()
    expected = {
        (p, o): (c, e)
        for p, o, c, e in zip(
            *(
                local_out.column(n).to_pylist()
                for n in ("partition", "offset", "error_code", "error")
            ),
            strict=True,
        )
    }
    assert {
        (r["partition"], r["offset"]): (r["error_code"], r["error"]) for r in marked
    } == expected
    counts = flagged.agg(F.count(F.lit(1)).alias("n"), *judge.count_columns()).first()
    assert judge.outcome_spark(flagged, counts, 4) == local_counts
    assert FLAGS_COLUMN not in flagged.drop(FLAGS_COLUMN).columns

    fail = checks({"name": "q", "action": "fail", **CASES[1][0]})
    flagged = spark_flags(spark, fail, batch, [False] * len(ROWS))
    counts = flagged.agg(*fail.count_columns()).first()
    with pytest.raises(ExpectationFailedError) as on_spark:
        fail.outcome_spark(flagged, counts, 4)
    with pytest.raises(ExpectationFailedError) as on_polars:
        fail.apply(batch, 4, {})
    assert str(on_spark.value) == str(on_polars.value)


@pytest.mark.integration
@pytest.mark.slow
def test_spark_skips_what_polars_skips_and_evaluates_sql_and_regex_alike(spark: Any) -> None:
    bad = rec(id=None)
    envelope = decoded(
        [(0, o, bad) for o in range(6)],
        envelope=True,
        ops=["c", "d", None, "u", "r", "c"],
        errors=[None, None, None, "decode_error", None, None],
    )
    after = checks({"name": "id_set", "not_null": "id"}, image="after")
    got = spark_parity(spark, after, envelope, [False] * 5 + [True])
    assert [row["id_set"] for row in got] == [True, False, False, False, True, False]

    sql = checks(*({"name": f"e{i}", "expr": e} for i, (e, _) in enumerate(EXPRESSIONS)))
    got = spark_parity(spark, sql, decoded(ROWS), [False] * len(ROWS))
    order = [3, 2, 0, 1]
    for i, (_, false_for) in enumerate(EXPRESSIONS):
        assert [row[f"e{i}"] for row in got] == [j in false_for for j in order], EXPRESSIONS[i]

    texts = ["١٢٣", "123", "123\n", "abc", "ÄBC", "a-b", None, "", "x\ny"]
    patterns = [r"\d+", "[0-9]+", r"(?i)äbc|abc", r"\w+", r"[a-z]-[a-z]", r"\p{L}+", ".*", "x.y"]
    regex = checks(
        *({"name": f"p{i}", "regex": {"column": "s", "pattern": p}} for i, p in enumerate(patterns))
    )
    batch = decoded([(0, o, rec(s=t)) for o, t in enumerate(texts)])
    got = spark_parity(spark, regex, batch, [False] * len(texts))
    assert [row["p0"] for row in got] == [False, False, True, True, True, True, False, True, True]
    assert [row["p2"] for row in got] == [True, True, True, False, False, True, False, True, True]
    assert [row["p7"] for row in got] == [True] * 6 + [False, True, True]


@pytest.mark.integration
@pytest.mark.slow
def test_spark_refuses_at_start_what_only_java_cannot_read(spark: Any) -> None:
    fits = checks(
        {"name": "e", "expr": "n > 0 AND s LIKE 'A%'"},
        {"name": "p", "regex": {"column": "s", "pattern": r"[A-Z]{2}\d?"}},
        {"name": "a", "allowed": {"column": "f", "values": [1, 2.5]}},
    )
    fits.check_spark(spark)  # no error
    named = checks({"name": "code", "regex": {"column": "s", "pattern": "(?P<c>[A-Z]{2})"}})
    with pytest.raises(ConfigError) as caught:  # Rust reads (?P<name>...), Java does not
        named.check_spark(spark)
    assert str(caught.value).startswith(
        "pipeline orders: expectation code: Java's regex engine refuses '(?P<c>[A-Z]{2})': "
    )
    polars_only = checks({"name": "fn", "expr": "ENDS_WITH(s, 'B')"})  # Spark: endswith
    with pytest.raises(ConfigError) as caught:
        polars_only.check_spark(spark)
    assert str(caught.value).startswith("pipeline orders: expectation fn: Spark refuses it: ")


def test_cdc_run_refuses_a_rule_in_one_line_before_spark_or_the_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cdc.cli import main

    common = [
        "--config-dir",
        str(REPO_ROOT / "config"),
        "--set",
        f"lake.root={tmp_path / 'lake'}",
        "--set",
        f"checkpoints.root={tmp_path / 'checkpoints'}",
        "--set",
        "kafka.bootstrap_servers=127.0.0.1:9",  # nothing listens: the rules are refused first
    ]
    bad = ["--set", "pipelines.orders.expectations=[{name: amount_ok, not_null: amout}]"]
    assert main(["run", "--available-now", "--pipeline", "orders", *common, *bad]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "cdc: error: pipeline orders: expectation amount_ok: no column 'amout' in the record"
        f" (columns: {ORDER_COLUMNS})\n"
    )
    unparsable = ["--set", "pipelines.orders.expectations=[{name: a, expr: 'amount >'}]"]
    assert main(["status", *common, *unparsable]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdc: error: invalid configuration (") and err.count("\n") == 1
    assert err.endswith(
        "pipelines.orders.expectations.0: Value error, expectation a: expr 'amount >' is not a"
        " SQL expression: unable to parse 'amount >' as Expr\n"
    )


# ------------------------------------------------------------- the delta-rs writer


def order_batch(settings: Settings, offsets: list[int], **changes: dict[str, Any]) -> pa.Table:
    """Decoded ``events.orders`` records as the Kafka source hands them to the writer."""
    from cdc.pipeline.kafka_source import DecoderSpec, topic_decoder

    schema = topic_decoder(DecoderSpec.from_settings(settings), "events.orders").arrow_schema
    at = datetime(2026, 1, 5, 8, tzinfo=UTC)
    rows = []
    for offset in offsets:
        order = f"o{offset}"
        value = {
            "event_id": f"e{offset}",
            "order_id": order,
            "account_id": "a1",
            "contact_id": "c1",
            "status": "created",
            "amount": Decimal("10.00"),
            "currency": "EUR",
            "ordered_at": at,
            "event_ts": at,
            **changes.get(order, {}),
        }
        rows.append(
            {
                "topic": "events.orders",
                "partition": 0,
                "offset": offset,
                "timestamp": at,
                "key_raw": f"k{offset}".encode(),
                "value_raw": f"v{offset}".encode(),
                "key_schema_id": 7,
                "value_schema_id": 8,
                "key": {"order_id": order},
                "value": value,
            }
        )
    return pa.Table.from_pylist(rows, schema=schema)


def test_the_delta_rs_writer_drops_counts_once_and_fails_before_writing(tmp_path: Path) -> None:
    from cdc.config.lake import table_paths
    from cdc.pipeline.batch_local import LocalBatchWriter
    from tests.support.tables import read_table

    settings = load_settings(  # config/local.yaml: orders has one rule of each action
        "local",
        overrides=[f"lake.root={tmp_path / 'lake'}", f"checkpoints.root={tmp_path / 'cp'}"],
        config_dir=REPO_ROOT / "config",
    )
    checkpoint = settings.checkpoint_path("orders")
    crashed: list[str] = []

    def crash_once(stage: str, batch_id: int) -> None:
        if stage == "mid-commit" and not crashed:  # after bronze + quarantine, before silver
            crashed.append(stage)
            raise RuntimeError("killed")

    writer = LocalBatchWriter(
        "orders", settings.pipeline("orders"), settings, checkpoint, crash_once
    )
    batch = order_batch(
        settings, [0, 1, 2], o0={"contact_id": None}, o1={"amount": Decimal("-5.00")}
    )
    now = datetime.now(UTC)
    with pytest.raises(RuntimeError):
        writer.process(batch, 0, now)
    stats = writer.process(batch, 0, now)  # Spark runs the batch again
    assert stats.skipped_tables == ["bronze", "quarantine"]
    counted = {"contact_known": {"warn": 1}, "amount_positive": {"drop": 1}}
    assert stats.expectation_failures == counted
    assert read_counts(checkpoint) == counted  # once, though the batch ran twice
    paths = table_paths(settings, settings.pipeline("orders"))
    quarantine = read_table(paths["quarantine"])
    assert quarantine.select("offset", "error_code", "error", "value_raw").rows() == [
        (1, "expectation", "expectation amount_positive failed: range amount >= 0.01", b"v1")
    ]
    assert sorted(read_table(paths["bronze"])["offset"]) == [0, 2]
    assert sorted(read_table(paths["silver"])["order_id"]) == ["o0", "o2"]

    def versions() -> dict[str, int]:
        return {role: DeltaRsStore().info(uri).version for role, uri in paths.items()}  # type: ignore[union-attr]

    before = versions()
    late = {"ordered_at": datetime(2026, 1, 6, tzinfo=UTC)}
    with pytest.raises(ExpectationFailedError, match="expectation ordered_before_event"):
        writer.process(order_batch(settings, [3, 4], o4=late), 1, now)
    assert versions() == before  # nothing of batch 1 was committed
    assert read_counts(checkpoint) == counted
