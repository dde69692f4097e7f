"""Data-quality expectations on a pipeline's records, judged where a batch is split.

A pipeline lists ``expectations`` in its config
(:class:`~cdc.config.expectations.ExpectationSettings`): each is one
check over the record's business columns (the Debezium ``after`` image of an scd2 envelope
pipeline, the value's fields otherwise) and an action:

* ``warn``: the record lands as usual; the failure is counted;
* ``drop``: the record goes to quarantine (``error_code`` ``expectation``, ``error`` naming
  the rule, raw bytes kept) and feeds neither bronze nor silver;
* ``fail``: :class:`~cdc.errors.ExpectationFailedError` stops the query before anything of
  the batch is written.

Semantics, the same on both writers (Polars on delta-rs, Spark columns on delta-spark):
a null value passes ``range``, ``regex`` and ``allowed`` (only ``not_null`` fails nulls); an
``expr`` fails only when it is false (null passes, as a SQL ``CHECK`` does); deletes and
tombstones (no ``after`` image, no value) are not checked; records a replay re-reads that
bronze or quarantine already hold were judged when they landed and are not judged again.

Counts of failures per rule are :class:`~cdc.pipeline.batch.BatchStats` (metrics) and, summed over
every batch that landed, a small file in the pipeline's checkpoint (:data:`COUNTS_FILE`,
written after the batch's bronze and quarantine commits with the batch id, so a batch run
again after a crash is not counted twice; a replay's new checkpoint carries the totals of the
one it replaced) that ``cdc status`` reads.

PySpark is imported inside the functions that render the rules for Spark: the delta-rs
writer and ``cdc status`` never start it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from cdc.config.expectations import ExpectationSettings, anchored, first_line, parse_expr
from cdc.config.settings import PipelineSettings, Settings
from cdc.core.ranges import Ranges, landed_mask
from cdc.errors import ConfigError, ExpectationFailedError
from cdc.pipeline.checkpoint import read_start_file, write_json
from cdc.pipeline.kafka_source import DecoderSpec, topic_decoder

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, Row, SparkSession

__all__ = [
    "COUNTS_FILE",
    "ERROR_CODE",
    "FLAGS_COLUMN",
    "Counts",
    "Expectations",
    "RuleTotal",
    "expectations_for",
    "read_counts",
    "record_counts",
    "rule_totals",
]

ERROR_CODE = "expectation"
"""The quarantine ``error_code`` of a record a ``drop`` expectation sent there."""
FLAGS_COLUMN = "_cdc_expectations"
"""Spark batch column added by :meth:`Expectations.flag_spark`: one boolean per rule."""
COUNTS_FILE = "cdc-expectations.json"
"""In a pipeline's checkpoint: ``{"batch": id, "counts": {rule: {action: records}}}``."""

Counts = dict[str, dict[str, int]]
"""Failures per rule and action: ``{rule: {action: records}}``."""

_ROW, _CHECKED, _IMAGE = "_cdc_row", "_cdc_checked", "_cdc_image"
_RESERVED = "_cdc_"


# ---------------------------------------------------------------------------- evaluation


def _numeric(dtype: pa.DataType) -> bool:

    return bool(pa.types.is_integer(dtype) or pa.types.is_floating(dtype)) or bool(
        pa.types.is_decimal(dtype)
    )


def _type_fits(value: Any, dtype: pa.DataType) -> bool:
    """Whether an ``allowed`` value can equal values of a column of ``dtype``."""

    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return isinstance(value, str)
    if pa.types.is_boolean(dtype):
        return isinstance(value, bool)
    if pa.types.is_integer(dtype):
        return isinstance(value, int) and not isinstance(value, bool)
    if _numeric(dtype):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return False


