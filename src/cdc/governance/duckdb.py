"""The policy for the embedded warehouse: one read-only DuckDB file per audience.

DuckDB has no users, grants or row security, so the policy is enforced by what each file
holds: ``<audiences_dir>/<audience>.duckdb`` has, for each table of ``targets.duckdb.layers``
the audience reads, a copy built from the lake's current version with the denied columns
left out, the masked ones masked (the same SHA-256 hex and partial forms as PostgreSQL's
views) and only the audience's rows. Hand each audience its own file; open it with
:func:`open_audience` (read-only, external access disabled and the configuration locked, so
a query cannot read other files or the lake).

Each file records, in ``_cdc_governance.tables``, every table's definition fingerprint and the
Delta version it was built from. ``check`` compares the definitions with the policy's (and the
file's tables and columns with the record); ``plan`` also lists files older than the lake,
which ``apply`` rebuilds. A file is rebuilt whole, beside the old one, and moved over it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from cdc.config.settings import Settings
from cdc.governance.access import Access, TableAccess
from cdc.governance.base import Change, GovernanceError, Item, Plan, Target
from cdc.governance.masks import DUCKDB
from cdc.governance.policy import DuckDbTarget
from cdc.store import DeltaRsStore
from cdc.warehouse.duckdb import DuckDbDialect

# duckdb is imported where an audience file is built: plans and checks of other targets never load
# it.

__all__ = [
    "AudienceFile",
    "DuckDbGovernance",
    "TableCopy",
    "audience_files",
    "open_audience",
]

_META = "_cdc_governance"
_SOURCE = "_cdc_source"
_DIALECT = DuckDbDialect()


@dataclass(frozen=True)
class TableCopy:
    """One table of an audience file: where it comes from and how it is shaped."""

    ref: str
    location: str
    schema: str
    name: str
    access: TableAccess

    def select(self, columns: pa.Schema) -> str:
        """The ``CREATE TABLE ... AS SELECT`` over the lake rows (registered as the source)."""
        exprs = [
            DUCKDB.column(
                _DIALECT.quote(f.name), self.access.treatment(f.name), _DIALECT.column_type(f)
            )
            for f in columns
        ]
        where = ""
        rows = self.access.rows
        if rows is not None:
            (value,) = set(rows.values.values())
            where = f" WHERE {_DIALECT.quote(rows.column)} = '{value}'"
        listed = ", ".join(e for e in exprs if e is not None)
        return (
            f"CREATE TABLE {_DIALECT.quote(self.schema)}.{_DIALECT.quote(self.name)} AS"
            f" SELECT {listed} FROM {_SOURCE}{where}"
        )

    @property
    def spec(self) -> str:
        """A fingerprint of the table's definition: its columns' treatments and its rows."""
        a = self.access
        text = repr(
            (
                self.ref,
                [(c.name, c.treatment) for c in a.columns],
                None if a.rows is None else (a.rows.column, sorted(a.rows.values.items())),
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AudienceFile:
    """One audience's file and the tables it holds."""

    audience: str
    tables: tuple[TableCopy, ...]

    @property
    def spec(self) -> str:
        """The fingerprint of the file: its tables' definitions."""
        return _file_spec({t.ref: t.spec for t in self.tables})


def _file_spec(tables: Mapping[str, str]) -> str:
    return ", ".join(f"{ref}@{spec}" for ref, spec in sorted(tables.items()))


def audience_files(access: Access, config: DuckDbTarget) -> list[AudienceFile]:
    """What each audience's file holds: pure, from the resolved policy.

    Args:
        access: the resolved policy.
        config: ``targets.duckdb``.

    Returns:
        One file per audience, each with the tables of ``config.layers`` its role reads, rows
        restricted to the audience's scope.
    """
    files = []
    for role in access.roles:
        for audience in role.audiences:
            copies = []
            for table in role.tables:
                if table.table.layer not in config.layers:
                    continue
                if table.rows is not None:
                    value = table.rows.values[audience]
                    table = TableAccess(
                        table.table,
                        table.columns,
                        type(table.rows)(table.rows.column, {audience: value}),
                        table.whole_layer,
                    )
                copies.append(
                    TableCopy(
                        table.table.ref,
                        table.table.location,
                        table.table.layer,
                        table.table.name,
                        table,
                    )
                )
            files.append(AudienceFile(audience, tuple(copies)))
    return files


def open_audience(path: str | Path) -> Any:
    """Open an audience file the way its readers must: read-only, no access to other files
    or the network, the configuration locked.

    Raises:
        GovernanceError: the file cannot be opened.
    """
    import duckdb

    try:
        return duckdb.connect(
            str(path),
            read_only=True,
            config={"enable_external_access": False, "lock_configuration": True},
        )
    except duckdb.Error as exc:
        raise GovernanceError(f"cannot open the audience file {path}: {exc}") from None


