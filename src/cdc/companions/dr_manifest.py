"""The DR manifest and ``latest.json``: their shape, the paths they may name, their signature.

Everything at a DR location is untrusted input to ``cdc dr verify`` and ``cdc dr restore``:
whoever can write to the bucket can write a manifest. So before anything is read or written,

* **the document is sound**: JSON, an object of the expected shape and types (one line,
  :class:`UnsoundSnapshotError`, never a traceback);
* **it is signed**: an HMAC-SHA256 over its canonical JSON under ``dr.manifest_key`` (a
  secret reference), separate domains for a manifest and ``latest.json`` so one signature
  never passes for the other;
* **its paths stay put**: table names are ``<layer>/<name>`` of the lake's own layers, file
  paths are relative, without ``.``/``..``/empty segments, backslashes, colons or control
  characters, so ``<root>/<table>/<path>`` is inside ``<root>/<table>`` on any filesystem.

Pure functions on bytes and plain values: :mod:`cdc.companions.dr` does the I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cdc.errors import CdcError, ConfigError

__all__ = [
    "LAYERS",
    "SIGNATURE_ALGORITHM",
    "DrError",
    "Kind",
    "Manifest",
    "ManifestFile",
    "ManifestTable",
    "UnsoundSnapshotError",
    "check_snapshot_id",
    "is_snapshot_id",
    "key_id",
    "latest_from",
    "manifest_from",
    "open_signed",
    "parse_document",
    "path_problem",
    "sign",
    "signature_problem",
]

LAYERS = ("bronze", "quarantine", "silver", "gold")
"""The lake's layers: the first segment of every table name a manifest may hold."""
SIGNATURE_ALGORITHM = "HMAC-SHA256"

Kind = Literal["manifest", "latest"]

_SNAPSHOT_ID = re.compile(r"^\d{8}T\d{12}Z$")
# Table folders are named after pipeline targets and topics (dots become underscores).
_TABLE_NAME = re.compile(rf"^({'|'.join(LAYERS)})/[A-Za-z0-9_-]{{1,255}}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_PATH = 4096


class DrError(CdcError):
    """A DR operation cannot go on (a missing snapshot, a checksum that does not match)."""


class UnsoundSnapshotError(DrError):
    """A manifest or ``latest.json`` is damaged, unsigned or does not match its signature."""


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ManifestFile:
    """One file of a table at the DR location: its path inside the table, size and SHA-256."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class ManifestTable:
    """One table of a snapshot: the Delta version copied, its row count and files."""

    version: int
    rows: int
    files: tuple[ManifestFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rows": self.rows,
            "files": [f.to_json() for f in self.files],
        }


@dataclass(frozen=True)
class Manifest:
    """A snapshot's manifest (``manifests/<snapshot>.json``), validated."""

    snapshot: str
    created_at: str
    source: str
    tables: Mapping[str, ManifestTable]

    def to_json(self) -> dict[str, Any]:
        """The document as written (without its signature)."""
        return {
            "snapshot": self.snapshot,
            "created_at": self.created_at,
            "source": self.source,
            "tables": {name: t.to_json() for name, t in sorted(self.tables.items())},
        }


# ------------------------------------------------------------------------------- checks


def is_snapshot_id(text: str) -> bool:
    """Whether ``text`` is a snapshot id (``20260105T020000123456Z``)."""
    return bool(_SNAPSHOT_ID.match(text))


def check_snapshot_id(text: str) -> str:
    """``--snapshot`` as given, if it is a snapshot id.

    Raises:
        ConfigError: it is not (it would name a file outside ``manifests/``).
    """
    if not is_snapshot_id(text):
        raise ConfigError(
            f"--snapshot {text[:80]!r} is not a snapshot id (like 20260105T020000123456Z)"
        )
    return text


def path_problem(path: str) -> str | None:
    """Why ``path`` may not name a file inside a table's folder, or None when it may.

    A path is relative, made of non-empty segments other than ``.`` and ``..``, without
    backslashes (a separator on Windows), colons (drive letters, URI schemes) or control
    characters. Joined under any folder with ``/``, it stays inside that folder.
    """
    if not path:
        return "is empty"
    if len(path) > _MAX_PATH:
        return f"is longer than {_MAX_PATH} characters"
    if path.startswith("/"):
        return "is absolute"
    if "\\" in path:
        return "holds a backslash"
    if ":" in path:
        return "holds a colon (a drive or a URI scheme)"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "holds a control character"
    try:
        path.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no file has that name
        return "is not valid Unicode"
    for segment in path.split("/"):
        if not segment:
            return "has an empty segment"
        if segment in (".", ".."):
            return f"has a {segment!r} segment"
    return None


def _table_problem(name: str) -> str | None:
    if not _TABLE_NAME.match(name):
        return f"is not <layer>/<table> with a layer of {', '.join(LAYERS)}"
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: str) -> str:
    return repr(value[:120])