@dataclass(frozen=True)
class _Rule:
    """One expectation bound to its column's type."""

    settings: ExpectationSettings
    dtype: pa.DataType | None
    """The column's Arrow type (None for ``expr``)."""

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def action(self) -> str:
        return self.settings.action

    def error(self) -> str:
        return f"expectation {self.name} failed: {self.settings.describe()}"

    def _bound(self, value: Decimal) -> Any:

        assert self.dtype is not None
        return float(value) if pa.types.is_floating(self.dtype) else value

    def polars(self) -> pl.Expr:
        """True where a record fails the rule (never null)."""

        s = self.settings
        if s.expr is not None:
            return pl.sql_expr(s.expr).fill_null(True).not_()
        column = pl.col(s.column or "")
        if s.not_null is not None:
            return column.is_null()
        if s.range is not None:
            outside = pl.lit(False)
            if s.range.min is not None:
                outside = outside | (column < pl.lit(self._bound(s.range.min)))
            if s.range.max is not None:
                outside = outside | (column > pl.lit(self._bound(s.range.max)))
            assert self.dtype is not None
            if pa.types.is_floating(self.dtype):
                outside = outside | column.is_nan()
            return (column.is_not_null() & outside).fill_null(False)
        if s.regex is not None:
            matches = column.str.contains(anchored(s.regex.pattern))
            return (column.is_not_null() & matches.not_()).fill_null(False)
        assert s.allowed is not None
        assert self.dtype is not None
        like_column = pl.from_arrow(pa.array([], self.dtype))
        assert isinstance(like_column, pl.Series)
        allowed = pl.Series(list(s.allowed.values), dtype=like_column.dtype, strict=False)
        return (column.is_not_null() & column.is_in(allowed.implode()).not_()).fill_null(False)

    def spark(self) -> Column:
        """True where a record fails the rule (never null), as a Spark column."""
        from pyspark.sql import functions as F

        s = self.settings
        if s.expr is not None:
            return ~F.coalesce(F.expr(s.expr), F.lit(True))
        column = F.col(f"`{s.column}`")
        if s.not_null is not None:
            return column.isNull()
        if s.range is not None:
            outside = F.lit(False)
            if s.range.min is not None:
                outside = outside | (column < F.lit(self._bound(s.range.min)))
            if s.range.max is not None:
                outside = outside | (column > F.lit(self._bound(s.range.max)))
            assert self.dtype is not None
            if pa.types.is_floating(self.dtype):
                outside = outside | F.isnan(column)
            return F.coalesce(column.isNotNull() & outside, F.lit(False))
        if s.regex is not None:
            # (?U): \d, \w, \s and case folding are Unicode-aware, as in Rust's engine.
            matches = column.rlike("(?U)" + anchored(s.regex.pattern))
            return F.coalesce(column.isNotNull() & ~matches, F.lit(False))
        assert s.allowed is not None
        return F.coalesce(column.isNotNull() & ~column.isin(list(s.allowed.values)), F.lit(False))


