"""``cdc dr``: consistent snapshots of the lake at a DR location, verification and restore.

**Snapshot.** For each table, at its latest version V: every data file V references (and the
deletion-vector files beside them), then the Delta log up to V (commits and checkpoints, never
``_last_checkpoint``, which may name a later version). Data before log: a copy interrupted
half-way never has a log entry whose files are missing. Files are immutable and uniquely
named, so a file already at the DR location with the same size is not copied again
(incremental). A manifest ``manifests/<snapshot id>.json`` records, per table, V, its live row
count and every file with its size and SHA-256; ``latest.json`` names the newest.

**Verify.** Every file of a snapshot's manifest is at the DR location with its size and
checksum, and each table opens there at V with the recorded row count.

**Restore.** Copies a snapshot's files (checksums checked while copying) into a lake root,
each table's log up to its V only. The pipelines' checkpoints describe a later state than the
restored tables (or are lost with the lake): each existing checkpoint is moved aside and a
replay is prepared to resume at, per partition, the first offset the restored bronze and
quarantine do not hold (see :mod:`cdc.landed`), so the next ``cdc run`` re-reads from Kafka
whatever the snapshot missed, and lands it once.

Local paths and ``s3://`` URIs are both served by ``pyarrow.fs``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cdc.config import Settings
from cdc.errors import CdcError, ConfigError
from cdc.maintenance import TableRef, maintenance_tables

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

__all__ = [
    "DrError",
    "RestoreOutcome",
    "SnapshotOutcome",
    "filesystem",
    "restore",
    "snapshot",
    "verify",
]

_CHUNK = 4 * 1024 * 1024
_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|crc|checkpoint(\.\d+\.\d+)?\.parquet)$")


class DrError(CdcError):
    """A DR operation cannot go on (a missing snapshot, a checksum that does not match)."""


# ------------------------------------------------------------------------------- storage


def filesystem(uri: str, options: Mapping[str, str]) -> tuple[FileSystem, str]:
    """A ``pyarrow.fs`` filesystem for ``uri`` and the path inside it.

    ``options`` are the service's object-store settings (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``).
    """
    from pyarrow import fs

    if uri.startswith(("s3://", "s3a://")):
        o = {k.upper(): v for k, v in options.items()}
        endpoint = o.get("AWS_ENDPOINT_URL") or o.get("AWS_ENDPOINT")
        scheme = None
        if endpoint and "://" in endpoint:
            scheme, endpoint = endpoint.split("://", 1)
        s3 = fs.S3FileSystem(
            access_key=o.get("AWS_ACCESS_KEY_ID"),
            secret_key=o.get("AWS_SECRET_ACCESS_KEY"),
            session_token=o.get("AWS_SESSION_TOKEN"),
            region=o.get("AWS_REGION") or o.get("AWS_DEFAULT_REGION"),
            endpoint_override=endpoint,
            scheme=scheme or "https",
        )
        return s3, uri.split("://", 1)[1].rstrip("/")
    return fs.LocalFileSystem(), uri.rstrip("/")


def _size(fs: FileSystem, path: str) -> int | None:
    from pyarrow import fs as pafs

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


def _walk(fs: FileSystem, root: str) -> Iterator[tuple[str, int]]:
    """Every file under ``root``: its path relative to ``root`` and its size."""
    from pyarrow import fs as pafs

    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            yield info.path[len(root) :].lstrip("/"), int(info.size)


# ------------------------------------------------------------------------------ snapshot


def _dr_root(settings: Settings, location: str | None) -> tuple[FileSystem, str, str]:
    uri = location or settings.dr.location
    if not uri:
        raise ConfigError("no DR location: set dr.location (a path or s3://bucket/prefix)")
    fs, root = filesystem(uri, settings.dr.resolved_storage_options())
    return fs, root, uri


@dataclass
class TableCopy:
    name: str
    version: int
    rows: int
    files: list[dict[str, Any]] = field(default_factory=list)
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


def _table_files(
    table: Any, lake_fs: FileSystem, table_root: str, version: int
) -> tuple[list[str], list[str]]:
    """The data and deletion-vector files, then the log files, of one version."""
    data = []
    for uri in table.file_uris():
        path = uri.split("://", 1)[1] if "://" in uri else uri
        data.append(path[len(table_root) :].lstrip("/") if path.startswith(table_root) else path)
    present = dict(_walk(lake_fs, table_root))
    vectors = sorted(p for p in present if p.rsplit("/", 1)[-1].startswith("deletion_vector_"))
    logs = []
    for rel in present:
        folder, _, name = rel.rpartition("/")
        match = _LOG_ENTRY.match(name)
        if folder == "_delta_log" and match and int(match.group(1)) <= version:
            logs.append(rel)
    return sorted(set(data)) + vectors, sorted(logs)


def snapshot(settings: Settings, location: str | None = None) -> SnapshotOutcome:
    """Copy a consistent version of every existing table to the DR location.

    Raises:
        ConfigError: no DR location.
        DrError: a copy failed.
    """
    from deltalake import DeltaTable

    started = time.monotonic()
    dr_fs, dr_root, dr_uri = _dr_root(settings, location)
    lake_fs, lake_root = filesystem(settings.lake.root, settings.lake.resolved_storage_options())
    previous = _checksums(dr_fs, dr_root)
    copies: list[TableCopy] = []
    for ref in _existing(settings):
        table = DeltaTable(ref.uri, storage_options=settings.lake.resolved_storage_options())
        version = int(table.version())
        rows = _rows(table)
        table_root = f"{lake_root}/{ref.name}"
        data, logs = _table_files(table, lake_fs, table_root, version)
        copy = TableCopy(ref.name, version, rows)
        for rel in [*data, *logs]:  # the log last: it must never name a missing file
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
            copy.files.append({"path": rel, "size": size, "sha256": checksum})
        copies.append(copy)
    snapshot_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    manifest = {
        "snapshot": snapshot_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": settings.lake.root,
        "tables": {
            c.name: {"version": c.version, "rows": c.rows, "files": c.files} for c in copies
        },
    }
    _write_json(dr_fs, f"{dr_root}/manifests/{snapshot_id}.json", manifest)
    _write_json(dr_fs, f"{dr_root}/latest.json", {"snapshot": snapshot_id})
    return SnapshotOutcome(snapshot_id, dr_uri, copies, time.monotonic() - started)


def _existing(settings: Settings) -> list[TableRef]:
    from cdc.store import store_for

    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    return [ref for ref in maintenance_tables(settings) if store.exists(ref.uri)]


def _rows(table: Any) -> int:
    import pyarrow as pa
    from deltalake import QueryBuilder

    reader = QueryBuilder().register("t", table).execute("SELECT count(*) AS n FROM t")
    return int(pa.table(reader.read_all()).column("n")[0].as_py())


def _write_json(fs: FileSystem, path: str, value: Any) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write((json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def _read_json(fs: FileSystem, path: str) -> Any:
    with fs.open_input_stream(path) as reader:
        return json.loads(reader.read())


def _checksums(fs: FileSystem, root: str) -> dict[str, str]:
    """``<table>/<file>`` → checksum, from every manifest at the DR location."""
    known: dict[str, str] = {}
    for rel, _ in _walk(fs, f"{root}/manifests"):
        manifest = _read_json(fs, f"{root}/manifests/{rel}")
        for name, table in manifest.get("tables", {}).items():
            for f in table.get("files", []):
                known[f"{name}/{f['path']}"] = f["sha256"]
    return known


def _manifest(fs: FileSystem, root: str, snapshot_id: str | None) -> dict[str, Any]:
    if snapshot_id is None:
        if _size(fs, f"{root}/latest.json") is None:
            raise DrError(f"no snapshot at the DR location {root}: run cdc dr snapshot first")
        snapshot_id = str(_read_json(fs, f"{root}/latest.json")["snapshot"])
    path = f"{root}/manifests/{snapshot_id}.json"
    if _size(fs, path) is None:
        found = sorted(r.removesuffix(".json") for r, _ in _walk(fs, f"{root}/manifests"))
        raise DrError(f"no snapshot {snapshot_id}; snapshots: {', '.join(found) or 'none'}")
    manifest: dict[str, Any] = _read_json(fs, path)
    return manifest


# -------------------------------------------------------------------------------- verify


def verify(
    settings: Settings, location: str | None = None, snapshot_id: str | None = None
) -> tuple[str, list[str]]:
    """Check a snapshot's files (size, checksum) and tables (version, rows) at the DR location.

    Returns:
        The snapshot id and the problems found (none: the snapshot is sound).
    """
    from deltalake import DeltaTable

    dr_fs, dr_root, _ = _dr_root(settings, location)
    manifest = _manifest(dr_fs, dr_root, snapshot_id)
    problems: list[str] = []
    for name, table in sorted(manifest["tables"].items()):
        base = f"{dr_root}/tables/{name}"
        for f in table["files"]:
            path = f"{base}/{f['path']}"
            size = _size(dr_fs, path)
            if size is None:
                problems.append(f"{name}: {f['path']} is missing")
            elif size != f["size"]:
                problems.append(f"{name}: {f['path']} has {size} bytes, not {f['size']}")
            elif _sha256(dr_fs, path) != f["sha256"]:
                problems.append(f"{name}: {f['path']} does not match its checksum")
        if any(p.startswith(f"{name}:") for p in problems):
            continue
        uri = _uri(location or settings.dr.location or "", f"tables/{name}")
        try:
            copy = DeltaTable(
                uri,
                version=table["version"],
                storage_options=settings.dr.resolved_storage_options(),
            )
            rows = _rows(copy)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problems.append(f"{name}: cannot open version {table['version']}: {first}")
            continue
        if rows != table["rows"]:
            problems.append(
                f"{name}: {rows} rows at version {table['version']}, not {table['rows']}"
            )
    return str(manifest["snapshot"]), problems


def _uri(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}"


# ------------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class RestoreOutcome:
    snapshot: str
    target: str
    tables: dict[str, int]
    """Restored version per table."""
    replays: dict[str, dict[str, int]]
    """Per pipeline, the offsets its prepared replay resumes at."""
    seconds: float


def restore(
    settings: Settings,
    target: str,
    *,
    location: str | None = None,
    snapshot_id: str | None = None,
    checkpoints: bool = True,
    table: str | None = None,
    version: int | None = None,
) -> RestoreOutcome:
    """Rebuild the snapshot's tables under ``target`` (a lake root), then prepare each
    pipeline to resume after what the restored tables hold.

    Args:
        settings: service settings (``target`` becomes the lake root of the replays).
        target: where the tables go; existing tables there are refused.
        location: the DR location (default ``dr.location``).
        snapshot_id: which snapshot (default the latest).
        checkpoints: prepare the replays (needs the broker); False restores tables only.
        table: restore only this table (``<layer>/<table>``).
        version: with ``table``, restore it at this Delta version: from the newest snapshot
            that recorded the table at exactly that version (a snapshot pins one version
            per table; versions between snapshots were never copied whole).

    Raises:
        DrError: the snapshot is missing, no snapshot holds the version, a file does not
            match its checksum, or a table already exists at the target.
    """
    started = time.monotonic()
    dr_fs, dr_root, _ = _dr_root(settings, location)
    if version is not None and table is None:
        raise ConfigError("--version needs --table: each table has versions of its own")
    if version is not None:
        assert table is not None
        snapshot_id = _snapshot_with(dr_fs, dr_root, table, version)
    manifest = _manifest(dr_fs, dr_root, snapshot_id)
    if table is not None:
        if table not in manifest["tables"]:
            known = ", ".join(sorted(manifest["tables"]))
            raise DrError(f"snapshot {manifest['snapshot']} has no table {table}; it has: {known}")
        manifest = {**manifest, "tables": {table: manifest["tables"][table]}}
    lake_fs, lake_root = filesystem(target, settings.lake.resolved_storage_options())
    for name in manifest["tables"]:
        if any(True for _ in _walk(lake_fs, f"{lake_root}/{name}/_delta_log")):
            raise DrError(
                f"{target}/{name} already holds a Delta table: restore into an empty lake root"
            )
    versions: dict[str, int] = {}
    for name, recorded in sorted(manifest["tables"].items()):
        files = sorted(recorded["files"], key=lambda f: f["path"].startswith("_delta_log/"))
        for f in files:  # data first, the log last
            src = f"{dr_root}/tables/{name}/{f['path']}"
            dst = f"{lake_root}/{name}/{f['path']}"
            try:
                checksum = _copy(dr_fs, src, lake_fs, dst)
            except OSError as exc:
                raise DrError(f"restore of {name}: copying {f['path']} failed: {exc}") from None
            if checksum != f["sha256"]:
                raise DrError(f"restore of {name}: {f['path']} does not match its checksum")
        versions[name] = int(recorded["version"])
    replays: dict[str, dict[str, int]] = {}
    if checkpoints:
        replays = _prepare_replays(settings.with_lake_root(target))
    return RestoreOutcome(
        str(manifest["snapshot"]), target, versions, replays, time.monotonic() - started
    )


def _snapshot_with(fs: FileSystem, root: str, table: str, version: int) -> str:
    """The newest snapshot that recorded ``table`` at ``version``."""
    seen: set[int] = set()
    for rel, _ in sorted(_walk(fs, f"{root}/manifests"), reverse=True):
        manifest = _read_json(fs, f"{root}/manifests/{rel}")
        recorded = manifest.get("tables", {}).get(table)
        if recorded is None:
            continue
        if int(recorded["version"]) == version:
            return str(manifest["snapshot"])
        seen.add(int(recorded["version"]))
    held = ", ".join(str(v) for v in sorted(seen)) or "none"
    raise DrError(f"no snapshot holds {table} at version {version}; versions held: {held}")


def _prepare_replays(settings: Settings) -> dict[str, dict[str, int]]:
    """Move each pipeline's checkpoint aside and prepare a replay right after what the
    restored tables hold (records since the snapshot are re-read from Kafka)."""
    from cdc.checkpoint_guard import resume_offsets
    from cdc.replay import ReplayPosition, replay_pipeline
    from cdc.store import store_for

    store = store_for(settings.lake.writer, settings.lake.resolved_storage_options())
    out: dict[str, dict[str, int]] = {}
    for name in settings.selected(None):
        pipeline = settings.pipeline(name)
        refs = [r for r in maintenance_tables(settings, name) if r.role in ("bronze", "quarantine")]
        if not any(store.exists(r.uri) for r in refs):
            continue  # nothing of it was restored: its own checkpoint decides
        offsets = resume_offsets(settings, name)
        position = ReplayPosition.from_offsets(
            json.dumps({pipeline.topic: offsets}), pipeline.topic
        )
        replay_pipeline(settings, name, position, runner=None)
        out[name] = offsets
    return out
