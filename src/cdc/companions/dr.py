"""``cdc dr``: consistent snapshots of the lake at a DR location, verification and restore.

**Snapshot.** For each table, at its latest version V: every data file V references (and the
deletion-vector files beside them), then the Delta log up to V (commits and checkpoints, never
``_last_checkpoint``, which may name a later version). Data before log: a copy interrupted
half-way never has a log entry whose files are missing. Files are immutable and uniquely
named, so a file already at the DR location with the same size is not copied again
(incremental; only checksums from manifests whose signature holds are reused). A manifest
``manifests/<snapshot id>.json`` records, per table, V, its live row count and every file with
its size and SHA-256; ``latest.json`` names the newest. Both are signed (HMAC-SHA256 under
``dr.manifest_key``; unsigned when no key is configured, see :mod:`cdc.companions.dr_manifest`).

**Verify.** The manifest is sound and signed; every file of it is at the DR location with its
size and checksum, and each table opens there at V with the recorded row count.

**Restore.** Refuses a target that is ``/``, inside or around the live lake, the checkpoints
or the DR location, and a manifest that is damaged, unsigned or names a path outside its
table; then copies the snapshot's files (checksums checked while copying) into the target,
each table's log up to its V only. The pipelines' checkpoints describe a later state than
the restored tables (or are lost with the lake): when the target is the configured lake root
(or ``repoint`` is asked), each checkpoint of a pipeline whose bronze or quarantine was
restored is moved aside and a replay is prepared to resume at, per partition, the first
offset the restored tables do not hold (see :mod:`cdc.pipeline.landed`), so the next ``cdc run``
re-reads from Kafka whatever the snapshot missed, and lands it once. Restoring elsewhere
leaves the live checkpoints alone unless asked; :func:`repoint` does it later.

Local paths and ``s3://`` URIs are both served by ``pyarrow.fs``; which files make up a table
version, and the tables' versions and rows, come from the store (:mod:`cdc.store.files`,
:meth:`cdc.store.TableStore.snapshot`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from pyarrow import fs as pafs

from cdc.companions.dr_manifest import (
    DrError,
    Kind,
    Manifest,
    ManifestFile,
    ManifestTable,
    UnsoundSnapshotError,
    check_snapshot_id,
    is_snapshot_id,
    latest_from,
    manifest_from,
    open_signed,
    parse_document,
    path_problem,
    sign,
    signature_problem,
)
from cdc.companions.maintenance import TableRef, maintenance_tables
from cdc.config.settings import Settings
from cdc.errors import ConfigError
from cdc.ops.replay import ReplayPosition, replay_pipeline
from cdc.pipeline.checkpoint_guard import resume_offsets
from cdc.store import DeltaRsStore, store_for
from cdc.store.files import filesystem, has_log, in_log, walk

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

    from cdc.store import TableStore

__all__ = [
    "DrError",
    "Repointed",
    "RestoreOutcome",
    "SnapshotOutcome",
    "UnsoundSnapshotError",
    "VerifyOutcome",
    "check_restore_target",
    "filesystem",
    "is_lake_root",
    "repoint",
    "restore",
    "snapshot",
    "verify",
]

_CHUNK = 4 * 1024 * 1024


# ------------------------------------------------------------------------------- storage


def _size(fs: FileSystem, path: str) -> int | None:
    info = fs.get_file_info(path)
    return None if info.type != pafs.FileType.File else int(info.size)


def _copy(src_fs: FileSystem, src: str, dst_fs: FileSystem, dst: str) -> str:
    """Copy one file, returning its SHA-256."""
    digest = hashlib.sha256()
    parent = dst.rsplit("/", 1)[0]
    dst_fs.create_dir(parent, recursive=True)
    with src_fs.open_input_stream(src) as reader, dst_fs.open_output_stream(dst) as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def _sha256(fs: FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as reader:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------- the documents


def _dr_root(settings: Settings, location: str | None) -> tuple[FileSystem, str, str]:
    uri = location or settings.dr.location
    if not uri:
        raise ConfigError("no DR location: set dr.location (a path or s3://bucket/prefix)")
    fs, root = filesystem(uri, settings.dr.resolved_storage_options())
    return fs, root, uri


def _read(fs: FileSystem, path: str, what: str) -> bytes:
    try:
        with fs.open_input_stream(path) as reader:
            return bytes(reader.read())
    except OSError as exc:
        raise DrError(f"{what} cannot be read: {exc}") from None


def _write_json(fs: FileSystem, path: str, value: Any) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write((json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def _snapshot_ids(fs: FileSystem, root: str) -> list[str]:
    """The snapshots whose manifest is at the DR location, oldest first."""
    names = (rel.removesuffix(".json") for rel, _ in walk(fs, f"{root}/manifests"))
    return sorted(name for name in names if is_snapshot_id(name))


@dataclass
class _Trust:
    """How the documents at a DR location are trusted, and what trusting them cost."""

    key: bytes | None
    allow_unsigned: bool
    warnings: list[str] = field(default_factory=list)

    def open(self, fs: FileSystem, path: str, what: str, kind: Kind) -> dict[str, Any]:
        raw = _read(fs, path, what)
        doc, warning = open_signed(raw, what, kind, self.key, allow_unsigned=self.allow_unsigned)
        if warning:
            self.warnings.append(warning)
        return doc

    def manifest(self, fs: FileSystem, root: str, snapshot_id: str | None) -> Manifest:
        """A snapshot's manifest (default: the one ``latest.json`` names), checked.

        Raises:
            DrError: no such snapshot.
            UnsoundSnapshotError: it, or ``latest.json``, is damaged or not signed.
        """
        if snapshot_id is None:
            if _size(fs, f"{root}/latest.json") is None:
                raise DrError(f"no snapshot at the DR location {root}: run cdc dr snapshot first")
            snapshot_id = latest_from(self.open(fs, f"{root}/latest.json", "latest.json", "latest"))
        path = f"{root}/manifests/{snapshot_id}.json"
        if _size(fs, path) is None:
            found = ", ".join(_snapshot_ids(fs, root)) or "none"
            raise DrError(f"no snapshot {snapshot_id}; snapshots: {found}")
        what = f"manifest {snapshot_id}"
        return manifest_from(self.open(fs, path, what, "manifest"), what, snapshot_id)


# ------------------------------------------------------------------------------ snapshot


@dataclass
class TableCopy:
    name: str
    version: int
    rows: int
    files: list[ManifestFile] = field(default_factory=list)
    copied: int = 0
    copied_bytes: int = 0
    reused: int = 0

    def line(self) -> str:
        return (
            f"{self.name}: version {self.version}, {self.rows} rows, {len(self.files)} files"
            f" ({self.copied} copied, {self.copied_bytes} bytes; {self.reused} already there)"
        )


@dataclass(frozen=True)
class SnapshotOutcome:
    snapshot: str
    location: str
    tables: list[TableCopy]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    """The snapshot is unsigned, or earlier manifests were not trusted to skip copies."""


def snapshot(settings: Settings, location: str | None = None) -> SnapshotOutcome:
    """Copy a consistent version of every existing table to the DR location.

    The manifest and ``latest.json`` are signed with ``dr.manifest_key``; without one they
    are written unsigned (and the outcome says so: verify and restore refuse them unless
    told to trust unsigned snapshots).

    Raises:
        ConfigError: no DR location, or the manifest key cannot be resolved.
        DrError: a copy failed, or a table references a file outside its folder.
    """
    started = time.monotonic()
    dr_fs, dr_root, dr_uri = _dr_root(settings, location)
    key = settings.dr.resolved_manifest_key()  # before any copy: a bad reference fails first
    lake_fs, lake_root = filesystem(settings.lake.root, settings.lake.resolved_storage_options())
    previous, warnings = _checksums(dr_fs, dr_root, key)
    copies: list[TableCopy] = []
    store = _store(settings)
    for ref in maintenance_tables(settings):
        table = store.snapshot(ref.uri)
        if table is None:
            continue
        table_root = f"{lake_root}/{ref.name}"
        copy = TableCopy(ref.name, table.version, table.rows())
        for rel in table.copy_order():  # the log last: it must never name a missing file
            problem = path_problem(rel)
            if problem:  # e.g. an absolute path in the log: a restore could not place it
                raise DrError(f"snapshot of {ref.name}: file {rel!r} {problem}: not supported")
            src, dst = f"{table_root}/{rel}", f"{dr_root}/tables/{ref.name}/{rel}"
            size = _size(lake_fs, src)
            if size is None:
                raise DrError(f"snapshot of {ref.name}: {rel} vanished while being copied")
            known = previous.get(f"{ref.name}/{rel}")
            if _size(dr_fs, dst) == size and known is not None:
                checksum = known
                copy.reused += 1
            else:
                try:
                    checksum = _copy(lake_fs, src, dr_fs, dst)
                except OSError as exc:
                    raise DrError(f"snapshot of {ref.name}: copying {rel} failed: {exc}") from None
                copy.copied += 1
                copy.copied_bytes += size
            copy.files.append(ManifestFile(rel, size, checksum))
        copies.append(copy)
    now = datetime.now(UTC)
    snapshot_id = now.strftime("%Y%m%dT%H%M%S%fZ")
    manifest = Manifest(
        snapshot_id,
        now.isoformat(timespec="seconds"),
        settings.lake.root,
        {c.name: ManifestTable(c.version, c.rows, tuple(c.files)) for c in copies},
    )
    # What restore will accept, checked before it is written (a table name it would refuse).
    manifest_from(manifest.to_json(), f"snapshot {snapshot_id}", snapshot_id)
    document, latest = manifest.to_json(), {"snapshot": snapshot_id}
    if key is not None:
        document, latest = sign(document, key, "manifest"), sign(latest, key, "latest")
    else:
        warnings.append(
            f"dr.manifest_key is not set: snapshot {snapshot_id} is unsigned; cdc dr verify"
            " and restore refuse it unless --allow-unsigned"
        )
    _write_json(dr_fs, f"{dr_root}/manifests/{snapshot_id}.json", document)
    _write_json(dr_fs, f"{dr_root}/latest.json", latest)
    return SnapshotOutcome(snapshot_id, dr_uri, copies, time.monotonic() - started, warnings)


def _store(settings: Settings, *, dr: bool = False) -> TableStore:
    """The tables' store: of the lake, or (``dr``) of the DR location's copies."""
    if dr:  # copies are only read, through delta-rs whoever wrote them
        return DeltaRsStore(settings.dr.resolved_storage_options())

    return store_for(settings.lake.writer, settings.lake.resolved_storage_options())


def _checksums(fs: FileSystem, root: str, key: bytes | None) -> tuple[dict[str, str], list[str]]:
    """``<table>/<file>`` → checksum, from the earlier manifests at the DR location, and a
    warning for each manifest not used: damaged, or (with a key) not signed by it. A
    checksum a snapshot reuses is one it vouches for without reading the file again."""
    known: dict[str, str] = {}
    skipped: list[str] = []
    for snapshot_id in _snapshot_ids(fs, root):
        what = f"manifest {snapshot_id}"
        try:
            doc = parse_document(_read(fs, f"{root}/manifests/{snapshot_id}.json", what), what)
            problem = None if key is None else signature_problem(doc, key, "manifest")
            if problem:
                raise UnsoundSnapshotError(f"{what}: {problem}")
            manifest = manifest_from(doc, what, snapshot_id)
        except DrError as exc:  # unreadable, damaged or not signed by the key
            skipped.append(f"{exc}: its files are copied again, not trusted")
            continue
        for name, table in manifest.tables.items():
            for f in table.files:
                known[f"{name}/{f.path}"] = f.sha256
    return known, skipped


# -------------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyOutcome:
    snapshot: str
    problems: list[str]
    """None: the snapshot is sound."""
    warnings: list[str]
    """What ``allow_unsigned`` trusted without a signature check."""


def verify(
    settings: Settings,
    location: str | None = None,
    snapshot_id: str | None = None,
    *,
    allow_unsigned: bool = False,
) -> VerifyOutcome:
    """Check a snapshot's signature, files (size, checksum) and tables (version, rows) at the
    DR location.

    Args:
        settings: service settings.
        location: the DR location (default ``dr.location``).
        snapshot_id: which snapshot (default the one ``latest.json`` names).
        allow_unsigned: trust a manifest (and ``latest.json``) without a valid signature.

    Raises:
        ConfigError: no DR location, a bad ``snapshot_id``, or no key to check signatures.
        DrError: no such snapshot.
        UnsoundSnapshotError: the manifest or ``latest.json`` is damaged or not signed.
    """
    if snapshot_id is not None:
        check_snapshot_id(snapshot_id)
    dr_fs, dr_root, dr_uri = _dr_root(settings, location)
    trust = _Trust(settings.dr.resolved_manifest_key(), allow_unsigned)
    manifest = trust.manifest(dr_fs, dr_root, snapshot_id)
    copies = _store(settings, dr=True)
    problems: list[str] = []
    for name, table in sorted(manifest.tables.items()):
        base = f"{dr_root}/tables/{name}"
        for f in table.files:
            path = f"{base}/{f.path}"
            size = _size(dr_fs, path)
            if size is None:
                problems.append(f"{name}: {f.path} is missing")
            elif size != f.size:
                problems.append(f"{name}: {f.path} has {size} bytes, not {f.size}")
            elif _sha256(dr_fs, path) != f.sha256:
                problems.append(f"{name}: {f.path} does not match its checksum")
        if any(p.startswith(f"{name}:") for p in problems):
            continue
        try:
            copy = copies.snapshot(_uri(dr_uri, f"tables/{name}"), table.version)
            if copy is None:
                raise DrError("no Delta table")
            rows = copy.rows()
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problems.append(f"{name}: cannot open version {table.version}: {first}")
            continue
        if rows != table.rows:
            problems.append(f"{name}: {rows} rows at version {table.version}, not {table.rows}")
    return VerifyOutcome(manifest.snapshot, problems, trust.warnings)


def _uri(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}"


# ----------------------------------------------------------------------- the target


class _Place(NamedTuple):
    """Where a root is: a local folder (symbolic links resolved) or an S3 bucket and prefix."""

    scheme: str
    bucket: str
    parts: tuple[str, ...]

    @classmethod
    def of(cls, uri: str, what: str) -> _Place:
        if uri.startswith(("s3://", "s3a://")):  # s3a:// is Hadoop's name for the same place
            bucket, _, prefix = uri.split("://", 1)[1].partition("/")
            parts = tuple(p for p in prefix.split("/") if p)
            if not bucket or any(p in (".", "..") for p in parts):
                raise DrError(f"{what} {uri!r} is not an s3://bucket/prefix URI")
            return cls("s3", bucket, parts)
        if "://" in uri:
            raise DrError(f"{what} {uri!r}: a local path or an s3://bucket/prefix URI")
        return cls("file", "", tuple(p for p in os.path.realpath(uri).split(os.sep) if p))

    def relation(self, other: _Place) -> str | None:
        """``is``, ``is inside`` or ``contains`` ``other``; None when they do not overlap."""
        n = min(len(self.parts), len(other.parts))
        if (self.scheme, self.bucket) != (other.scheme, other.bucket):
            return None
        if self.parts[:n] != other.parts[:n]:
            return None
        if len(self.parts) == len(other.parts):
            return "is"
        return "is inside" if len(self.parts) > len(other.parts) else "contains"


def check_restore_target(
    target: str, *, lake_root: str, checkpoint_root: str, dr_location: str | None
) -> bool:
    """Refuse a restore target that could overwrite or mix with what is live.

    Allowed: the configured lake root itself (rebuilding a lost lake; tables already there
    are refused table by table) and any place apart from the lake, the checkpoints and the
    DR location. Local paths are compared with symbolic links resolved; ``s3://`` and
    ``s3a://`` URIs by bucket and prefix.

    Returns:
        Whether ``target`` is the configured lake root.

    Raises:
        DrError: ``target`` is ``/``, inside the live lake or around it, or overlaps the
            checkpoint root or the DR location; or it is neither a path nor an S3 URI.
    """
    to = _Place.of(target, "--to")
    if to.scheme == "file" and not to.parts:
        raise DrError(f"--to {target}: the filesystem root is never a lake root")
    live = to.relation(_Place.of(lake_root, "lake.root"))
    if live == "is inside":
        raise DrError(
            f"--to {target} is inside the live lake root {lake_root}: the restored tables"
            " would nest among the live ones; restore into a folder of its own (or into the"
            " lake root itself, once the lake is lost)"
        )
    if live == "contains":
        raise DrError(
            f"--to {target} contains the live lake root {lake_root}: the restored tables"
            " would mix with the live ones; restore into a folder of its own"
        )
    for label, root in (("the checkpoint root", checkpoint_root), ("the DR location", dr_location)):
        found = to.relation(_Place.of(root, label)) if root else None
        if found:
            raise DrError(f"--to {target} {found} {label} {root}: restore into a folder of its own")
    return live == "is"


def is_lake_root(settings: Settings, target: str) -> bool:
    """Whether ``target`` is the configured lake root (where a restore re-points the
    checkpoints unless told otherwise)."""
    return _Place.of(target, "--to") == _Place.of(settings.lake.root, "lake.root")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# ------------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class Repointed:
    """A pipeline whose checkpoint was moved aside for a replay after the restored tables."""

    pipeline: str
    offsets: dict[str, int]
    """Per partition, where the prepared replay resumes."""
    replaced: str | None
    """Where its previous checkpoint was moved (None: it had none)."""

    def line(self, target: str) -> str:
        """What was done, for the terminal."""
        kept = f"previous checkpoint kept as {self.replaced}" if self.replaced else "no checkpoint"
        return (
            f"{self.pipeline}: re-pointed at {target}: replay prepared from"
            f" {json.dumps(self.offsets, sort_keys=True)}; {kept}"
        )


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot: str
    target: str
    tables: dict[str, int]
    """Restored version per table."""
    live_root: bool
    """Whether ``target`` is the configured lake root."""
    repointed: list[Repointed] | None
    """The pipelines re-pointed at the restored tables (None: the checkpoints were left
    alone)."""
    untouched: list[str]
    """Enabled pipelines whose checkpoint was left as it was."""
    warnings: list[str]
    """What ``allow_unsigned`` trusted without a signature check."""
    seconds: float

    def checkpoint_lines(self, live_root: str) -> list[str]:
        """What the restore did to the checkpoints, and what the operator does next.

        Args:
            live_root: the configured lake root (where the live pipelines run).
        """
        target = self.target
        if self.repointed is None:
            lines = [f"checkpoints untouched: {', '.join(self.untouched) or 'none'}"]
            if self.live_root:
                lines.append(
                    "the checkpoints are ahead of the restored tables: before starting the"
                    f" pipelines, run cdc dr repoint --to {target} (a plain start would skip"
                    " what the snapshot missed)"
                )
            else:
                lines.append(
                    f"the pipelines still run on lake.root={live_root}; to run them on"
                    f" {target}: stop them, run cdc dr repoint --to {target}, then start them"
                    f" with lake.root={target}"
                )
            return lines
        lines = [done.line(target) for done in self.repointed]
        if self.untouched:
            lines.append(
                "checkpoints untouched (none of their bronze or quarantine restored):"
                f" {', '.join(self.untouched)}"
            )
        if self.repointed and not self.live_root:
            names = ", ".join(done.pipeline for done in self.repointed)
            lines.append(
                f"{names} now resume from what {target} holds: start them with"
                f" lake.root={target}, not {live_root}"
            )
        return lines


def restore(
    settings: Settings,
    target: str,
    *,
    location: str | None = None,
    snapshot_id: str | None = None,
    repoint: bool | None = None,
    table: str | None = None,
    version: int | None = None,
    allow_unsigned: bool = False,
) -> RestoreOutcome:
    """Rebuild the snapshot's tables under ``target`` (a lake root), then (see ``repoint``)
    prepare each restored pipeline to resume after what the restored tables hold.

    Every check comes before the first byte is written: the target (see
    :func:`check_restore_target`), the manifest's signature and shape, every destination
    inside ``target`` (symbolic links resolved), no table already there.

    Args:
        settings: service settings.
        target: where the tables go; existing tables there are refused.
        location: the DR location (default ``dr.location``).
        snapshot_id: which snapshot (default the latest).
        repoint: move the checkpoints of the pipelines whose bronze or quarantine is
            restored aside and prepare their replays (needs the broker). None (default):
            only when ``target`` is the configured lake root; False: tables only.
        table: restore only this table (``<layer>/<table>``).
        version: with ``table``, restore it at this Delta version: from the newest snapshot
            that recorded the table at exactly that version (a snapshot pins one version
            per table; versions between snapshots were never copied whole).
        allow_unsigned: trust a manifest without a valid signature (its shape and paths are
            still checked).

    Raises:
        ConfigError: a bad ``snapshot_id``, or no key to check signatures.
        DrError: the target is refused, the snapshot is missing, no snapshot holds the
            version, a file does not match its checksum, or a table already exists at the
            target.
        UnsoundSnapshotError: the manifest or ``latest.json`` is damaged or not signed.
    """
    started = time.monotonic()
    if version is not None and table is None:
        raise ConfigError("--version needs --table: each table has versions of its own")
    if snapshot_id is not None:
        check_snapshot_id(snapshot_id)
    dr_fs, dr_root, dr_uri = _dr_root(settings, location)
    live_root = check_restore_target(
        target,
        lake_root=settings.lake.root,
        checkpoint_root=settings.checkpoints.root,
        dr_location=dr_uri,
    )
    trust = _Trust(settings.dr.resolved_manifest_key(), allow_unsigned)
    if version is not None:
        assert table is not None
        snapshot_id = _snapshot_with(dr_fs, dr_root, table, version, trust)
    manifest = trust.manifest(dr_fs, dr_root, snapshot_id)
    if table is not None:
        if table not in manifest.tables:
            known = ", ".join(sorted(manifest.tables))
            raise DrError(f"snapshot {manifest.snapshot} has no table {table}; it has: {known}")
        manifest = replace(manifest, tables={table: manifest.tables[table]})
    lake_fs, lake_root = filesystem(target, settings.lake.resolved_storage_options())
    for name in manifest.tables:
        if has_log(lake_fs, f"{lake_root}/{name}"):
            raise DrError(
                f"{target}/{name} already holds a Delta table: restore into an empty lake root"
            )
    plan = _restore_plan(manifest, dr_root, lake_root, target)
    for name, f, src, dst in plan:  # data first, each table's log last
        try:
            checksum = _copy(dr_fs, src, lake_fs, dst)
        except OSError as exc:
            raise DrError(f"restore of {name}: copying {f.path} failed: {exc}") from None
        if checksum != f.sha256:
            raise DrError(f"restore of {name}: {f.path} does not match its checksum")
    versions = {name: t.version for name, t in manifest.tables.items()}
    restored = settings.with_lake_root(target)
    repointed: list[Repointed] | None = None
    if live_root if repoint is None else repoint:
        repointed = _prepare_replays(restored, lambda ref: ref.name in versions)
    done = {r.pipeline for r in repointed or ()}
    return RestoreOutcome(
        manifest.snapshot,
        target,
        versions,
        live_root,
        repointed,
        [name for name in settings.selected(None) if name not in done],
        trust.warnings,
        time.monotonic() - started,
    )


def _restore_plan(
    manifest: Manifest, dr_root: str, lake_root: str, target: str
) -> list[tuple[str, ManifestFile, str, str]]:
    """Each file's table, entry, source and destination: data first, each table's log last.

    The manifest's names and paths are confined by construction (:mod:`cdc.companions.dr_manifest`);
    on a local target, each destination is also resolved, so that a symbolic link already
    in the target cannot lead a write elsewhere.
    """
    local = not target.startswith(("s3://", "s3a://"))
    real_root = os.path.realpath(lake_root) if local else ""
    plan = []
    for name, recorded in sorted(manifest.tables.items()):
        for f in sorted(recorded.files, key=lambda f: in_log(f.path)):
            dst = f"{lake_root}/{name}/{f.path}"
            if local and not _inside(os.path.realpath(dst), real_root):
                raise DrError(
                    f"restore of {name}: {f.path} would land outside {target} (a symbolic"
                    " link in the target): nothing was written"
                )
            plan.append((name, f, f"{dr_root}/tables/{name}/{f.path}", dst))
    return plan


def _snapshot_with(fs: FileSystem, root: str, table: str, version: int, trust: _Trust) -> str:
    """The newest snapshot that recorded ``table`` at ``version``; manifests that cannot be
    trusted are passed over (and named, if none holds the version)."""
    seen: set[int] = set()
    passed_over: list[str] = []
    probe = _Trust(trust.key, trust.allow_unsigned)  # warnings only for the one chosen
    for snapshot_id in reversed(_snapshot_ids(fs, root)):
        try:
            manifest = probe.manifest(fs, root, snapshot_id)
        except UnsoundSnapshotError:
            passed_over.append(snapshot_id)
            continue
        recorded = manifest.tables.get(table)
        if recorded is None:
            continue
        if recorded.version == version:
            return manifest.snapshot
        seen.add(recorded.version)
    held = ", ".join(str(v) for v in sorted(seen)) or "none"
    unsound = f" (not sound, not searched: {', '.join(passed_over)})" if passed_over else ""
    raise DrError(f"no snapshot holds {table} at version {version}; versions held: {held}{unsound}")


def repoint(settings: Settings, target: str) -> list[Repointed]:
    """Move aside the checkpoint of each pipeline whose bronze or quarantine is at ``target``
    and prepare its replay after what those tables hold: the pipelines then resume on the
    lake at ``target`` (start them with ``lake.root`` set to it).

    Raises:
        DrError: ``target`` is refused (:func:`check_restore_target`) or holds no pipeline's
            bronze or quarantine.
        PipelineRunningError: a pipeline to re-point is running.
    """
    check_restore_target(
        target,
        lake_root=settings.lake.root,
        checkpoint_root=settings.checkpoints.root,
        dr_location=settings.dr.location,
    )
    store = _store(settings)
    repointed = _prepare_replays(settings.with_lake_root(target), lambda r: store.exists(r.uri))
    if not repointed:
        raise DrError(f"{target} holds no pipeline's bronze or quarantine: nothing to re-point")
    return repointed


def _prepare_replays(settings: Settings, restored: Callable[[TableRef], bool]) -> list[Repointed]:
    """Move aside the checkpoint of each pipeline whose bronze or quarantine was ``restored``
    and prepare a replay right after what those tables hold (records since the snapshot are
    re-read from Kafka)."""
    out: list[Repointed] = []
    for name in settings.selected(None):
        pipeline = settings.pipeline(name)
        refs = [r for r in maintenance_tables(settings, name) if r.role in ("bronze", "quarantine")]
        if not any(restored(r) for r in refs):
            continue  # nothing of it was restored: its own checkpoint decides
        offsets = resume_offsets(settings, name)
        position = ReplayPosition.from_offsets(
            json.dumps({pipeline.topic: offsets}), pipeline.topic
        )
        outcome = replay_pipeline(settings, name, position, runner=None)
        out.append(Repointed(name, offsets, outcome.replaced))
    return out
