"""Whose a checkpoint is, and what its tables must still hold (no broker, no Spark).

:func:`cdc.pipeline.checkpoint_guard.check_checkpoint_belongs` against real Delta tables and
checkpoint files; the broker is "unreachable" (``broker=False``), so the repair names no
offsets. The runs through ``cdc run`` are in ``tests/integration/test_checkpoint_guard.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from cdc.config.lake import pipeline_tables, txn_app_id
from cdc.config.settings import Settings
from cdc.errors import DataLossError
from cdc.pipeline.batch import BatchStats
from cdc.pipeline.batch_local import LocalBatchWriter
from cdc.pipeline.checkpoint import (
    IDENTITY_FILE,
    TXN_BASE_FILE,
    CheckpointIdentity,
    TableMark,
    read_identity,
    write_identity,
    write_topic_id,
)
from cdc.pipeline.checkpoint_guard import (
    check_checkpoint_belongs,
    checkpoint_problem,
    identity_now,
    record_identity,
    table_log_states,
)
from tests.support.local_settings import local_settings

NAME = "crm_contacts"
T = "crm.contacts"
NO_BROKER = (
    "cdc replay --pipeline crm_contacts --offsets at the first offsets the tables do not hold"
    " (the broker is unreachable: a run names them)"
)


def _settings(tmp_path: Path) -> Settings:
    return local_settings(tmp_path)


def _commit(settings: Settings, role: str, version: int) -> str:
    uri = pipeline_tables(settings, settings.pipeline(NAME))[role]
    write_deltalake(
        uri,
        pa.table({"topic": [T], "partition": pa.array([0], pa.int32()), "offset": [version]}),
        mode="append",
        commit_properties=CommitProperties(
            app_transactions=[Transaction(txn_app_id(NAME, role, uri), version)]
        ),
    )
    return uri


def _check(settings: Settings) -> None:
    checkpoint = settings.checkpoint_path(NAME)
    states = table_log_states(settings, NAME)
    check_checkpoint_belongs(settings, NAME, checkpoint, states, broker=False)


def _write_offsets(checkpoint: Path, topic: str) -> None:
    for log in ("offsets", "commits"):
        (checkpoint / log).mkdir(parents=True, exist_ok=True)
    entry = ["v1", "{}", json.dumps({topic: {"0": 4}})]
    (checkpoint / "offsets" / "0").write_text("\n".join(entry))
    (checkpoint / "commits" / "0").write_text("v1\n{}")


def test_the_identity_records_each_tables_id_and_version_and_keeps_the_higher(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    bronze = _commit(settings, "bronze", 3)
    silver = _commit(settings, "silver", 2)
    checkpoint = settings.checkpoint_path(NAME)
    record_identity(settings, NAME, checkpoint, table_log_states(settings, NAME))
    identity = read_identity(checkpoint)
    assert identity == CheckpointIdentity(
        NAME,
        T,
        {
            "bronze": TableMark(bronze, str(DeltaTable(bronze).metadata().id), 3),
            "silver": TableMark(silver, str(DeltaTable(silver).metadata().id), 2),
        },
    )
    assert json.loads((Path(checkpoint) / IDENTITY_FILE).read_text())["pipeline"] == NAME
    # A batch recorded a higher version than the table's log says (a write of another app
    # id in between does not lower it): the identity keeps the higher one.
    mark = TableMark(bronze, identity.tables["bronze"].table_id, 9)
    higher = CheckpointIdentity(NAME, T, {**identity.tables, "bronze": mark})
    again = identity_now(settings, NAME, higher, table_log_states(settings, NAME))
    assert again.tables["bronze"].txn_version == 9


def test_a_sound_checkpoint_passes(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _commit(settings, "bronze", 3)
    checkpoint = settings.checkpoint_path(NAME)
    record_identity(settings, NAME, checkpoint, table_log_states(settings, NAME))
    _commit(settings, "bronze", 4)  # the tables go on; the checkpoint knew less
    _write_offsets(Path(checkpoint), T)  # its batch 0 is txn version 4
    (Path(checkpoint) / TXN_BASE_FILE).write_text('{"base": 4}')
    _check(settings)
    assert checkpoint_problem(settings, NAME, broker=False) is None


def test_another_pipelines_identity_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    checkpoint = settings.checkpoint_path(NAME)
    write_identity(checkpoint, CheckpointIdentity("crm_accounts", "crm.accounts", {}))
    with pytest.raises(DataLossError) as info:
        _check(settings)
    assert str(info.value) == (
        f"pipeline {NAME}: checkpoint {checkpoint} belongs to pipeline crm_accounts (topic"
        f" crm.accounts), not to pipeline {NAME} (topic {T}): a run would go on from another"
        " pipeline's position and skip or lose this one's records. Put the pipeline's own"
        f" checkpoint back, or land exactly what the tables miss: {NO_BROKER}"
    )


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("where", ["offsets", "topic file"])
def test_a_checkpoints_offsets_must_name_the_pipelines_topic(
    tmp_path: Path, where: str, identity: bool
) -> None:
    """All a checkpoint made before the identity file is checked by; with the identity, its
    offsets copied in from elsewhere are refused too."""
    settings = _settings(tmp_path)
    checkpoint = Path(settings.checkpoint_path(NAME))
    _write_offsets(checkpoint, T)
    if identity:
        write_identity(checkpoint, CheckpointIdentity(NAME, T, {}))
    _check(settings)  # its own: accepted
    if where == "offsets":
        _write_offsets(checkpoint, "crm.accounts")
    else:
        write_topic_id(checkpoint, "crm.accounts", "some-id")
    refused = r"holds offsets of topic crm\.accounts, not of the pipeline's topic crm\.contacts: "
    with pytest.raises(DataLossError, match=refused):
        _check(settings)


@pytest.mark.parametrize("damage", ["deleted", "recreated", "moved"])
def test_a_table_that_lost_the_checkpoints_commits_is_refused(
    tmp_path: Path, damage: str
) -> None:
    settings = _settings(tmp_path)
    bronze = _commit(settings, "bronze", 3)
    _commit(settings, "quarantine", 1)
    checkpoint = settings.checkpoint_path(NAME)
    record_identity(settings, NAME, checkpoint, table_log_states(settings, NAME))
    identity = read_identity(checkpoint)
    assert identity is not None
    old_id = identity.tables["bronze"].table_id
    if damage == "moved":  # the lake was copied elsewhere: the same tables, by their ids
        moved = _settings(tmp_path / "elsewhere")
        for role in ("bronze", "quarantine"):
            shutil.copytree(
                pipeline_tables(settings, settings.pipeline(NAME))[role],
                pipeline_tables(moved, moved.pipeline(NAME))[role],
            )
        shutil.copytree(tmp_path / "cp", tmp_path / "elsewhere" / "cp")
        _check(moved)
        return
    shutil.rmtree(bronze)
    if damage == "recreated":
        _commit(settings, "bronze", 5)
    with pytest.raises(DataLossError) as info:
        _check(settings)
    new_id = str(DeltaTable(bronze).metadata().id) if damage != "deleted" else None
    problem = {
        "deleted": f"bronze table {bronze} does not exist, but the checkpoint's batches committed"
        " to it up to txn version 3",
        "recreated": f"bronze table {bronze} is another table than the checkpoint's (Delta table"
        f" id {new_id}, not {old_id}: deleted and created again, or replaced)",
    }[damage]
    assert str(info.value) == (
        f"pipeline {NAME}: checkpoint {checkpoint} is ahead of its tables ({problem}): a run"
        " would go on from the checkpoint's position, and the records of the missing commits"
        " would be in no table. Restore the tables (`cdc dr restore`), or land exactly what"
        f" they miss: {NO_BROKER}"
    )
    assert checkpoint_problem(settings, NAME, broker=False) == str(info.value)


def test_a_table_restored_to_an_older_version_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    bronze = _commit(settings, "bronze", 3)
    backup = tmp_path / "backup"
    shutil.copytree(bronze, backup)
    _commit(settings, "bronze", 4)
    checkpoint = settings.checkpoint_path(NAME)
    record_identity(settings, NAME, checkpoint, table_log_states(settings, NAME))
    shutil.rmtree(bronze)
    shutil.copytree(backup, bronze)  # the same table (its id), at an older version
    with pytest.raises(DataLossError) as info:
        _check(settings)
    assert (
        f"is ahead of its tables (bronze table {bronze} holds the pipeline's commits up to 3"
        " only, the checkpoint's up to txn version 4 (restored to an older state?)): "
    ) in str(info.value)


def test_each_batch_that_lands_records_notes_its_version(tmp_path: Path) -> None:
    """The writer notes bronze's and quarantine's txn version after every batch that wrote
    there (read once for the id of a table it created), and nothing after an empty batch."""
    settings = _settings(tmp_path)
    checkpoint = settings.checkpoint_path(NAME)
    writer = LocalBatchWriter(NAME, settings.pipeline(NAME), settings, checkpoint)
    bronze = _commit(settings, "bronze", 0)
    writer._note_commits(BatchStats(batch_id=0, bronze_rows=1))
    identity = read_identity(checkpoint)
    assert identity is not None
    table_id = str(DeltaTable(bronze).metadata().id)
    assert identity.tables == {"bronze": TableMark(bronze, table_id, 0)}
    before = (Path(checkpoint) / IDENTITY_FILE).stat().st_mtime_ns
    writer._note_commits(BatchStats(batch_id=1))  # nothing landed
    assert (Path(checkpoint) / IDENTITY_FILE).stat().st_mtime_ns == before
    writer._note_commits(BatchStats(batch_id=2, bronze_rows=3))
    after = read_identity(checkpoint)
    assert after is not None and after.tables["bronze"].txn_version == 2
