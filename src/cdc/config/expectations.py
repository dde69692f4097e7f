"""Data-quality expectations as settings: the rules a pipeline lists under ``expectations``.

The models (:class:`ExpectationSettings` and its checks) are validated when the config loads:
a rule that is not one check, a name that is not a name, a regex Polars cannot compile or an
``expr`` that is not SQL is refused then. How the rules judge records, on Polars and on Spark,
is :mod:`cdc.pipeline.expectations`.

Polars is imported inside the two validators that need it: every CLI command loads the
config, and most never check a rule.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "ACTIONS",
    "KINDS",
    "AllowedCheck",
    "ExpectationSettings",
    "RangeCheck",
    "RegexCheck",
    "anchored",
    "first_line",
    "parse_expr",
    "unique_names",
]

ACTIONS = ("warn", "drop", "fail")
KINDS = ("not_null", "range", "regex", "allowed", "expr")

_NAME = re.compile(r"[a-z0-9_]{1,64}")


# ------------------------------------------------------------------------------ settings


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class RangeCheck(_Model):
    """Inclusive bounds for a numeric column; either may be left out."""

    column: str = Field(min_length=1)
    """A numeric column."""
    min: Decimal | None = None
    """Smallest allowed value (inclusive)."""
    max: Decimal | None = None
    """Largest allowed value (inclusive)."""

    @field_validator("min", "max", mode="before")
    @classmethod
    def _bound(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
            raise ValueError(f"bound {value!r} is not a number")
        try:
            bound = Decimal(str(value))  # str() keeps a YAML float's short spelling
        except InvalidOperation:
            raise ValueError(f"bound {value!r} is not a number") from None
        if not bound.is_finite():
            raise ValueError(f"bound {value!r} is not a finite number")
        return Decimal(f"{bound:f}")  # no exponent: 1E+2 would be a negative scale on Spark

    @model_validator(mode="after")
    def _bounds(self) -> RangeCheck:
        if self.min is None and self.max is None:
            raise ValueError("a range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} is greater than max {self.max}")
        return self


class RegexCheck(_Model):
    """A string column whose whole value must match ``pattern``."""

    column: str = Field(min_length=1)
    """A string column."""
    pattern: str = Field(min_length=1)
    """A regular expression the whole value must match (the syntax Polars and Spark share)."""


class AllowedCheck(_Model):
    """A column whose value must be one of ``values``."""

    column: str = Field(min_length=1)
    """The column checked."""
    values: tuple[str | int | float | bool, ...] = Field(min_length=1)
    """The values allowed."""


class ExpectationSettings(_Model):
    """One data-quality rule of a pipeline: one check and what a failure does.

    Set exactly one of ``not_null``, ``range``, ``regex``, ``allowed`` and ``expr``.
    """

    name: str
    """Unique in the pipeline: lowercase letters, digits and ``_`` (it labels metrics)."""
    not_null: str | None = None
    """A column that must not be null."""
    range: RangeCheck | None = None
    """A numeric column within bounds."""
    regex: RegexCheck | None = None
    """A string column matching a pattern."""
    allowed: AllowedCheck | None = None
    """A column holding one of a set of values."""
    expr: str | None = None
    """A SQL boolean expression over the record's columns; the record fails when it is
    false."""
    action: Literal["warn", "drop", "fail"] = "warn"
    """``warn``: land the record, count the failure; ``drop``: quarantine it; ``fail``: stop
    the query before anything of the batch is written."""

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"expectation name {name[:80]!r} is not a name: lowercase letters, digits and"
                " _, at most 64 characters"
            )
        return name

    @model_validator(mode="after")
    def _one_check(self) -> ExpectationSettings:
        chosen = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(chosen) != 1:
            found = f" (found: {', '.join(chosen)})" if chosen else ""
            raise ValueError(
                f"expectation {self.name}: set exactly one of {', '.join(KINDS)}{found}"
            )
        if self.regex is not None:
            _compile_regex(self.name, self.regex.pattern)
        if self.expr is not None:
            parse_expr(self.name, self.expr)
        return self

    @property
    def kind(self) -> str:
        """Which check: ``not_null``, ``range``, ``regex``, ``allowed`` or ``expr``."""
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def column(self) -> str | None:
        """The column a single-column check reads (None for ``expr``)."""
        for check in (self.range, self.regex, self.allowed):
            if check is not None:
                return check.column
        return self.not_null

    def describe(self) -> str:
        """The check in words, e.g. ``range amount >= 0`` (error texts, status)."""
        if self.not_null is not None:
            return f"not_null {self.not_null}"
        if self.range is not None:
            r = self.range
            if r.min is not None and r.max is not None:
                return f"range {_plain(r.min)} <= {r.column} <= {_plain(r.max)}"
            if r.min is not None:
                return f"range {r.column} >= {_plain(r.min)}"
            return f"range {r.column} <= {_plain(r.max)}"
        if self.regex is not None:
            return f"regex {self.regex.column} matches '{self.regex.pattern}'"
        if self.allowed is not None:
            values = ", ".join(_literal(v) for v in self.allowed.values)
            return f"allowed {self.allowed.column} in ({values})"
        return f"expr {self.expr}"


def unique_names(rules: tuple[ExpectationSettings, ...]) -> tuple[ExpectationSettings, ...]:
    """Pydantic validator of a pipeline's list: each name once."""
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"expectation {rule.name} is defined twice")
        seen.add(rule.name)
    return rules


def _plain(value: Decimal | None) -> str:
    return f"{value:f}"  # plain notation: 0.00000001, not 1E-8


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def anchored(pattern: str) -> str:
    r"""The pattern matched against the whole value: ``\A`` and ``\z`` mean the same in Rust
    (Polars) and Java (Spark), where ``^``/``$`` differ on a trailing newline."""
    return rf"\A(?:{pattern})\z"


def _compile_regex(name: str, pattern: str) -> None:
    """Refuse a pattern Polars' engine (Rust ``regex``) cannot compile, in one line."""
    import polars as pl

    try:
        pl.Series("p", [""], pl.String).str.contains(anchored(pattern))
    except pl.exceptions.PolarsError as exc:
        reason = first_line(str(exc).rsplit("error:", 1)[-1])  # the parser's own words
        raise ValueError(
            f"expectation {name}: regex {pattern!r} does not compile: {reason}"
        ) from None


def parse_expr(name: str, sql: str) -> pl.Expr:
    import polars as pl

    try:
        return pl.sql_expr(sql)
    except pl.exceptions.PolarsError as exc:
        raise ValueError(
            f"expectation {name}: expr {sql!r} is not a SQL expression: {first_line(str(exc))}"
        ) from None


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())
