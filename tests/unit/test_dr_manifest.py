"""The DR manifest's checks, pure: shape and types, confined paths, HMAC signatures; the
restore target's confinement; the manifest key setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdc.companions.dr import DrError, check_restore_target, is_lake_root
from cdc.companions.dr_manifest import (
    ManifestFile,
    UnsoundSnapshotError,
    check_snapshot_id,
    key_id,
    latest_from,
    manifest_from,
    open_signed,
    parse_document,
    path_problem,
    sign,
    signature_problem,
)
from cdc.config.settings import DrSettings, load_settings
from cdc.errors import ConfigError
from tests.support.paths import REPO_ROOT

SNAPSHOT = "20260105T020000123456Z"
KEY = b"k" * 32
SHA = "ab" * 32


def _manifest(**tables: Any) -> dict[str, Any]:
    return {
        "snapshot": SNAPSHOT,
        "created_at": "2026-01-05T02:00:00+00:00",
        "source": "/lake",
        "tables": tables
        or {
            "bronze/crm_contacts": {
                "version": 1,
                "rows": 6,
                "files": [
                    {"path": "part-0.parquet", "size": 10, "sha256": SHA},
                    {"path": "_delta_log/00000000000000000001.json", "size": 5, "sha256": SHA},
                ],
            }
        },
    }


def _unsound(doc: dict[str, Any]) -> str:
    with pytest.raises(UnsoundSnapshotError) as info:
        manifest_from(doc, f"manifest {SNAPSHOT}", SNAPSHOT)
    return str(info.value)


# ------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "is empty"),
        ("/etc/passwd", "is absolute"),
        ("../x", "has a '..' segment"),
        ("_delta_log/../../../x", "has a '..' segment"),
        ("a/./b", "has a '.' segment"),
        ("a//b", "has an empty segment"),
        ("a/", "has an empty segment"),
        ("..\\..\\x", "holds a backslash"),
        ("C:/Windows/x", "holds a colon (a drive or a URI scheme)"),
        ("s3://other-bucket/x", "holds a colon (a drive or a URI scheme)"),
        ("a\x00b", "holds a control character"),
        ("a\nb", "holds a control character"),
        ("a\ud800b", "is not valid Unicode"),
        ("x" * 4097, "is longer than 4096 characters"),
    ],
)
def test_unsafe_paths_are_named(path: str, problem: str) -> None:
    assert path_problem(path) == problem


@pytest.mark.parametrize(
    "path",
    [
        "part-00000-0f1e.c000.snappy.parquet",
        "_delta_log/00000000000000000010.checkpoint.parquet",
        "deletion_vector_9a8b.bin",
        "day=2026-01-05/part-0.parquet",
        "name with spaces %3A.parquet",
        "...parquet",
    ],
)
def test_delta_paths_are_safe(path: str) -> None:
    assert path_problem(path) is None


# ------------------------------------------------------------------------------- shape


def test_a_sound_manifest_reads_back_typed() -> None:
    manifest = manifest_from(_manifest(), "m", SNAPSHOT)
    table = manifest.tables["bronze/crm_contacts"]
    assert (table.version, table.rows) == (1, 6)
    assert table.files[0] == ManifestFile("part-0.parquet", 10, SHA)
    assert manifest.to_json() == _manifest()


@pytest.mark.parametrize(
    "name",
    [
        "../../../x",
        "bronze/../../x",
        "bronze",
        "bronze/a/b",
        "/bronze/x",
        "elsewhere/x",
        "bronze/x.y",
        "bronze\\x",
        "silver/",
    ],
)
def test_a_table_name_outside_the_layers_is_refused(name: str) -> None:
    table = {"version": 0, "rows": 0, "files": []}
    assert _unsound(_manifest(**{name: table})) == (
        f"manifest {SNAPSHOT}: table {name!r} is not <layer>/<table> with a layer of"
        " bronze, quarantine, silver, gold"
    )


def test_a_file_path_outside_its_table_is_refused() -> None:
    doc = _manifest()
    doc["tables"]["bronze/crm_contacts"]["files"][1]["path"] = "../../../../evil/f.txt"
    assert _unsound(doc) == (
        f"manifest {SNAPSHOT}: table bronze/crm_contacts: file 1: path '../../../../evil/f.txt'"
        " has a '..' segment"
    )


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()
_T = "tables.bronze/crm_contacts"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("snapshot", _DELETE, "'snapshot' is missing or not a string"),
        ("created_at", 5, "'created_at' is missing or not a string"),
        ("snapshot", "20990101T000000000000Z", "names itself '20990101T000000000000Z', not "),
        ("tables", [], "'tables' is missing or not an object"),
        (_T, [], "table bronze/crm_contacts is not an object"),
        (f"{_T}.version", "1", "table bronze/crm_contacts: 'version' is missing or not a count"),
        (f"{_T}.version", True, "table bronze/crm_contacts: 'version' is missing or not a count"),
        (f"{_T}.rows", -1, "table bronze/crm_contacts: 'rows' is missing or not a count"),
        (f"{_T}.files", {}, "table bronze/crm_contacts: 'files' is missing or not a list"),
        (f"{_T}.files.0", "x", "table bronze/crm_contacts: file 0 is not an object"),
        (f"{_T}.files.0.path", None, "file 0: 'path' is missing or not a string"),
        (f"{_T}.files.0.size", 1.5, "file 0: 'size' is missing or not a count"),
        (f"{_T}.files.0.sha256", SHA.upper(), "file 0: 'sha256' is not 64 lowercase hex digits"),
        (f"{_T}.files.1.path", "part-0.parquet", "file 1: part-0.parquet is listed twice"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_one_line(field: str, value: Any, problem: str) -> None:
    doc = _set(json.loads(json.dumps(_manifest())), field, value)
    message = _unsound(doc)
    assert message.startswith(f"manifest {SNAPSHOT}: ") and problem in message, message
    assert "\n" not in message


def test_documents_that_are_not_json_objects_are_one_line() -> None:
    for raw, problem in (
        (b"{bad", "not JSON (Expecting property name enclosed in double quotes: line 1"),
        (b"\xff\xfe\x00", "not JSON ("),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON (nested too deeply)"),
    ):
        with pytest.raises(UnsoundSnapshotError) as info:
            parse_document(raw, "latest.json")
        assert str(info.value).startswith(f"latest.json: {problem}"), info.value


def test_latest_json_must_name_a_snapshot_id() -> None:
    assert latest_from({"snapshot": SNAPSHOT}) == SNAPSHOT
    for doc in ({}, {"snapshot": "../../etc/passwd"}, {"snapshot": 7}):
        with pytest.raises(UnsoundSnapshotError, match=r"^latest\.json: 'snapshot' is missing or"):
            latest_from(doc)


def test_a_snapshot_id_from_the_command_line_cannot_leave_manifests() -> None:
    assert check_snapshot_id(SNAPSHOT) == SNAPSHOT
    with pytest.raises(ConfigError, match=r"^--snapshot '\.\./x' is not a snapshot id"):
        check_snapshot_id("../x")


# --------------------------------------------------------------------------- signatures


def test_signatures_hold_only_for_the_same_document_kind_and_key() -> None:
    signed = sign(_manifest(), KEY, "manifest")
    assert signed["signature"]["algorithm"] == "HMAC-SHA256"
    assert signed["signature"]["key_id"] == key_id(KEY) != key_id(b"o" * 32)
    assert signature_problem(signed, KEY, "manifest") is None
    # Any change, even of a count, breaks it; so does re-ordering nothing (canonical JSON).
    assert signature_problem(json.loads(json.dumps(signed, indent=3)), KEY, "manifest") is None
    altered = json.loads(json.dumps(signed))
    altered["tables"]["bronze/crm_contacts"]["rows"] = 7
    assert signature_problem(altered, KEY, "manifest") == (
        "does not match its signature under dr.manifest_key (altered after signing)"
    )
    # A manifest's signature never passes for latest.json (separate domains).
    assert signature_problem(signed, KEY, "latest") is not None
    assert signature_problem(signed, b"o" * 32, "manifest") == (
        f"is signed with another key (key id {key_id(KEY)}, dr.manifest_key has"
        f" {key_id(b'o' * 32)}): was the key rotated?"
    )
    assert signature_problem(_manifest(), KEY, "manifest") == (
        "is not signed (taken without dr.manifest_key)"
    )
    forged = {**_manifest(), "signature": {"algorithm": "none"}}
    assert signature_problem(forged, KEY, "manifest") == ("has a signature that is not HMAC-SHA256")


def test_open_signed_refuses_unless_told_and_then_says_what_it_skipped() -> None:
    raw = json.dumps(_manifest()).encode()
    what = f"manifest {SNAPSHOT}"
    with pytest.raises(UnsoundSnapshotError) as info:
        open_signed(raw, what, "manifest", KEY, allow_unsigned=False)
    assert str(info.value) == (
        f"{what}: is not signed (taken without dr.manifest_key); --allow-unsigned trusts it anyway"
    )
    with pytest.raises(ConfigError, match=r"^dr\.manifest_key is not set: snapshot signatures"):
        open_signed(raw, what, "manifest", None, allow_unsigned=False)
    doc, warning = open_signed(raw, what, "manifest", None, allow_unsigned=True)
    assert doc == _manifest()
    assert warning == (
        f"--allow-unsigned: {what} cannot be checked: dr.manifest_key is not set; trusted"
        " WITHOUT a signature check (its shape and paths are still checked: nothing is"
        " written outside the target)"
    )
    signed = json.dumps(sign(_manifest(), KEY, "manifest")).encode()
    assert open_signed(signed, what, "manifest", KEY, allow_unsigned=True)[1] is None


# ------------------------------------------------------------------------------ target


def _check(target: str, tmp_path: Path, dr: str | None = None) -> bool:
    return check_restore_target(
        target,
        lake_root=str(tmp_path / "lake"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        dr_location=dr or str(tmp_path / "dr"),
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/", "--to /: the filesystem root is never a lake root"),
        ("{t}/lake/silver/restored", "--to {t}/lake/silver/restored is inside the live lake root"),
        ("{t}", "--to {t} contains the live lake root {t}/lake: the restored tables would mix"),
        ("{t}/checkpoints", "--to {t}/checkpoints is the checkpoint root {t}/checkpoints:"),
        ("{t}/checkpoints/x", "--to {t}/checkpoints/x is inside the checkpoint root"),
        ("{t}/dr/tables", "--to {t}/dr/tables is inside the DR location {t}/dr:"),
        ("gs://bucket/lake", "--to 'gs://bucket/lake': a local path or an s3://bucket/prefix URI"),
    ],
)
def test_a_target_among_the_live_places_is_refused(
    tmp_path: Path, target: str, message: str
) -> None:
    with pytest.raises(DrError) as info:
        _check(target.format(t=tmp_path), tmp_path)
    assert str(info.value).startswith(message.format(t=tmp_path)), info.value


def test_the_lake_root_itself_and_places_apart_are_allowed(tmp_path: Path) -> None:
    assert _check(str(tmp_path / "lake"), tmp_path) is True
    assert _check(str(tmp_path / "lake") + "/", tmp_path) is True
    assert _check(str(tmp_path / "lake-restored"), tmp_path) is False
    assert _check("s3://restore-bucket/cdc", tmp_path) is False


def test_a_symbolic_link_into_the_lake_is_seen_through(tmp_path: Path) -> None:
    (tmp_path / "lake" / "silver").mkdir(parents=True)
    (tmp_path / "innocent").symlink_to(tmp_path / "lake" / "silver")
    with pytest.raises(DrError, match="is inside the live lake root"):
        _check(str(tmp_path / "innocent" / "restored"), tmp_path)


@pytest.mark.parametrize(
    ("target", "refused"),
    [
        ("s3://acme-lake/cdc", False),  # the lake root itself
        ("s3a://acme-lake/cdc/", False),
        ("s3://acme-lake/cdc/silver/restored", True),
        ("s3a://acme-lake/cdc/silver/restored", True),
        ("s3://acme-lake", True),  # the bucket holds the lake
        ("s3://acme-lake/cdc-restored", False),
        ("s3://acme-lake-dr/cdc/tables", True),  # the DR location
        ("s3://acme-lake/a/../cdc", True),
        ("s3://other-bucket/cdc", False),
    ],
)
def test_s3_targets_compare_bucket_and_prefix(target: str, refused: bool) -> None:
    def check() -> bool:
        return check_restore_target(
            target,
            lake_root="s3a://acme-lake/cdc",
            checkpoint_root="/checkpoints",
            dr_location="s3://acme-lake-dr/cdc",
        )

    if refused:
        with pytest.raises(DrError):
            check()
    else:
        assert check() is target.rstrip("/").endswith("acme-lake/cdc")


def test_is_lake_root_compares_places_not_strings(tmp_path: Path) -> None:
    settings = load_settings(
        "local", [f"lake.root={tmp_path / 'lake'}"], config_dir=REPO_ROOT / "config"
    )
    assert is_lake_root(settings, f"{tmp_path}/x/../lake/")
    assert not is_lake_root(settings, str(tmp_path / "lake2"))


# --------------------------------------------------------------------------- the key


def test_the_manifest_key_is_a_secret_reference_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pasted = "0123456789abcdef0123456789abcdef-pasted"
    with pytest.raises(ConfigError) as info:
        load_settings("local", [f"dr.manifest_key={pasted}"], config_dir=REPO_ROOT / "config")
    assert str(info.value).endswith(
        "dr.manifest_key: Value error, give the key as a secret reference (env:NAME,"
        " file:/path or aws-sm:secret-id#key), never the key itself"
    )
    assert pasted not in str(info.value)

    monkeypatch.setenv("DR_TEST_KEY", "s" * 40)
    dr = DrSettings(manifest_key="env:DR_TEST_KEY")
    assert dr.resolved_manifest_key() == b"s" * 40
    assert "sss" not in repr(dr) and "DR_TEST_KEY" not in repr(dr)
    key_file = tmp_path / "key"
    key_file.write_text("short\n")
    with pytest.raises(ConfigError) as short:
        DrSettings(manifest_key=f"file:{key_file}").resolved_manifest_key()
    assert str(short.value) == (
        f"secret reference 'file:{key_file}' (dr.manifest_key): the key is shorter than 32"
        " bytes (generate one with: openssl rand -hex 32)"
    )
    assert DrSettings().resolved_manifest_key() is None