class Expectations:
    """A pipeline's expectations, checked against its record's columns.

    Build it with :func:`expectations_for` (at pipeline start); :meth:`apply` judges a decoded
    batch on Arrow/Polars (delta-rs), :meth:`flag_spark` and :meth:`outcome_spark` on Spark
    (delta-spark). Both mark ``drop`` failures as quarantine rows and raise on ``fail``.
    """

    def __init__(
        self,
        pipeline: str,
        rules: Sequence[ExpectationSettings],
        image: Literal["after", "value"],
        columns: pa.Schema,
    ) -> None:
        """Bind the rules to the record's columns.

        Args:
            pipeline: the pipeline's name (error messages).
            rules: its expectations, in config order.
            image: where the record's columns are: ``after`` (inside the Debezium envelope)
                or ``value``.
            columns: the record's columns (the registry's reader schema).

        Raises:
            ConfigError: a rule names a column the record does not have, of a type the
                check cannot read, or an ``expr`` that does not evaluate to a boolean.
        """
        self.pipeline = pipeline
        self.image = image
        self.columns = columns
        self.rules = tuple(self._bind(rule) for rule in rules)
        self._check_polars()

    def _fail(self, rule: ExpectationSettings, problem: str) -> ConfigError:
        return ConfigError(f"pipeline {self.pipeline}: expectation {rule.name}: {problem}")

    def _bind(self, rule: ExpectationSettings) -> _Rule:
        names = self.columns.names
        if rule.expr is not None:
            unknown = sorted(set(parse_expr(rule.name, rule.expr).meta.root_names()) - set(names))
            if unknown:
                raise self._fail(
                    rule,
                    f"expr names {', '.join(unknown)}, not a column of the record"
                    f" (columns: {', '.join(names)})",
                )
            return _Rule(rule, None)
        column = rule.column
        assert column is not None
        if column not in names:
            raise self._fail(
                rule, f"no column {column!r} in the record (columns: {', '.join(names)})"
            )
        dtype = self.columns.field(column).type
        if rule.range is not None and not _numeric(dtype):
            raise self._fail(rule, f"range needs a numeric column; {column} is {dtype}")
        if rule.regex is not None and not _type_fits("", dtype):
            raise self._fail(rule, f"regex needs a string column; {column} is {dtype}")
        if rule.allowed is not None:
            wrong = [v for v in rule.allowed.values if not _type_fits(v, dtype)]
            if wrong:
                raise self._fail(
                    rule, f"allowed value {wrong[0]!r} cannot be a value of {column} ({dtype})"
                )
        return _Rule(rule, dtype)

    def _check_polars(self) -> None:
        """Evaluate every rule on no rows: types that do not fit fail here, not mid-stream."""

        empty = pl.from_arrow(self.columns.empty_table())
        assert isinstance(empty, pl.DataFrame)
        for rule in self.rules:
            sql = rule.settings.expr
            try:
                if sql is not None:
                    dtype = empty.select(pl.sql_expr(sql).alias("r")).schema["r"]
                    if dtype != pl.Boolean:
                        raise self._fail(rule.settings, f"expr is {dtype}, not a boolean")
                empty.select(rule.polars())
            except pl.exceptions.PolarsError as exc:
                raise self._fail(rule.settings, first_line(str(exc))) from None

    def check_spark(self, session: SparkSession) -> None:
        """Build every rule as a Spark column over the record's columns (no job runs).

        Raises:
            ConfigError: Spark cannot parse or type an ``expr``, or Java's regex engine
                refuses a pattern.
        """
        from pyspark.sql.pandas.types import from_arrow_schema

        empty = session.createDataFrame([], from_arrow_schema(self.columns))
        jvm = session.sparkContext._jvm
        for rule in self.rules:
            regex = rule.settings.regex
            try:
                if regex is not None:
                    assert jvm is not None
                    jvm.java.util.regex.Pattern.compile("(?U)" + anchored(regex.pattern))
                field = empty.select(rule.spark().alias("r")).schema["r"]
            except Exception as exc:  # py4j and Spark's analysis raise several types
                text = first_line(getattr(exc, "desc", None) or str(exc))
                what = (
                    f"Java's regex engine refuses {regex.pattern!r}"
                    if regex
                    else "Spark refuses it"
                )
                raise self._fail(rule.settings, f"{what}: {text}") from None
            if field.dataType.typeName() != "boolean":
                raise self._fail(rule.settings, f"expr is {field.dataType.simpleString()} on Spark")

    @property
    def counted(self) -> tuple[_Rule, ...]:
        """The rules whose failures are counted (``warn`` and ``drop``)."""
        return tuple(rule for rule in self.rules if rule.action != "fail")

    def _counts(self, found: Mapping[str, int]) -> Counts:
        return {rule.name: {rule.action: int(found.get(rule.name, 0))} for rule in self.counted}

    # -------------------------------------------------------------------------- Polars

    def flags(self, batch: pa.Table, landed: Ranges | None = None) -> pl.DataFrame:
        """Per row of a decoded batch and per rule (a column named after it): whether the row
        fails the rule. Rows that are not checked (invalid, deletes, tombstones, landed)
        fail nothing.
        """

        frame = pl.from_arrow(batch.select(["value", "error_code"]))
        assert isinstance(frame, pl.DataFrame)
        value = pl.col("value")
        present = pl.col("error_code").is_null() & value.is_not_null()
        record = value
        if self.image == "after":
            record = value.struct.field("after")
            present = present & record.is_not_null() & (value.struct.field("op") != "d")
        checked = present.fill_null(False)
        if landed:
            already = landed_mask(
                batch.column("partition").to_pylist(), batch.column("offset").to_pylist(), landed
            )
            checked = checked & ~pl.Series(already, dtype=pl.Boolean)
        rows = frame.select(record.struct.unnest(), checked.alias(_CHECKED))
        return rows.select(
            (pl.col(_CHECKED) & rule.polars()).alias(rule.name) for rule in self.rules
        )

    def apply(
        self, batch: pa.Table, batch_id: int, landed: Ranges | None = None
    ) -> tuple[pa.Table, Counts]:
        """Judge a decoded batch (delta-rs): mark ``drop`` failures for quarantine.

        Args:
            batch: the decoded batch (:mod:`cdc.ingest.contracts` schema).
            batch_id: the micro-batch (error message).
            landed: offsets bronze or quarantine already hold (not judged again).

        Returns:
            The batch with ``error_code``/``error`` set on rows a ``drop`` rule failed, and the
            failures per ``warn``/``drop`` rule.

        Raises:
            ExpectationFailedError: a ``fail`` rule failed; nothing may be written.
        """

        if batch.num_rows == 0:
            return batch, self._counts({})
        flags = self.flags(batch, landed)
        totals = {name: int(n) for name, n in flags.sum().row(0, named=True).items()}
        for rule in self.rules:
            if rule.action == "fail" and totals[rule.name]:
                hit = flags.get_column(rule.name).arg_true()
                first = min(
                    zip(
                        batch.column("partition").take(hit.to_arrow()).to_pylist(),
                        batch.column("offset").take(hit.to_arrow()).to_pylist(),
                        strict=True,
                    )
                )
                raise self._failed(rule, totals[rule.name], batch_id, first)
        drops = [rule for rule in self.rules if rule.action == "drop"]
        if not any(totals[rule.name] for rule in drops):
            return batch, self._counts(totals)
        marks = flags.select(
            pl.any_horizontal(rule.name for rule in drops).alias("drop"),
            pl.concat_str(
                [pl.when(pl.col(rule.name)).then(pl.lit(rule.error())) for rule in drops],
                separator="; ",
                ignore_nulls=True,
            ).alias("error"),
        )
        drop = pa.array(marks.get_column("drop").to_list(), pa.bool_())
        for name, new in (
            ("error_code", pa.array([ERROR_CODE] * batch.num_rows, pa.string())),
            ("error", pa.array(marks.get_column("error").to_list(), pa.string())),
        ):
            at = batch.schema.get_field_index(name)
            old = batch.column(at).combine_chunks()
            batch = batch.set_column(
                at, batch.schema.field(at), pc.if_else(drop, new.cast(old.type), old)
            )
        return batch, self._counts(totals)

    def _failed(
        self, rule: _Rule, count: int, batch_id: int, first: tuple[int, int]
    ) -> ExpectationFailedError:
        partition, offset = first
        return ExpectationFailedError(
            f"pipeline {self.pipeline}: expectation {rule.name} ({rule.settings.describe()})"
            f" failed for {count} record(s) of batch {batch_id}, the first at partition@offset"
            f" {partition}@{offset}; nothing of the batch was committed"
        )

    # --------------------------------------------------------------------------- Spark

    def flag_spark(self, batch: DataFrame, landed: Column) -> DataFrame:
        """Judge a decoded Spark batch (delta-spark): add :data:`FLAGS_COLUMN` (a struct of
        one boolean per rule) and mark ``drop`` failures for quarantine.

        Args:
            batch: the decoded batch (:mod:`cdc.ingest.contracts` schema, plus any columns).
            landed: true where bronze or quarantine already hold the row (not judged again).

        Returns:
            The batch with :data:`FLAGS_COLUMN`, and ``error_code``/``error`` set on rows a
            ``drop`` rule failed. Drop :data:`FLAGS_COLUMN` before writing valid rows.
        """
        from pyspark.sql import functions as F

        value = F.col("value")
        present = F.col("error_code").isNull() & value.isNotNull()
        record = value
        if self.image == "after":
            record = value["after"]
            present = present & record.isNotNull() & (value["op"] != F.lit("d"))
        checked = F.coalesce(present, F.lit(False)) & ~landed
        columns = [F.col(f"`{name}`") for name in batch.columns]
        # The record's columns side by side with the packed row, so rules name them as they
        # are named in the record (a record column may share a name with a Kafka column).
        unpacked = batch.select(
            F.struct(*columns).alias(_ROW), checked.alias(_CHECKED), record.alias(_IMAGE)
        ).select(_ROW, _CHECKED, f"{_IMAGE}.*")
        flags = F.struct(
            *[(F.col(_CHECKED) & rule.spark()).alias(rule.name) for rule in self.rules]
        )
        flagged = unpacked.select(f"{_ROW}.*", flags.alias(FLAGS_COLUMN))
        drops = [rule for rule in self.rules if rule.action == "drop"]
        if not drops:
            return flagged
        failed = [F.col(FLAGS_COLUMN)[rule.name] for rule in drops]
        drop = failed[0]
        for flag in failed[1:]:
            drop = drop | flag
        error = F.concat_ws(
            "; ",
            *[F.when(flag, F.lit(rule.error())) for flag, rule in zip(failed, drops, strict=True)],
        )
        return flagged.withColumns(
            {
                "error_code": F.when(drop, F.lit(ERROR_CODE)).otherwise(F.col("error_code")),
                "error": F.when(drop, error).otherwise(F.col("error")),
            }
        )

    def count_columns(self) -> list[Column]:
        """Aggregates of a :meth:`flag_spark` batch: failures per rule (:meth:`outcome_spark`)."""
        from pyspark.sql import functions as F

        return [
            F.count_if(F.col(FLAGS_COLUMN)[rule.name]).alias(f"{FLAGS_COLUMN}_{i}")
            for i, rule in enumerate(self.rules)
        ]

    def outcome_spark(self, flagged: DataFrame, counts: Row, batch_id: int) -> Counts:
        """The failures per rule from the :meth:`count_columns` aggregates.

        Raises:
            ExpectationFailedError: a ``fail`` rule failed (one more job finds the first
                record); nothing may be written.
        """
        from pyspark.sql import functions as F

        totals = {
            rule.name: int(counts[f"{FLAGS_COLUMN}_{i}"]) for i, rule in enumerate(self.rules)
        }
        for rule in self.rules:
            if rule.action == "fail" and totals[rule.name]:
                first = (
                    flagged.where(F.col(FLAGS_COLUMN)[rule.name])
                    .select("partition", "offset")
                    .orderBy("partition", "offset")
                    .first()
                )
                assert first is not None
                where = (int(first["partition"]), int(first["offset"]))
                raise self._failed(rule, totals[rule.name], batch_id, where)
        return self._counts(totals)


