"""``cdc dr`` through the real command line, without servers (delta-rs tables on disk, the DR
location a folder): each refusal of a forged, damaged or unsigned snapshot and of a target
among the live places, one line each, nothing written; and a restore elsewhere leaves the
live checkpoints alone."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cdc.cli import main
from cdc.companions.dr_manifest import sign
from tests.support.dr import MANIFEST_KEY as KEY
from tests.support.dr import manifest_key
from tests.support.paths import REPO_ROOT

TABLES = ("bronze/crm_contacts", "silver/dim_contact")


class Lake:
    """A lake of two tables, its DR location, and the ``cdc dr`` command line over them."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
        self.root, self.key = root, key
        self.lake, self.dr = root / "lake", root / "dr"
        self.checkpoints = root / "checkpoints"
        self.capsys = capsys
        for name in TABLES:
            for i in range(2):
                rows = pa.table({"contact_id": [f"c{i}{j}" for j in range(3)], "n": [i] * 3})
                write_deltalake(str(self.lake / name), rows, mode="append")

    def args(self, *extra: str, key: bool = True) -> list[str]:
        sets = [
            f"lake.root={self.lake}",
            f"checkpoints.root={self.checkpoints}",
            f"dr.location={self.dr}",
            "kafka.bootstrap_servers=127.0.0.1:9",  # nothing listens: no broker is needed
            "kafka.connect_timeout_s=0.5",
            *([self.key] if key else []),
        ]
        out = ["--config-dir", str(REPO_ROOT / "config")]
        for item in sets:
            out += ["--set", item]
        return [*out, *extra]

    def cdc(self, *argv: str, key: bool = True) -> tuple[int, str, str]:
        self.capsys.readouterr()
        command, rest = list(argv[:2]), list(argv[2:])
        code = main([*command, *self.args(*rest, key=key)])
        out, err = self.capsys.readouterr()
        assert "Traceback" not in out + err
        assert KEY not in out + err
        return code, out, err

    def snapshot(self, key: bool = True) -> str:
        code, out, _ = self.cdc("dr", "snapshot", key=key)
        assert code == 0
        return out.strip().splitlines()[-1].split()[1]

    def manifest_path(self, snapshot: str) -> Path:
        return self.dr / "manifests" / f"{snapshot}.json"

    def edit_manifest(self, snapshot: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Change a manifest and sign it again with the key: a forgery by a key holder (or
        a bug), which only the shape and path checks stop."""
        path = self.manifest_path(snapshot)
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(sign(doc, KEY.encode(), "manifest")))


@pytest.fixture
def lake(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Lake:
    return Lake(tmp_path, capsys, manifest_key(monkeypatch))


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def test_signed_snapshot_verifies_and_restores_elsewhere_leaving_checkpoints_alone(
    lake: Lake,
) -> None:
    snapshot = lake.snapshot()
    doc = json.loads(lake.manifest_path(snapshot).read_text())
    assert doc["signature"]["algorithm"] == "HMAC-SHA256"
    assert json.loads((lake.dr / "latest.json").read_text())["signature"]["hmac"]
    assert lake.cdc("dr", "verify")[:2] == (0, f"snapshot {snapshot}: sound\n")

    # A live pipeline's checkpoint: a restore elsewhere must not touch it (and needs no broker).
    checkpoint = lake.checkpoints / "crm_contacts"
    (checkpoint / "offsets").mkdir(parents=True)
    (checkpoint / "offsets" / "0").write_text("live")
    before = {p: p.stat().st_mtime_ns for p in _files(lake.checkpoints)}
    restored = lake.root / "restored"
    code, out, err = lake.cdc("dr", "restore", "--to", str(restored))
    assert (code, err) == (0, "")
    assert {p: p.stat().st_mtime_ns for p in _files(lake.checkpoints)} == before
    lines = out.splitlines()
    assert lines[:2] == [f"{name}: restored at version 1" for name in TABLES]
    assert lines[3].startswith("checkpoints untouched: crm_accounts, crm_contacts, ")
    assert lines[4] == (
        f"the pipelines still run on lake.root={lake.lake}; to run them on {restored}: stop"
        f" them, run cdc dr repoint --to {restored}, then start them with lake.root={restored}"
    )
    for name in TABLES:
        got = DeltaTable(str(restored / name)).to_pyarrow_table().sort_by("contact_id")
        want = DeltaTable(str(lake.lake / name)).to_pyarrow_table().sort_by("contact_id")
        assert got.equals(want), name


@pytest.mark.parametrize(
    ("forge", "problem"),
    [
        (
            lambda doc: doc["tables"].update(
                {"bronze/../../../evil": doc["tables"]["bronze/crm_contacts"]}
            ),
            "table 'bronze/../../../evil' is not <layer>/<table> with a layer of bronze,"
            " quarantine, silver, gold",
        ),
        (
            lambda doc: doc["tables"]["silver/dim_contact"]["files"][0].update(
                path="../../../../evil/f.parquet"
            ),
            "table silver/dim_contact: file 0: path '../../../../evil/f.parquet' has a '..'"
            " segment",
        ),
        (
            lambda doc: doc["tables"]["silver/dim_contact"]["files"][0].update(path="/tmp/evil"),
            "table silver/dim_contact: file 0: path '/tmp/evil' is absolute",
        ),
    ],
)
def test_a_manifest_naming_a_path_outside_the_target_writes_nothing(
    lake: Lake, forge: Callable[[dict[str, Any]], None], problem: str
) -> None:
    """Checksums that match and a valid signature do not make a path safe: the restore is
    refused before anything is written, as verify is."""
    snapshot = lake.snapshot()
    payload = b"owned\n"
    evil = lake.dr / "tables" / "bronze" / ".." / ".." / ".." / "evil"
    evil.mkdir(parents=True, exist_ok=True)
    (evil / "f.parquet").write_bytes(payload)

    def forged(doc: dict[str, Any]) -> None:
        forge(doc)
        for table in doc["tables"].values():
            for f in table["files"]:
                if "evil" in f["path"]:
                    f.update(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())

    lake.edit_manifest(snapshot, forged)
    outside = _files(lake.root.parent)
    restored = lake.root / "restored"
    for command in (["dr", "verify"], ["dr", "restore", "--to", str(restored), "--tables-only"]):
        for flags in ([], ["--allow-unsigned"]):
            code, _, err = lake.cdc(*command, *flags)
            assert code == 1
            assert err.splitlines()[-1] == f"cdc: not sound: manifest {snapshot}: {problem}"
    assert not restored.exists()
    assert _files(lake.root.parent) == outside


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("/", "--to /: the filesystem root is never a lake root"),
        (
            "{lake}/silver/restored",
            "--to {lake}/silver/restored is inside the live lake root {lake}: the restored"
            " tables would nest among the live ones; restore into a folder of its own (or into"
            " the lake root itself, once the lake is lost)",
        ),
        (
            "{root}",
            "--to {root} contains the live lake root {lake}: the restored tables would mix with"
            " the live ones; restore into a folder of its own",
        ),
        (
            "{root}/checkpoints/restored",
            "--to {root}/checkpoints/restored is inside the checkpoint root {root}/checkpoints:"
            " restore into a folder of its own",
        ),
        (
            "{root}/dr/restored",
            "--to {root}/dr/restored is inside the DR location {root}/dr: restore into a folder"
            " of its own",
        ),
    ],
)
def test_a_target_among_the_live_places_is_refused_before_anything_is_written(
    lake: Lake, target: str, message: str
) -> None:
    lake.snapshot()
    before = _files(lake.root)
    fill = {"lake": lake.lake, "root": lake.root}
    code, out, err = lake.cdc("dr", "restore", "--to", target.format(**fill), "--tables-only")
    assert (code, out) == (2, "")
    assert err == f"cdc: error: {message.format(**fill)}\n"
    assert _files(lake.root) == before


def test_an_s3_target_inside_an_s3_lake_is_refused_by_bucket_and_prefix(lake: Lake) -> None:
    lake.snapshot()
    code, _, err = lake.cdc(
        "dr",
        "restore",
        "--to",
        "s3a://acme-lake/cdc/silver/restored",
        "--tables-only",
        "--set",
        "lake.root=s3://acme-lake/cdc",
    )
    assert (code, err) == (
        2,
        "cdc: error: --to s3a://acme-lake/cdc/silver/restored is inside the live lake root"
        " s3://acme-lake/cdc: the restored tables would nest among the live ones; restore into"
        " a folder of its own (or into the lake root itself, once the lake is lost)\n",
    )


def test_unsigned_snapshots_are_refused_unless_allowed_and_then_loudly(lake: Lake) -> None:
    snapshot = lake.snapshot(key=False)
    assert "signature" not in json.loads(lake.manifest_path(snapshot).read_text())
    restored = lake.root / "restored"
    restore = ["dr", "restore", "--to", str(restored), "--tables-only"]
    # With a key: the unsigned latest.json is refused (so is the manifest, named directly).
    code, _, err = lake.cdc(*restore)
    assert (code, err) == (
        1,
        "cdc: not sound: latest.json: is not signed (taken without dr.manifest_key);"
        " --allow-unsigned trusts it anyway\n",
    )
    code, _, err = lake.cdc("dr", "verify", "--snapshot", snapshot)
    assert (code, err) == (
        1,
        f"cdc: not sound: manifest {snapshot}: is not signed (taken without"
        " dr.manifest_key); --allow-unsigned trusts it anyway\n",
    )
    # Without a key: nothing can be checked.
    code, _, err = lake.cdc(*restore, key=False)
    assert code == 2
    assert err.startswith("cdc: error: dr.manifest_key is not set: snapshot signatures cannot")
    assert not restored.exists()
    # Told to: restored, and stderr says what was trusted unchecked.
    code, _, err = lake.cdc(*restore, "--allow-unsigned")
    assert code == 0
    assert err.splitlines() == [
        f"cdc: warning: --allow-unsigned: {what} is not signed (taken without dr.manifest_key);"
        " trusted WITHOUT a signature check (its shape and paths are still checked: nothing"
        " is written outside the target)"
        for what in ("latest.json", f"manifest {snapshot}")
    ]
    assert (restored / "bronze" / "crm_contacts" / "_delta_log").is_dir()


def test_an_altered_manifest_or_latest_json_is_refused(lake: Lake) -> None:
    first = lake.snapshot()
    second = lake.snapshot()
    path = lake.manifest_path(second)
    doc = json.loads(path.read_text())
    doc["tables"]["bronze/crm_contacts"]["rows"] += 1  # the signature is not updated
    path.write_text(json.dumps(doc))
    code, _, err = lake.cdc("dr", "verify")
    assert (code, err) == (
        1,
        f"cdc: not sound: manifest {second}: does not match its signature under"
        " dr.manifest_key (altered after signing); --allow-unsigned trusts it anyway\n",
    )
    # latest.json pointed back at an older snapshot, its signature kept.
    latest = json.loads((lake.dr / "latest.json").read_text())
    (lake.dr / "latest.json").write_text(json.dumps({**latest, "snapshot": first}))
    code, _, err = lake.cdc("dr", "restore", "--to", str(lake.root / "r"), "--tables-only")
    assert code == 1
    assert err.startswith("cdc: not sound: latest.json: does not match its signature")
    # A manifest's own (valid) signature copied onto latest.json does not pass either.
    manifest = json.loads(lake.manifest_path(first).read_text())
    (lake.dr / "latest.json").write_text(
        json.dumps({"snapshot": first, "signature": manifest["signature"]})
    )
    assert lake.cdc("dr", "verify")[0] == 1
    # The older, intact snapshot named explicitly still restores.
    code, out, _ = lake.cdc(
        "dr", "restore", "--to", str(lake.root / "r"), "--tables-only", "--snapshot", first
    )
    assert code == 0 and f"restored snapshot {first} into" in out
    # A snapshot taken now does not reuse the altered manifest's checksums: it says so.
    code, _, err = lake.cdc("dr", "snapshot")
    assert code == 0
    assert err == (
        f"cdc: warning: manifest {second}: does not match its signature under dr.manifest_key"
        " (altered after signing): its files are copied again, not trusted\n"
    )


@pytest.mark.parametrize(
    ("damage", "manifest_problem", "latest_problem"),
    [
        (b"{not json", *["not JSON (Expecting property name enclosed in double quotes"] * 2),
        (b"[]", *["not a JSON object"] * 2),
        # Valid JSON of the wrong shape, signed: only the shape check stops it.
        (
            {"snapshot": 1},
            "'snapshot' is missing or not a string",
            "'snapshot' is missing or not a snapshot id",
        ),
    ],
)
def test_a_damaged_manifest_or_latest_json_is_one_line_exit_1(
    lake: Lake, damage: bytes | dict[str, Any], manifest_problem: str, latest_problem: str
) -> None:
    snapshot = lake.snapshot()
    for path, what, kind, problem in (
        (lake.manifest_path(snapshot), f"manifest {snapshot}", "manifest", manifest_problem),
        (lake.dr / "latest.json", "latest.json", "latest", latest_problem),
    ):
        original = path.read_bytes()
        if isinstance(damage, dict):
            path.write_text(json.dumps(sign(damage, KEY.encode(), kind)))  # type: ignore[arg-type]
        else:
            path.write_bytes(damage)
        for argv in (
            ["dr", "verify"],
            ["dr", "restore", "--to", str(lake.root / "r"), "--tables-only"],
        ):
            code, out, err = lake.cdc(*argv)
            assert (code, out) == (1, ""), err
            assert len(err.splitlines()) == 1
            assert err.startswith(f"cdc: not sound: {what}: {problem}"), err
        path.write_bytes(original)
    assert not (lake.root / "r").exists()


def test_a_damaged_earlier_manifest_does_not_stop_the_next_snapshot(lake: Lake) -> None:
    first = lake.snapshot()
    lake.manifest_path(first).write_bytes(b"\x00garbage")
    code, out, err = lake.cdc("dr", "snapshot")
    assert code == 0
    assert err.startswith(f"cdc: warning: manifest {first}: not JSON (")
    assert err.endswith(": its files are copied again, not trusted\n")
    line = out.splitlines()[0]  # every file copied again, none reused
    assert line.endswith("; 0 already there)") and "(0 copied" not in line, line
    assert lake.cdc("dr", "verify")[0] == 0


def test_restore_flags_conflict_and_bad_snapshot_ids_are_refused(lake: Lake) -> None:
    lake.snapshot()
    target = str(lake.root / "r")
    code, _, err = lake.cdc(
        "dr", "restore", "--to", target, "--tables-only", "--repoint-checkpoints"
    )
    assert code == 2 and "not allowed with argument" in err
    code, _, err = lake.cdc("dr", "restore", "--to", target, "--snapshot", "../../x")
    assert (code, err) == (
        2,
        "cdc: error: --snapshot '../../x' is not a snapshot id (like 20260105T020000123456Z)\n",
    )
