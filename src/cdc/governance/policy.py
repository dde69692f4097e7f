"""The access policy of one environment: ``config/governance/<env>.yaml``, typed and frozen.

A policy names **tags** (classifications of columns; the contracts put them on fields), and
**roles**: the tables each reads (a whole layer, ``silver``, or one table,
``gold.customer_360``), what it sees of a tagged column (``clear``, a mask, or nothing) and,
optionally, which **rows** (one row scope per audience: ``analyst_emea`` reads the rows whose
``region`` is ``EMEA``). **Targets** name the objects each enforcement point uses (PostgreSQL
role prefix and schemas, Lake Formation databases and principals, Snowflake roles).

Validation here is of the file alone; :func:`cdc.governance.access.resolve_access` checks it
against the tables the service writes (unknown tables, a row column a table lacks, a tag the
contracts use that the policy does not define).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdc.config.settings import _format_validation_error
from cdc.errors import ConfigError

__all__ = [
    "LAYERS",
    "TREATMENTS",
    "DuckDbTarget",
    "LakeFormationTarget",
    "Policy",
    "PostgresTarget",
    "Role",
    "RowScopes",
    "SnowflakeTarget",
    "Targets",
    "Treatment",
    "load_policy",
    "strictest",
]

LAYERS = ("bronze", "quarantine", "silver", "gold")
"""The lake's layers, in data-path order."""

Treatment = Literal["clear", "partial", "hash", "null", "deny"]
TREATMENTS: tuple[Treatment, ...] = ("deny", "null", "hash", "partial", "clear")
"""What a role sees of a tagged column, strictest first: ``deny`` (the column is not
readable at all), ``null`` (readable, always null), ``hash`` (SHA-256 of the value, hex:
joinable, not readable), ``partial`` (first character and an e-mail's domain:
``j***@example.com``), ``clear``."""

_NAME = r"^[a-z][a-z0-9_]{0,39}$"
"""Role, scope and tag names: they become parts of role, file and LF-tag names."""


def _by_layer(field: str, names: dict[str, str], pattern: str, what: str) -> dict[str, str]:
    """Check a ``layer -> name`` map: known layers, names of the target's syntax."""
    for layer, name in names.items():
        if layer not in LAYERS:
            raise ValueError(f"{field}: {layer!r} is not a layer ({', '.join(LAYERS)})")
        if not re.fullmatch(pattern, name):
            raise ValueError(f"{field}.{layer}: {name!r} is not a {what}")
    return names


def strictest(treatments: list[Treatment]) -> Treatment:
    """The strictest of several treatments (a column with two tags gets the stricter rule)."""
    return min(treatments, key=TREATMENTS.index) if treatments else "clear"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RowScopes(_Model):
    """Which rows a role's audiences read: one audience per scope, each the rows whose
    ``column`` equals the scope's value."""

    column: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    """The column compared (it must be a string column of every filtered table)."""
    scopes: dict[str, str] = Field(min_length=1)
    """Scope name -> the value its rows have (``emea: EMEA``)."""
    unfiltered: tuple[str, ...] = ()
    """Tables of the role's reads without ``column`` that every audience reads whole (a
    global aggregate); each must be listed, so that no table escapes the filter silently."""

    @field_validator("scopes")
    @classmethod
    def _check_scopes(cls, scopes: dict[str, str]) -> dict[str, str]:
        for name, value in scopes.items():
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"scope name {name!r}: lower-case letters, digits and _")
            if not value.strip() or "'" in value or "\\" in value:
                raise ValueError(f"scope {name}: value {value!r} is empty or has a quote")
        return scopes


class Role(_Model):
    """One role: what it reads, what it sees of tagged columns, which rows."""

    description: str = Field(min_length=1)
    read: tuple[str, ...] = Field(min_length=1)
    """Layers (``silver``) or tables (``gold.customer_360``) it reads."""
    columns: dict[str, Treatment]
    """Tag -> treatment; every tag of the policy must be named (no silent default)."""
    rows: RowScopes | None = None

    @field_validator("read")
    @classmethod
    def _check_read(cls, read: tuple[str, ...]) -> tuple[str, ...]:
        for item in read:
            layer = item.split(".", 1)[0]
            if layer not in LAYERS:
                raise ValueError(
                    f"read {item!r}: {layer!r} is not a layer (valid: {', '.join(LAYERS)})"
                )
        if len(set(read)) != len(read):
            raise ValueError("read lists a table or layer twice")
        return read


class PostgresTarget(_Model):
    """Objects of the PostgreSQL warehouse (the connection is ``warehouse.*``)."""

    role_prefix: str = Field(default="cdc_", pattern=r"^[a-z][a-z0-9_]{0,20}$")
    """Prefix of every role the policy creates (``cdc_analyst``, ``cdc_analyst_emea``)."""
    schemas: dict[str, str] = Field(default_factory=dict)
    """Layer -> warehouse schema holding its tables; ``gold`` defaults to
    ``warehouse.schema`` (``cdc publish``'s). A layer without a schema is not in the
    warehouse."""
    audit_role: str = Field(default="auditor", pattern=_NAME)
    """pgaudit's object-audit role (prefixed): granted SELECT on every governed relation, so
    every read of them is logged; ``pgaudit.role`` names it for the database."""

    @field_validator("schemas")
    @classmethod
    def _check_schemas(cls, schemas: dict[str, str]) -> dict[str, str]:
        return _by_layer("schemas", schemas, r"[a-z_][a-z0-9_]{0,40}", "schema name")