class DuckDbGovernance(Target):
    """Audience files built from the lake (delta-rs reads, DuckDB writes)."""

    name = "duckdb"
    order = ("audience file", "audience data")

    def __init__(
        self,
        access: Access,
        config: DuckDbTarget,
        folder: Path,
        storage_options: Mapping[str, str] | None = None,
        now: Any = None,
    ) -> None:
        """Create the target.

        Args:
            access: the resolved policy.
            config: ``targets.duckdb``.
            folder: where the audience files are.
            storage_options: the lake's object-store settings (credentials resolved).
            now: the clock of ``built_at`` (tests inject one).
        """
        self.access = access
        self.config = config
        self.folder = folder
        self.store = DeltaRsStore(dict(storage_options or {}))
        self.now = now or (lambda: datetime.now(UTC))
        self.files = audience_files(access, config)
        self._versions: dict[str, int | None] | None = None

    @classmethod
    def from_settings(
        cls, access: Access, config: DuckDbTarget, settings: Settings
    ) -> DuckDbGovernance:
        """The target over the lake and ``governance.audiences_dir``."""
        folder = settings.governance.audiences_path(settings.lake)
        return cls(access, config, folder, settings.lake.resolved_storage_options())

    def _lake_versions(self) -> dict[str, int | None]:
        """The current Delta version of every table a file holds (None: not built yet)."""
        if self._versions is None:
            versions: dict[str, int | None] = {}
            for file in self.files:
                for table in file.tables:
                    if table.ref not in versions:
                        versions[table.ref] = self.store.version(table.location)
            self._versions = versions
        return self._versions

    def _path(self, audience: str) -> Path:
        return self.folder / f"{audience}.duckdb"

    def desired(self) -> list[Item]:
        """Per audience: the file's definition and the lake versions it must hold."""
        versions = self._lake_versions()
        items = []
        for file in self.files:
            present = {t.ref: t.spec for t in file.tables if versions[t.ref] is not None}
            items.append(
                Item("audience file", file.audience, _file_spec(present), file, readable=False)
            )
            data = ", ".join(f"{ref}@{versions[ref]}" for ref in sorted(present))
            items.append(Item("audience data", file.audience, data, file))
        return items

    def actual(self) -> list[Item]:
        """What each governed file in the folder holds (by its record and its tables)."""
        items = []
        for path in sorted(self.folder.glob("*.duckdb")) if self.folder.is_dir() else []:
            audience = path.stem
            try:
                con = open_audience(path)
            except GovernanceError:
                items.append(Item("audience file", audience, "unreadable", path))
                continue
            try:
                recorded = con.execute(
                    f"SELECT table_ref, spec, delta_version, columns FROM {_META}.tables"
                ).fetchall()
                held = con.execute(
                    "SELECT table_schema || '.' || table_name, string_agg(column_name, ',' ORDER BY"
                    " ordinal_position) FROM information_schema.columns WHERE table_schema <> ?"
                    " GROUP BY 1",
                    [_META],
                ).fetchall()
            except Exception:  # a DuckDB file the policy did not build: not governed
                continue
            finally:
                con.close()
            record = {str(r[0]): str(r[1]) for r in recorded}
            columns = {str(r[0]): str(r[3]) for r in recorded}
            spec = _file_spec(record)
            if {str(r[0]): str(r[1]) for r in held} != columns:
                spec = "changed outside the policy"
            items.append(
                Item("audience file", audience, spec, path, readable=spec != _file_spec(record))
            )
            data = ", ".join(f"{r[0]}@{r[2]}" for r in sorted(recorded))
            items.append(Item("audience data", audience, data, path))
        return items

    def notes(self) -> list[str]:
        """Tables not in the lake yet (their audience files go without them)."""
        versions = self._lake_versions()
        missing = sorted(ref for ref, v in versions.items() if v is None)
        notes = (
            [f"not in the lake yet, left out of the files: {', '.join(missing)}"] if missing else []
        )
        notes.append(f"files in {self.folder}; open them with cdc.governance.duckdb.open_audience")
        return notes

    def check(self) -> Plan:
        """Policy drift only: a file older than the lake is not drift (``plan`` lists it)."""
        planned = self.plan()
        return Plan(
            self.name,
            tuple(c for c in planned.changes if c.item.kind != "audience data"),
            planned.notes,
        )

    def apply_changes(self, changes: Sequence[Change]) -> None:
        """Rebuild the files of the changed audiences; delete the files of audiences the
        policy no longer has."""
        files = {f.audience: f for f in self.files}
        rebuilt: set[str] = set()
        for change in changes:
            audience = change.item.key
            if change.action == "remove":
                if audience not in files:
                    self._path(audience).unlink(missing_ok=True)
                continue
            if audience not in rebuilt:
                self._build(files[audience])
                rebuilt.add(audience)
        self._versions = None

    def _build(self, file: AudienceFile) -> None:
        import duckdb

        self.folder.mkdir(parents=True, exist_ok=True)
        final = self._path(file.audience)
        partial = final.with_suffix(".duckdb.building")
        partial.unlink(missing_ok=True)
        con = duckdb.connect(str(partial))
        try:
            con.execute(
                f"CREATE SCHEMA {_META}; CREATE TABLE {_META}.tables (table_ref VARCHAR, spec"
                " VARCHAR, delta_version BIGINT, columns VARCHAR, built_at TIMESTAMPTZ)"
            )
            for table in file.tables:
                snapshot = self.store.snapshot(table.location)  # rows and version agree
                if snapshot is None:
                    continue
                rows = snapshot.read()
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {_DIALECT.quote(table.schema)}")
                con.register(_SOURCE, rows)
                con.execute(table.select(rows.schema))
                con.unregister(_SOURCE)
                held = con.execute(
                    "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM"
                    " information_schema.columns WHERE table_schema = ? AND table_name = ?",
                    [table.schema, table.name],
                ).fetchone()
                con.execute(
                    f"INSERT INTO {_META}.tables VALUES (?, ?, ?, ?, ?)",
                    [table.ref, table.spec, snapshot.version, held[0] if held else "", self.now()],
                )
            con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            raise GovernanceError(f"building {final}: {exc}") from None
        finally:
            con.close()
        partial.chmod(stat.S_IRUSR | stat.S_IRGRP)
        os.replace(partial, final)