def expectations_for(
    name: str, pipeline: PipelineSettings, settings: Settings
) -> Expectations | None:
    """A pipeline's expectations bound to its topic's reader schema (None when it has none).

    Raises:
        ConfigError: a rule does not fit the record (see :class:`Expectations`), or the
            topic has no contract.
    """
    if not pipeline.expectations:
        return None

    value = topic_decoder(
        DecoderSpec.from_settings(settings, pipeline), pipeline.topic
    ).arrow_schema
    value_type = value.field("value").type
    image: Literal["after", "value"] = "value"
    if pipeline.kind == "scd2" and pipeline.source_format == "envelope":
        image = "after"
        index = value_type.get_field_index("after")
        if index < 0:
            raise ConfigError(
                f"pipeline {name}: expectations read the envelope's 'after' record, and the"
                f" value of {pipeline.topic} has none"
            )
        value_type = value_type.field(index).type
    columns = pa.schema([value_type.field(i) for i in range(value_type.num_fields)])
    reserved = [c for c in columns.names if c.startswith(_RESERVED)]
    if reserved:
        raise ConfigError(
            f"pipeline {name}: expectations cannot read a record with a column named"
            f" {reserved[0]!r} ({_RESERVED}* names are the service's own)"
        )
    return Expectations(name, pipeline.expectations, image, columns)