class LakeFormationTarget(_Model):
    """Lake Formation: the Glue databases of the layers and the IAM principal of each
    audience (the connection is ``governance.aws_*``)."""

    databases: dict[str, str]
    """Layer -> Glue database holding its tables (the tables keep their lake names)."""
    principals: dict[str, str]
    """Audience (a role, or ``<role>_<scope>`` for a role with row scopes) -> IAM ARN."""
    tag_prefix: str = Field(default="cdc_", pattern=r"^[a-z][a-z0-9_]{0,20}$")
    """Prefix of the LF-tag keys (``cdc_layer``, ``cdc_pii``)."""

    @field_validator("databases")
    @classmethod
    def _check_databases(cls, databases: dict[str, str]) -> dict[str, str]:
        return _by_layer("databases", databases, r"[a-z0-9_]{1,255}", "Glue database name")


class DuckDbTarget(_Model):
    """The embedded warehouse has no access control: one read-only file per audience, built
    from the lake (in ``governance.audiences_dir``)."""

    layers: tuple[Literal["bronze", "quarantine", "silver", "gold"], ...] = ("silver", "gold")
    """Layers copied into the audience files (bronze's raw bytes stay in the lake)."""


class SnowflakeTarget(_Model):
    """Snowflake: roles, tag-based masking policies, row access policies (the connection
    and the publisher's role are ``warehouse.*``)."""

    role_prefix: str = Field(default="CDC_", pattern=r"^[A-Z][A-Z0-9_]{0,20}$")
    schemas: dict[str, str] = Field(default_factory=dict)
    """Layer -> schema; ``gold`` defaults to ``warehouse.schema``."""

    @field_validator("schemas")
    @classmethod
    def _check_schemas(cls, schemas: dict[str, str]) -> dict[str, str]:
        return _by_layer("schemas", schemas, r"[A-Za-z_][A-Za-z0-9_]{0,40}", "schema name")


class Targets(_Model):
    """Where the policy is enforced; a target not named here cannot be planned."""

    postgres: PostgresTarget | None = None
    lakeformation: LakeFormationTarget | None = None
    duckdb: DuckDbTarget | None = None
    snowflake: SnowflakeTarget | None = None


class Policy(_Model):
    """Who may read what in one environment."""

    tags: dict[str, str] = Field(min_length=1)
    """Tag -> what it means (the runbook prints it)."""
    roles: dict[str, Role] = Field(min_length=1)
    targets: Targets = Targets()

    @field_validator("tags", "roles")
    @classmethod
    def _check_names(cls, names: dict[str, object]) -> dict[str, object]:
        for name in names:
            if not re.fullmatch(_NAME, name):
                raise ValueError(
                    f"{name!r} is not a name: lower-case letters, digits and _, at most 40"
                )
        return names

    @model_validator(mode="after")
    def _check_roles(self) -> Policy:
        for name, role in self.roles.items():
            missing = sorted(set(self.tags) - set(role.columns))
            unknown = sorted(set(role.columns) - set(self.tags))
            if missing:
                raise ValueError(
                    f"role {name}: columns must say what it sees of tag(s) {', '.join(missing)}"
                    f" (one of {', '.join(TREATMENTS)})"
                )
            if unknown:
                raise ValueError(
                    f"role {name}: columns names unknown tag(s) {', '.join(unknown)}"
                    f" (tags: {', '.join(self.tags)})"
                )
        audiences = [a for name in self.roles for a in self.audiences(name)]
        twice = sorted({a for a in audiences if audiences.count(a) > 1})
        if twice:
            raise ValueError(f"audience name(s) {', '.join(twice)} used twice (role + scope)")
        lf = self.targets.lakeformation
        if lf is not None:
            missing = [a for a in audiences if a not in lf.principals]
            unknown = sorted(set(lf.principals) - set(audiences))
            if missing or unknown:
                raise ValueError(
                    "targets.lakeformation.principals must name exactly the audiences"
                    f" {', '.join(audiences)}"
                    + (f"; missing {', '.join(missing)}" if missing else "")
                    + (f"; unknown {', '.join(unknown)}" if unknown else "")
                )
        return self

    def audiences(self, role: str) -> list[str]:
        """The audiences of a role: the role itself, or ``<role>_<scope>`` per row scope."""
        rows = self.roles[role].rows
        return [role] if rows is None else [f"{role}_{scope}" for scope in rows.scopes]


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file.

    Args:
        path: ``config/governance/<env>.yaml`` (``governance.policy``).

    Returns:
        The policy.

    Raises:
        ConfigError: the file is missing, is not YAML, or is invalid (an unknown key's error
            lists the valid keys).
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"policy file {p} does not exist (governance.policy)") from None
    except (OSError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"policy file {p}{where}: cannot read it as YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"policy file {p}: top level must be a mapping")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across sections (roles, tags, principals)
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"invalid policy ({p}): {message}") from None
        raise ConfigError(_format_validation_error(exc, str(p), Policy)) from None