def _fail(what: str, problem: str) -> UnsoundSnapshotError:
    return UnsoundSnapshotError(f"{what}: {problem}")


def manifest_from(doc: Mapping[str, Any], what: str, snapshot_id: str) -> Manifest:
    """Validate a parsed manifest: shape, types, names and paths.

    Args:
        doc: the parsed document (signature, if any, already checked).
        what: how errors name it, e.g. ``manifest 20260105T020000123456Z``.
        snapshot_id: the id its file name carries; the document must say the same.

    Raises:
        UnsoundSnapshotError: anything is missing, of the wrong type, or unsafe.
    """
    for key in ("snapshot", "created_at", "source"):
        if not isinstance(doc.get(key), str):
            raise _fail(what, f"{key!r} is missing or not a string")
    if doc["snapshot"] != snapshot_id:
        raise _fail(what, f"names itself {_shown(doc['snapshot'])}, not {snapshot_id}")
    raw_tables = doc.get("tables")
    if not isinstance(raw_tables, dict):
        raise _fail(what, "'tables' is missing or not an object")
    tables: dict[str, ManifestTable] = {}
    for name, table in raw_tables.items():
        problem = _table_problem(name)
        if problem:
            raise _fail(what, f"table {_shown(name)} {problem}")
        if not isinstance(table, dict):
            raise _fail(what, f"table {name} is not an object")
        for key in ("version", "rows"):
            if not _is_count(table.get(key)):
                raise _fail(what, f"table {name}: {key!r} is missing or not a count")
        if not isinstance(table.get("files"), list):
            raise _fail(what, f"table {name}: 'files' is missing or not a list")
        files: list[ManifestFile] = []
        seen: set[str] = set()
        for index, entry in enumerate(table["files"]):
            where = f"table {name}: file {index}"
            if not isinstance(entry, dict):
                raise _fail(what, f"{where} is not an object")
            path: Any = entry.get("path")
            size: Any = entry.get("size")
            sha256: Any = entry.get("sha256")
            if not isinstance(path, str):
                raise _fail(what, f"{where}: 'path' is missing or not a string")
            problem = path_problem(path)
            if problem:
                raise _fail(what, f"{where}: path {_shown(path)} {problem}")
            if path in seen:
                raise _fail(what, f"{where}: {path} is listed twice")
            seen.add(path)
            if not _is_count(size):
                raise _fail(what, f"{where}: 'size' is missing or not a count")
            if not isinstance(sha256, str) or not _SHA256.match(sha256):
                raise _fail(what, f"{where}: 'sha256' is not 64 lowercase hex digits")
            files.append(ManifestFile(path, size, sha256))
        tables[name] = ManifestTable(table["version"], table["rows"], tuple(files))
    return Manifest(doc["snapshot"], doc["created_at"], doc["source"], tables)


def latest_from(doc: Mapping[str, Any]) -> str:
    """The snapshot id ``latest.json`` names.

    Raises:
        UnsoundSnapshotError: it names none, or something that is not a snapshot id.
    """
    snapshot = doc.get("snapshot")
    if not isinstance(snapshot, str) or not is_snapshot_id(snapshot):
        raise _fail("latest.json", "'snapshot' is missing or not a snapshot id")
    return snapshot