# ------------------------------------------------------------------------------ totals


@dataclass(frozen=True)
class RuleTotal:
    """Records that failed one rule, over every batch that landed (``cdc status``)."""

    rule: str
    action: str
    check: str
    """The check in words (empty for a rule no longer configured)."""
    failed: int | None
    """None for a ``fail`` rule: it stops the query, nothing of its batch lands."""


def _read_state(checkpoint: Path) -> dict[str, Any] | None:
    path = checkpoint / COUNTS_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the expectation counts {path}: {exc}") from None
    return state


def _inherited(checkpoint: Path) -> Counts:
    """The totals of the checkpoints a replay replaced, newest first (their files hold sums)."""

    seen = {checkpoint.name}
    current = checkpoint
    while True:
        start = read_start_file(current) or {}
        previous = start.get("replayed_from")
        if not previous or previous in seen:
            return {}
        seen.add(previous)
        current = checkpoint.parent / str(previous)
        state = _read_state(current)
        if state is not None:
            return _copy(state.get("counts") or {})


def _copy(counts: Mapping[str, Mapping[str, int]]) -> Counts:
    return {rule: {action: int(n) for action, n in per.items()} for rule, per in counts.items()}


def read_counts(checkpoint: str | Path) -> Counts:
    """Failures per rule and action over every batch the pipeline landed (replays included)."""
    root = Path(checkpoint)
    state = _read_state(root)
    if state is None:
        return _inherited(root)
    return _copy(state.get("counts") or {})


