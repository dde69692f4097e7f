"""DR end to end: snapshot (incremental), verify (and a corrupted copy caught), the lake
wiped, restore, and the pipeline resumes streaming into the restored tables with nothing lost:
the records the snapshot missed are re-read from Kafka and land once."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.cli import main
from cdc.pipeline.queries import run_pipelines
from tests.support.dr import manifest_key
from tests.support.envelopes import change
from tests.support.kafka import produce
from tests.support.local_settings import cli_args, make_settings
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PIPELINE = "crm_contacts"
AUDIT = ["_ingested_at", "_batch_id", "_topic_id"]


def _contacts(start: int, n: int, op: str = "c") -> list[dict[str, Any]]:
    return [change(f"c{i % 6}", op, 1000 * (i + 1), email=f"c{i}@x.io") for i in range(start, n)]


def _tables(root: Path) -> dict[str, pl.DataFrame]:
    bronze = read_table(str(root / "bronze" / "crm_contacts"))
    silver = read_table(str(root / "silver" / "dim_contact"))
    return {
        "bronze": bronze.drop(AUDIT).sort("partition", "offset"),
        "silver": silver.drop([c for c in AUDIT if c in silver.columns]).sort(
            "contact_id", "valid_from"
        ),
    }


@pytest.mark.parametrize("writer", ["delta-rs", "delta-spark"])
def test_snapshot_wipe_restore_and_resume_loses_nothing(
    spark: Any,
    fresh_kafka: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    writer: str,
) -> None:
    """On delta-spark the updates leave deletion vectors: their files travel too."""
    dr = tmp_path / "dr"
    extra = f"lake.writer={writer}"
    args = cli_args(fresh_kafka, tmp_path, extra, manifest_key(monkeypatch), f"dr.location={dr}")
    settings = make_settings(fresh_kafka, tmp_path, extra)
    lake = Path(settings.lake.root)
    produce(fresh_kafka, "crm.contacts", _contacts(0, 6), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)

    started = time.monotonic()
    assert main(["dr", "snapshot", *args]) == 0
    snapshot_seconds = time.monotonic() - started
    out = capsys.readouterr().out
    assert "bronze/crm_contacts: version 0, 6 rows, " in out
    assert "silver/dim_contact: version 0, 6 rows, " in out
    # Incremental: a second snapshot of unchanged tables copies nothing.
    assert main(["dr", "snapshot", *args]) == 0
    again = capsys.readouterr().out
    assert all("(0 copied, 0 bytes; " in line for line in again.splitlines()[:-1]), again
    snapshot_taken = time.time()

    # Records after the snapshot: in the tables, not in the snapshot.
    produce(fresh_kafka, "crm.contacts", _contacts(6, 10, "u"), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    assert main(["dr", "snapshot", *args]) == 0  # the updates, as a second snapshot
    capsys.readouterr()
    produce(fresh_kafka, "crm.contacts", _contacts(10, 12, "u"), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)  # after the last snapshot
    if writer == "delta-spark":
        assert list((dr / "tables" / "silver" / "dim_contact").glob("deletion_vector_*.bin"))
    assert main(["dr", "verify", *args]) == 0
    assert capsys.readouterr().out.strip().endswith(": sound")

    # A damaged copy of the DR location is caught.
    damaged = tmp_path / "dr-damaged"
    shutil.copytree(dr, damaged)
    victim = next((damaged / "tables" / "bronze" / "crm_contacts").glob("*.parquet"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["dr", "verify", "--location", str(damaged), *args]) == 1
    assert f"problem: bronze/crm_contacts: {victim.name} does not match its checksum" in (
        capsys.readouterr().out
    )

    # The disaster: the lake is gone (the checkpoints survive, ahead of the snapshot).
    shutil.rmtree(lake)
    produce(fresh_kafka, "crm.contacts", _contacts(12, 15), tmp_path)
    disaster = time.time()
    started = time.monotonic()
    assert main(["dr", "restore", "--to", str(lake), *args]) == 0
    out = capsys.readouterr().out
    assert "bronze/crm_contacts: restored at version 1" in out
    # Into the configured lake root: the restored pipeline is re-pointed, and says so.
    assert f"{PIPELINE}: re-pointed at {lake}: replay prepared from " in out
    assert f"previous checkpoint kept as {settings.checkpoints.root}/{PIPELINE}.replaced-" in out
    assert main(["run", "--pipeline", PIPELINE, "--available-now", *args]) == 0
    recovery_seconds = time.monotonic() - started
    capsys.readouterr()

    clean = make_settings(fresh_kafka, tmp_path / "clean", extra)
    run_pipelines(spark, clean, [PIPELINE], available_now=True)
    got, want = _tables(lake), _tables(Path(clean.lake.root))
    assert got["bronze"].height == 15
    assert got["bronze"].equals(want["bronze"])  # every record once, none lost
    assert got["silver"].equals(want["silver"])
    print(
        json.dumps(
            {
                "snapshot_seconds": round(snapshot_seconds, 1),
                "snapshot_age_at_disaster_seconds": round(disaster - snapshot_taken, 1),
                "writer": writer,
                "records_lost": 15 - got["bronze"].height,
                "restore_and_catch_up_seconds": round(recovery_seconds, 1),
            }
        )
    )


def test_restore_elsewhere_leaves_the_live_checkpoint_until_asked(
    spark: Any,
    fresh_kafka: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restore beside the live lake never moves a live checkpoint by default; cdc dr
    repoint (or --repoint-checkpoints) does, names each pipeline re-pointed, and the
    pipeline then resumes on the restored lake with nothing lost."""
    dr = tmp_path / "dr"
    args = cli_args(fresh_kafka, tmp_path, manifest_key(monkeypatch), f"dr.location={dr}")
    settings = make_settings(fresh_kafka, tmp_path)
    produce(fresh_kafka, "crm.contacts", _contacts(0, 6), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    assert main(["dr", "snapshot", *args]) == 0
    produce(fresh_kafka, "crm.contacts", _contacts(6, 10, "u"), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)  # the live lake is ahead
    checkpoint = Path(settings.checkpoint_path(PIPELINE))
    live = {p: p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}
    capsys.readouterr()

    beside = tmp_path / "beside"
    assert main(["dr", "restore", "--to", str(beside), *args]) == 0
    out = capsys.readouterr().out
    assert {p: p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()} == live
    assert not list(checkpoint.parent.glob(f"{PIPELINE}.replaced-*"))
    (untouched,) = [line for line in out.splitlines() if line.startswith("checkpoints untouched")]
    assert PIPELINE in untouched.split(": ", 1)[1].split(", ")
    assert f"stop them, run cdc dr repoint --to {beside}, then start them" in out

    # Asked later: the pipeline moves to the lake beside, and resumes there, nothing lost.
    assert main(["dr", "repoint", "--to", str(beside), *args]) == 0
    out = capsys.readouterr().out
    (aside,) = checkpoint.parent.glob(f"{PIPELINE}.replaced-*")
    assert f"{PIPELINE}: re-pointed at {beside}: replay prepared from " in out
    assert f"previous checkpoint kept as {aside}" in out
    run = ["run", "--pipeline", PIPELINE, "--available-now", *args]
    assert main([*run, "--set", f"lake.root={beside}"]) == 0
    got = _tables(beside)
    want = _tables(Path(settings.lake.root))
    assert got["bronze"].height == 10
    assert got["bronze"].equals(want["bronze"])
    assert got["silver"].equals(want["silver"])

    # Or in the restore itself: the output names the pipeline re-pointed and what comes next.
    repointed = tmp_path / "repointed"
    assert main(["dr", "restore", "--to", str(repointed), "--repoint-checkpoints", *args]) == 0
    out = capsys.readouterr().out
    assert f"{PIPELINE}: re-pointed at {repointed}: replay prepared from " in out
    assert len(list(checkpoint.parent.glob(f"{PIPELINE}.replaced-*"))) == 2
    assert f"{PIPELINE} now resume from what {repointed} holds: start them with" in out
