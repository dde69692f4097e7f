"""The files of the lake's tables: where they are stored and how a table lays them out.

Local paths and ``s3://`` URIs are both served by ``pyarrow.fs`` (:func:`filesystem`). What a
Delta table's folder holds is known here and nowhere else: its log (``_delta_log``: commits,
checkpoints, ``_last_checkpoint``), its data files and the deletion-vector files beside them.
Copies of whole tables (DR snapshots, restores, scratch lakes) ask this module which files to
copy and in which order; reads and writes go through :class:`cdc.store.base.TableStore`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from pyarrow import fs
from pyarrow import fs as pafs

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

__all__ = ["LOG_FOLDER", "filesystem", "has_log", "in_log", "log_entries", "walk"]

LOG_FOLDER = "_delta_log"
"""A Delta table's log, inside the table's folder."""

_LOG_ENTRY = re.compile(r"^(\d{20})\.(json|crc|checkpoint(\.\d+\.\d+)?\.parquet)$")
"""A commit, its checksum or a checkpoint of one version (not ``_last_checkpoint``)."""

DELETION_VECTOR_PREFIX = "deletion_vector_"
"""How Delta names a deletion-vector file (in the table's folder, beside the data)."""


def filesystem(uri: str, options: Mapping[str, str]) -> tuple[FileSystem, str]:
    """A ``pyarrow.fs`` filesystem for ``uri`` and the path inside it.

    Args:
        uri: a local path or an ``s3://`` (``s3a://``) URI.
        options: the service's object-store settings (``AWS_ACCESS_KEY_ID``,
            ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``,
            ``AWS_ALLOW_HTTP``).
    """
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


def walk(fs: FileSystem, root: str) -> Iterator[tuple[str, int]]:
    """Every file under ``root``: its path relative to ``root`` and its size."""
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            yield info.path[len(root) :].lstrip("/"), int(info.size)


def in_log(path: str) -> bool:
    """Whether ``path`` (relative to a table's folder) is in the table's log."""
    return path.startswith(f"{LOG_FOLDER}/")


def has_log(fs: FileSystem, table_root: str) -> bool:
    """Whether anything is in the log of the table at ``table_root`` (a table, even a broken
    one: a copy into it would mix two tables)."""
    return any(True for _ in walk(fs, f"{table_root}/{LOG_FOLDER}"))


def log_entries(fs: FileSystem, table_root: str, version: int) -> tuple[list[str], list[str]]:
    """What a copy of version ``version`` of a table needs besides its data files.

    Returns:
        The deletion-vector files in the table's folder, and the log up to ``version``
        (commits, checksums, checkpoints; never ``_last_checkpoint``, which may name a later
        version), each relative to ``table_root`` and sorted.
    """
    present = dict(walk(fs, table_root))
    vectors = sorted(p for p in present if p.rsplit("/", 1)[-1].startswith(DELETION_VECTOR_PREFIX))
    logs = []
    for rel in present:
        folder, _, name = rel.rpartition("/")
        match = _LOG_ENTRY.match(name)
        if folder == LOG_FOLDER and match and int(match.group(1)) <= version:
            logs.append(rel)
    return vectors, sorted(logs)