def record_counts(checkpoint: str | Path, batch_id: int, counts: Counts) -> None:
    """Add one batch's failures to the checkpoint's totals, once per batch id.

    Call it after the batch's bronze and quarantine commits: a batch Spark runs again (the
    process died before its commit) was either counted already (its id is not above the
    recorded one) or not at all.
    """

    if not any(n for per in counts.values() for n in per.values()):
        return
    root = Path(checkpoint)
    state = _read_state(root)
    if state is not None and int(state.get("batch", -1)) >= batch_id:
        return
    totals = _copy(state.get("counts") or {}) if state is not None else _inherited(root)
    for rule, per in counts.items():
        for action, n in per.items():
            totals.setdefault(rule, {})[action] = totals.get(rule, {}).get(action, 0) + n
    write_json(root / COUNTS_FILE, {"batch": batch_id, "counts": totals})


def rule_totals(rules: Sequence[ExpectationSettings], counts: Counts) -> list[RuleTotal]:
    """Per configured rule (then per rule only the counts still know), its failures."""
    out = [
        RuleTotal(
            rule.name,
            rule.action,
            rule.describe(),
            None if rule.action == "fail" else counts.get(rule.name, {}).get(rule.action, 0),
        )
        for rule in rules
    ]
    configured = {(rule.name, rule.action) for rule in rules}
    for name in sorted(counts):
        for action, n in sorted(counts[name].items()):
            if (name, action) not in configured:
                out.append(RuleTotal(name, action, "", n))
    return out
