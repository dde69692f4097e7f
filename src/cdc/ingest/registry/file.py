"""The registry of record: ``schemas/avro/<subject>/v<N>.avsc`` plus ``index.json``.

``index.json`` assigns every (subject, version) a stable, globally unique schema id::

    {"subjects": {"crm.contacts-value": [{"version": 1, "id": 4}, {"version": 2, "id": 13}]}}

Ids are never reused or renumbered: a new version gets the next unused id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro

from cdc.errors import ConfigError, SchemaNotFoundError
from cdc.ingest.registry.base import RegisteredSchema
from cdc.ingest.registry.framing import MAX_SCHEMA_ID

__all__ = ["INDEX_FILE", "FileRegistry", "FolderInspection", "IndexEntry", "inspect_folder"]

INDEX_FILE = "index.json"
_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")


@dataclass(frozen=True)
class IndexEntry:
    """One line of the index: a subject version, its id and its file."""

    subject: str
    version: int
    schema_id: int
    file: Path


@dataclass
class FolderInspection:
    """What :func:`inspect_folder` found: usable entries, their schemas and all problems."""

    entries: list[IndexEntry] = field(default_factory=list)
    schemas: dict[int, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def inspect_folder(root: Path) -> FolderInspection:
    """Read and validate a registry folder without raising.

    Checks that the index is well formed, versions run 1, 2, ... per subject, ids are unique
    and within 1..2^31-1, every listed file exists and holds a valid Avro schema, and no
    ``.avsc`` file is left out of the index.

    Args:
        root: The registry folder (``schemas/avro``).

    Returns:
        Entries and schemas that could be read, and every problem, each naming its file.
    """
    out = FolderInspection()
    index_path = root / INDEX_FILE
    if not root.is_dir():
        out.problems.append(f"registry folder {root} does not exist")
        return out
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        out.problems.append(f"{index_path} does not exist")
        return out
    except (OSError, ValueError) as exc:
        out.problems.append(f"{index_path}: cannot read: {exc}")
        return out
    subjects = _index_subjects(index, index_path, out.problems)
    owners: dict[int, str] = {}
    for subject, versions in subjects.items():
        for position, item in enumerate(versions, start=1):
            entry = _index_entry(subject, position, item, root, index_path, out.problems)
            if entry is None:
                continue
            label = f"{subject} v{entry.version}"
            if entry.schema_id in owners:
                out.problems.append(
                    f"{index_path}: schema id {entry.schema_id} is assigned to both "
                    f"{owners[entry.schema_id]} and {label}"
                )
                continue
            owners[entry.schema_id] = label
            schema = _read_schema(entry, index_path, out.problems)
            if schema is not None:
                out.entries.append(entry)
                out.schemas[entry.schema_id] = schema
    listed = {(e.subject, e.file.name) for e in out.entries}
    listed |= {(s, f"v{i}.avsc") for s, vs in subjects.items() for i in range(1, len(vs) + 1)}
    for path in sorted(root.glob("*/*.avsc")):
        if (path.parent.name, path.name) not in listed:
            out.problems.append(f"{path} is not listed in {index_path}")
    return out


def _index_subjects(index: Any, index_path: Path, problems: list[str]) -> dict[str, list[Any]]:
    if not isinstance(index, dict):
        problems.append(f"{index_path}: expected an object with key 'subjects'")
        return {}
    unknown = sorted(set(index) - {"subjects"})
    if unknown:
        problems.append(f"{index_path}: unknown key(s) {', '.join(unknown)} (valid keys: subjects)")
    subjects = index.get("subjects")
    if not isinstance(subjects, dict):
        problems.append(f"{index_path}: 'subjects' must be an object of subject -> versions")
        return {}
    valid: dict[str, list[Any]] = {}
    for subject, versions in subjects.items():
        if not isinstance(versions, list) or not versions:
            problems.append(f"{index_path}: {subject}: expected a non-empty list of versions")
            continue
        valid[subject] = versions
    return valid


def _index_entry(
    subject: str, position: int, item: Any, root: Path, index_path: Path, problems: list[str]
) -> IndexEntry | None:
    where = f"{index_path}: {subject} entry {position}"
    if not isinstance(item, dict):
        problems.append(f'{where}: expected {{"version": N, "id": N}}')
        return None
    unknown = sorted(set(item) - {"version", "id"})
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (valid keys: id, version)")
        return None
    version, schema_id = item.get("version"), item.get("id")
    if not isinstance(version, int) or isinstance(version, bool):
        problems.append(f"{where}: 'version' must be an integer")
        return None
    if not isinstance(schema_id, int) or isinstance(schema_id, bool):
        problems.append(f"{where}: 'id' must be an integer")
        return None
    if version != position:
        problems.append(
            f"{where}: versions must run 1, 2, 3, ... in order; expected {position}, "
            f"found {version}"
        )
        return None
    if not 1 <= schema_id <= MAX_SCHEMA_ID:
        problems.append(f"{where}: id {schema_id} is outside 1..{MAX_SCHEMA_ID}")
        return None
    return IndexEntry(subject, version, schema_id, root / subject / f"v{version}.avsc")


def _read_schema(entry: IndexEntry, index_path: Path, problems: list[str]) -> dict[str, Any] | None:
    label = f"{entry.subject} v{entry.version} (id {entry.schema_id})"
    try:
        schema = json.loads(entry.file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"{index_path} lists {label} but {entry.file} does not exist")
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{entry.file}: cannot read JSON: {exc}")
        return None
    if not isinstance(schema, dict):
        problems.append(f"{entry.file}: the top-level schema must be a JSON object")
        return None
    try:
        fastavro.parse_schema(schema)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        problems.append(f"{entry.file}: invalid Avro schema: {type(exc).__name__}: {exc}")
        return None
    return schema


class FileRegistry:
    """A :class:`~cdc.ingest.registry.base.SchemaRegistry` over a registry folder.

    Pickles as its raw schema documents (a few KB), so Spark executors rebuild it without
    needing the folder; parsed schemas are rebuilt lazily on first use.
    """

    def __init__(self, root: Path, entries: list[IndexEntry], schemas: dict[int, dict[str, Any]]):
        """Use :meth:`load`; this constructor trusts its (already validated) arguments."""
        self._root = root
        self._entries = {e.schema_id: e for e in entries}
        self._versions: dict[str, list[int]] = {}
        for e in sorted(entries, key=lambda e: (e.subject, e.version)):
            self._versions.setdefault(e.subject, []).append(e.schema_id)
        self._schemas = schemas
        self._cache: dict[int, RegisteredSchema] = {}

    @classmethod
    def load(cls, path: str | Path) -> FileRegistry:
        """Read and validate a registry folder.

        Args:
            path: The registry folder (``schemas/avro``).

        Returns:
            The registry.

        Raises:
            ConfigError: The folder, its index or a schema file is invalid; the message lists
                every problem and names the files.
        """
        root = Path(path)
        found = inspect_folder(root)
        if found.problems:
            raise ConfigError(f"invalid schema registry {root}: " + "; ".join(found.problems))
        return cls(root, found.entries, found.schemas)

    @property
    def root(self) -> Path:
        """The registry folder."""
        return self._root

    def by_id(self, schema_id: int) -> RegisteredSchema:
        """The schema registered under ``schema_id``.

        Raises:
            SchemaNotFoundError: No such id.
        """
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        entry = self._entries.get(schema_id)
        if entry is None:
            raise SchemaNotFoundError(f"schema id {schema_id} is not in the registry {self._root}")
        registered = RegisteredSchema(
            entry.subject, entry.version, entry.schema_id, self._schemas[schema_id]
        )
        self._cache[schema_id] = registered
        return registered

    def latest(self, subject: str) -> RegisteredSchema:
        """The highest version of ``subject``.

        Raises:
            SchemaNotFoundError: No such subject.
        """
        return self.by_id(self._ids(subject)[-1])

    def get(self, subject: str, version: int) -> RegisteredSchema:
        """One version of ``subject``.

        Raises:
            SchemaNotFoundError: No such subject or version.
        """
        ids = self._ids(subject)
        if not 1 <= version <= len(ids):
            raise SchemaNotFoundError(
                f"{subject} has no version {version} (versions: 1..{len(ids)})"
            )
        return self.by_id(ids[version - 1])

    def subjects(self) -> list[str]:
        """Every subject, sorted."""
        return sorted(self._versions)

    def _ids(self, subject: str) -> list[int]:
        ids = self._versions.get(subject)
        if ids is None:
            raise SchemaNotFoundError(
                f"subject {subject!r} is not in the registry {self._root} "
                f"(subjects: {', '.join(self.subjects())})"
            )
        return ids

    def __reduce__(self) -> tuple[Any, ...]:
        return (FileRegistry, (self._root, list(self._entries.values()), self._schemas))

    def __repr__(self) -> str:
        return f"FileRegistry({str(self._root)!r}, {len(self._entries)} schemas)"
