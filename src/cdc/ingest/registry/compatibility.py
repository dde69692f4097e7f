"""Avro BACKWARD compatibility: can a reader using the NEW schema read data written with OLD?

Pure functions over parsed schemas. The rules follow Avro schema resolution, made stricter
where silent reinterpretation would corrupt data downstream: a named type may not be renamed
(unless the new type lists the old name as an alias) and a logical type may not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdc.errors import CdcError, SchemaNotFoundError
from cdc.ingest.registry._avro import NAMED, AvroType, parse_avro, type_label
from cdc.ingest.registry.base import SchemaRegistry
from cdc.ingest.registry.file import FileRegistry, inspect_folder

__all__ = ["check_backward", "check_path", "check_registry", "extra_fields", "root_of"]

# (writer kind, reader kind) pairs that Avro promotes on read.
_PROMOTIONS = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)


def check_backward(new_schema: Any, old_schema: Any, *, root: str = "value") -> list[str]:
    """List the reasons a reader using ``new_schema`` cannot read data written with ``old_schema``.

    Args:
        new_schema: The reader schema (parsed JSON or :class:`AvroType`).
        old_schema: The writer schema (parsed JSON or :class:`AvroType`).
        root: Name of the top level in field paths (``value`` or ``key``).

    Returns:
        One message per break, e.g. ``field 'value.after.email' changed type string -> int``;
        empty when compatible.
    """
    walk = _Walk()
    walk.check(_as_type(new_schema), _as_type(old_schema), root)
    return walk.problems


def extra_fields(reader_schema: Any, writer_schema: Any, *, root: str = "value") -> list[str]:
    """Dotted paths of fields the writer has and the reader does not know (they are skipped).

    Args:
        reader_schema: The reader schema (parsed JSON or :class:`AvroType`).
        writer_schema: The writer schema (parsed JSON or :class:`AvroType`).
        root: Prefix of the returned paths.

    Returns:
        Paths such as ``value.after.nickname``, in schema order, without duplicates.
    """
    walk = _Walk()
    walk.check(_as_type(reader_schema), _as_type(writer_schema), root)
    return list(dict.fromkeys(walk.extras))


def root_of(subject: str) -> str:
    """The field-path root for a subject: ``key`` for ``*-key`` subjects, else ``value``."""
    return "key" if subject.endswith("-key") else "value"


def check_registry(registry: SchemaRegistry) -> list[str]:
    """Check every subject of a registry: versions 1..n present, ids unique, and each version
    BACKWARD compatible with its predecessor.

    Args:
        registry: Any :class:`SchemaRegistry`.

    Returns:
        Problems, each prefixed with ``<subject> v<version>:``; empty when all is well.
    """
    problems: list[str] = []
    owners: dict[int, str] = {}
    for subject in registry.subjects():
        try:
            latest = registry.latest(subject)
        except CdcError as exc:
            problems.append(f"{subject}: {exc}")
            continue
        previous = None
        for version in range(1, latest.version + 1):
            try:
                current = registry.get(subject, version)
            except SchemaNotFoundError as exc:
                problems.append(f"{subject} v{version}: {exc}")
                previous = None
                continue
            label = f"{subject} v{version}"
            owner = owners.setdefault(current.schema_id, label)
            if owner != label:
                problems.append(f"{label}: schema id {current.schema_id} is also used by {owner}")
            if previous is not None:
                problems.extend(
                    f"{label}: {msg}"
                    for msg in check_backward(
                        current.avro_type, previous.avro_type, root=root_of(subject)
                    )
                )
            previous = current
    return problems


def check_path(path: str | Path) -> list[str]:
    """Check a file registry folder: index integrity first, then :func:`check_registry`.

    Args:
        path: The ``schemas/avro`` folder.

    Returns:
        Every problem found; empty when the registry is sound.
    """
    problems = inspect_folder(Path(path)).problems
    if problems:
        return problems
    return check_registry(FileRegistry.load(path))


def _as_type(schema: Any) -> AvroType:
    return schema if isinstance(schema, AvroType) else parse_avro(schema)


class _Walk:
    """One recursive comparison collecting breaks and writer-only fields."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.extras: list[str] = []
        self._active: set[tuple[int, int]] = set()

    def check(self, new: AvroType, old: AvroType, path: str) -> None:
        if old.kind == "union":
            self._writer_union(new, old, path)
            return
        if new.kind == "union":
            branch = _match_branch(new, old)
            if branch is None:
                self.problems.append(
                    f"field '{path}' changed type {type_label(old)} -> {type_label(new)}"
                )
                return
            self.check(branch, old, path)
            return
        if not _shallow_match(new, old):
            self.problems.append(
                f"field '{path}' changed type {type_label(old)} -> {type_label(new)}"
            )
            return
        if new.kind == "record":
            # A recursive type meets itself again below; stop at the first repeat.
            key = (id(new), id(old))
            if key in self._active:
                return
            self._active.add(key)
            self._record(new, old, path)
            self._active.discard(key)
        elif new.kind == "enum":
            missing = [s for s in old.symbols if s not in new.symbols]
            if missing and new.enum_default is None:
                self.problems.append(
                    f"field '{path}': enum {new.name} dropped symbols without a default: "
                    + ", ".join(missing)
                )
        elif new.kind == "fixed" and new.size != old.size:
            self.problems.append(
                f"field '{path}': fixed {new.name} changed size {old.size} -> {new.size}"
            )
        elif new.kind in ("array", "map"):
            assert new.items is not None and old.items is not None
            self.check(new.items, old.items, path + ("[]" if new.kind == "array" else "{}"))

    def _writer_union(self, new: AvroType, old: AvroType, path: str) -> None:
        for branch in old.branches:
            if new.kind == "union":
                target = _match_branch(new, branch)
                if target is None:
                    self.problems.append(
                        f"field '{path}': old union branch {type_label(branch)} "
                        f"is not readable by {type_label(new)}"
                    )
                    continue
                self.check(target, branch, path)
            elif not _shallow_match(new, branch):
                self.problems.append(
                    f"field '{path}': old union branch {type_label(branch)} "
                    f"is not readable by {type_label(new)}"
                )
            else:
                self.check(new, branch, path)

    def _record(self, new: AvroType, old: AvroType, path: str) -> None:
        old_fields = {f.name: f for f in old.fields}
        known: set[str] = set()
        for field in new.fields:
            match = old_fields.get(field.name)
            if match is None:
                match = next((old_fields[a] for a in field.aliases if a in old_fields), None)
            if match is None:
                if not field.has_default:
                    self.problems.append(f"field '{path}.{field.name}' was added without a default")
                continue
            known.add(match.name)
            self.check(field.type, match.type, f"{path}.{field.name}")
        self.extras.extend(f"{path}.{f.name}" for f in old.fields if f.name not in known)


def _shallow_match(new: AvroType, old: AvroType) -> bool:
    """Whether ``old`` resolves to ``new`` at this level (children are checked separately)."""
    if new.kind == old.kind:
        if new.kind in NAMED and old.name != new.name and old.name not in new.aliases:
            return False
        return (new.logical, new.precision, new.scale) == (old.logical, old.precision, old.scale)
    return (old.kind, new.kind) in _PROMOTIONS and new.logical is None and old.logical is None


def _match_branch(union: AvroType, old: AvroType) -> AvroType | None:
    """The reader union branch a writer type resolves to: an exact kind first, then a promotion."""
    candidates = [b for b in union.branches if _shallow_match(b, old)]
    for branch in candidates:
        if branch.kind == old.kind:
            return branch
    return candidates[0] if candidates else None
