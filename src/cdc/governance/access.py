"""A policy resolved against the catalog: per role, each table it reads, what it sees of each
column and which rows. Pure, and the same for every target; the targets only render it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cdc.errors import ConfigError
from cdc.governance.catalog import Catalog, CatalogColumn, CatalogTable
from cdc.governance.policy import LAYERS, Policy, Treatment, strictest

__all__ = ["Access", "ColumnAccess", "RoleAccess", "RowFilter", "TableAccess", "resolve_access"]


@dataclass(frozen=True)
class ColumnAccess:
    """One column as a role sees it."""

    column: CatalogColumn
    treatment: Treatment

    @property
    def name(self) -> str:
        """The column's name."""
        return self.column.name


@dataclass(frozen=True)
class RowFilter:
    """The rows each audience of a role reads: those whose ``column`` is its value."""

    column: str
    values: Mapping[str, str]
    """Audience (``analyst_emea``) -> value (``EMEA``)."""


@dataclass(frozen=True)
class TableAccess:
    """One table as a role reads it."""

    table: CatalogTable
    columns: tuple[ColumnAccess, ...]
    rows: RowFilter | None
    """None: every row."""
    whole_layer: bool
    """Read through its whole layer (``read: [silver]``) rather than by name."""

    @property
    def all_clear(self) -> bool:
        """Every column readable as it is (no mask, nothing denied)."""
        return all(c.treatment == "clear" for c in self.columns)

    @property
    def clear(self) -> list[str]:
        """Columns readable as they are."""
        return [c.name for c in self.columns if c.treatment == "clear"]

    @property
    def hidden(self) -> list[str]:
        """Columns not readable as they are (masked or denied)."""
        return [c.name for c in self.columns if c.treatment != "clear"]

    def treatment(self, column: str) -> Treatment:
        """What the role sees of ``column`` (a column the catalog does not know: ``deny``)."""
        return next((c.treatment for c in self.columns if c.name == column), "deny")


@dataclass(frozen=True)
class RoleAccess:
    """Everything one role reads."""

    name: str
    description: str
    audiences: tuple[str, ...]
    """The role itself, or one audience per row scope."""
    layers: tuple[str, ...]
    """Layers it reads whole."""
    tables: tuple[TableAccess, ...]
    treatments: Mapping[str, Treatment]
    """Tag -> what the role sees of it."""
    row_column: str | None = None
    row_values: Mapping[str, str] | None = None
    """Audience -> the value of ``row_column`` its rows have (None: no row scopes)."""

    def table(self, ref: str) -> TableAccess | None:
        """How the role reads table ``layer.name`` (None: it does not)."""
        return next((t for t in self.tables if t.table.ref == ref), None)


@dataclass(frozen=True)
class Access:
    """The whole policy, resolved."""

    policy: Policy
    catalog: Catalog
    roles: tuple[RoleAccess, ...]

    def role(self, name: str) -> RoleAccess:
        """One role's access."""
        return next(r for r in self.roles if r.name == name)

    def readers(self, ref: str) -> list[tuple[RoleAccess, TableAccess]]:
        """The roles that read table ``ref``, with how."""
        found = []
        for role in self.roles:
            table = role.table(ref)
            if table is not None:
                found.append((role, table))
        return found

    @property
    def audiences(self) -> list[str]:
        """Every audience of every role, in policy order."""
        return [a for r in self.roles for a in r.audiences]


def _treatment(column: CatalogColumn, treatments: Mapping[str, Treatment]) -> Treatment:
    return strictest([treatments[t] for t in column.tags]) if column.tags else "clear"


def resolve_access(policy: Policy, catalog: Catalog) -> Access:
    """Resolve ``policy`` against the tables of ``catalog``.

    Args:
        policy: the environment's policy.
        catalog: every table the service writes, with column tags.

    Returns:
        Per role, every table it reads with its columns' treatments and its row filter.

    Raises:
        ConfigError: a tag the catalog uses that the policy does not define, a read of an
            unknown table, a table read both by name and through its layer, or a row scope
            column a filtered table does not have (each message names the role).
    """
    undefined = {t: cols for t, cols in catalog.tags_in_use().items() if t not in policy.tags}
    if undefined:
        tag, columns = sorted(undefined.items())[0]
        raise ConfigError(
            f"tag {tag!r} is carried by {', '.join(columns[:3])}"
            + (f" (+{len(columns) - 3} more)" if len(columns) > 3 else "")
            + f" but the policy does not define it (tags: {', '.join(policy.tags)})"
        )
    roles = []
    for name, role in policy.roles.items():
        where = f"policy role {name}"
        layers = tuple(item for item in role.read if item in LAYERS)
        named = [item for item in role.read if item not in LAYERS]
        for ref in named:
            catalog.table(ref)
            if ref.split(".", 1)[0] in layers:
                raise ConfigError(f"{where}: read names {ref} and its whole layer")
        chosen = [t for t in catalog if t.layer in layers or t.ref in named]
        rows = role.rows
        values = None if rows is None else {f"{name}_{s}": v for s, v in rows.scopes.items()}
        if rows is not None:
            refs = {t.ref for t in chosen}
            stray = [ref for ref in rows.unfiltered if ref not in refs]
            if stray:
                raise ConfigError(f"{where}: rows.unfiltered names {', '.join(stray)}, not read")
        tables = []
        for table in chosen:
            row_filter = None
            if rows is not None and values is not None and table.ref not in rows.unfiltered:
                column = table.column(rows.column)
                if column is None or not column.is_string:
                    raise ConfigError(
                        f"{where}: {table.ref} has no text column {rows.column!r} to filter"
                        " rows on; list it under rows.unfiltered to let every audience read"
                        " it whole"
                    )
                row_filter = RowFilter(rows.column, values)
            seen = tuple(ColumnAccess(c, _treatment(c, role.columns)) for c in table.columns)
            tables.append(TableAccess(table, seen, row_filter, table.layer in layers))
        roles.append(
            RoleAccess(
                name=name,
                description=role.description,
                audiences=tuple(policy.audiences(name)),
                layers=layers,
                tables=tuple(tables),
                treatments=dict(role.columns),
                row_column=None if rows is None else rows.column,
                row_values=values,
            )
        )
    return Access(policy, catalog, tuple(roles))