# ----------------------------------------------------------------------------- documents


def parse_document(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object from the bytes of a manifest or ``latest.json``.

    Raises:
        UnsoundSnapshotError: not JSON, or not an object.
    """
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(what, f"not JSON ({first})") from None
    except RecursionError:
        raise _fail(what, "not JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise _fail(what, "not a JSON object")
    return doc


def _signed_bytes(doc: Mapping[str, Any], kind: Kind) -> bytes:
    """What the HMAC covers: a domain (the kind of document) and its canonical JSON."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return f"cdc-dr-{kind}-v1\n{canonical}".encode()


def key_id(key: bytes) -> str:
    """A short fingerprint of a key that reveals nothing of it (which key signed what)."""
    return hmac.new(key, b"cdc-dr key id", hashlib.sha256).hexdigest()[:16]


def sign(doc: Mapping[str, Any], key: bytes, kind: Kind) -> dict[str, Any]:
    """``doc`` with its ``signature``: HMAC-SHA256 under ``key`` of its canonical JSON.

    Args:
        doc: the document (a ``signature`` already in it is replaced).
        key: the resolved ``dr.manifest_key``.
        kind: ``manifest`` or ``latest``: a signature of one never passes for the other.
    """
    digest = hmac.new(key, _signed_bytes(doc, kind), hashlib.sha256).hexdigest()
    signature = {"algorithm": SIGNATURE_ALGORITHM, "key_id": key_id(key), "hmac": digest}
    return {**{k: v for k, v in doc.items() if k != "signature"}, "signature": signature}


def signature_problem(doc: Mapping[str, Any], key: bytes | None, kind: Kind) -> str | None:
    """Why ``doc``'s signature cannot be trusted under ``key``, or None when it can."""
    if key is None:
        return "cannot be checked: dr.manifest_key is not set"
    signature = doc.get("signature")
    if signature is None:
        return "is not signed (taken without dr.manifest_key)"
    if (
        not isinstance(signature, dict)
        or signature.get("algorithm") != SIGNATURE_ALGORITHM
        or not isinstance(signature.get("hmac"), str)
    ):
        return f"has a signature that is not {SIGNATURE_ALGORITHM}"
    want = hmac.new(key, _signed_bytes(doc, kind), hashlib.sha256).hexdigest()
    if hmac.compare_digest(want, signature["hmac"]):
        return None
    signer = signature.get("key_id")
    if isinstance(signer, str) and signer != key_id(key):
        return (
            f"is signed with another key (key id {signer[:16]}, dr.manifest_key has"
            f" {key_id(key)}): was the key rotated?"
        )
    return "does not match its signature under dr.manifest_key (altered after signing)"


def open_signed(
    raw: bytes, what: str, kind: Kind, key: bytes | None, *, allow_unsigned: bool
) -> tuple[dict[str, Any], str | None]:
    """Parse a document and check its signature.

    Args:
        raw: its bytes.
        what: how messages name it (``latest.json``, ``manifest <id>``).
        kind: ``manifest`` or ``latest``.
        key: the resolved ``dr.manifest_key`` (None: not configured).
        allow_unsigned: trust it when its signature is missing or does not match.

    Returns:
        The document, and a warning saying what was trusted unchecked (None: it was signed).

    Raises:
        ConfigError: no key configured and unsigned documents not allowed.
        UnsoundSnapshotError: not JSON, not an object, or its signature cannot be trusted.
    """
    doc = parse_document(raw, what)
    if key is None and not allow_unsigned:
        raise ConfigError(
            "dr.manifest_key is not set: snapshot signatures cannot be checked; set it (a"
            " secret reference to the key the snapshots were signed with) or pass"
            " --allow-unsigned"
        )
    problem = signature_problem(doc, key, kind)
    if problem is None:
        return doc, None
    if not allow_unsigned:
        raise _fail(what, f"{problem}; --allow-unsigned trusts it anyway")
    return doc, (
        f"--allow-unsigned: {what} {problem}; trusted WITHOUT a signature check (its shape"
        " and paths are still checked: nothing is written outside the target)"
    )
