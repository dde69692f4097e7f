"""A checkpoint that disagrees with its tables stops the run; the named replay resumes.

Behind its tables (deleted, truncated): before this guard, the next run re-read the topic
from the checkpoint's older position, took every batch for "already committed" (the tables
hold those txn versions) and landed none of the records produced since, with exit code 0.

Ahead of its tables (another pipeline's checkpoint copied in; bronze deleted, created again
or restored to an older state behind the checkpoint's back): before the checkpoint recorded
whose it is, `cdc run` went on from the checkpoint's position. Another pipeline's checkpoint
landed none of the new records (then Spark's "Some data may have been lost"); a deleted bronze
was created again with only the new records, exit 0, and `cdc status` showed nothing wrong.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from cdc.cli import main
from cdc.config.lake import table_paths, txn_app_id
from cdc.errors import DataLossError
from cdc.pipeline.checkpoint import IDENTITY_FILE, read_identity
from cdc.pipeline.queries import run_pipelines
from cdc.store import DeltaRsStore
from cdc_demo.data import generate
from tests.support.envelopes import change
from tests.support.kafka import high_watermarks, produce
from tests.support.local_settings import cli_args, make_settings
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = "crm_contacts"


def lines(start: int, n: int) -> list[dict[str, Any]]:
    return [
        change(f"c{i % 5}", "u" if i >= 5 else "c", 1000 * (i + 1), email=f"v{i}@x.io")
        for i in range(start, n)
    ]


@pytest.mark.parametrize(
    ("damage", "repair"),
    [("deleted", "named"), ("truncated", "named"), ("truncated", "earliest")],
)
def test_a_checkpoint_behind_its_tables_stops_the_run_and_a_replay_lands_the_rest_once(
    spark: Any,
    fresh_kafka: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    repair: str,
) -> None:
    """``earliest`` is the obvious repair a user reaches for: it once appended the records
    a truncated checkpoint had lost track of a second time (298 duplicates in bronze)."""
    settings = make_settings(
        fresh_kafka, tmp_path, f"pipelines.{PIPELINE}.max_records_per_trigger=6"
    )
    produce(fresh_kafka, "crm.contacts", lines(0, 12), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    checkpoint = Path(settings.checkpoint_path(PIPELINE))
    if damage == "deleted":
        shutil.rmtree(checkpoint)
    else:  # the last batch's entries lost (a partial restore, a bad copy)
        last = max(int(p.name) for p in (checkpoint / "offsets").iterdir() if p.name.isdigit())
        for log in ("offsets", "commits"):
            (checkpoint / log / str(last)).unlink()
    produce(fresh_kafka, "crm.contacts", lines(12, 20), tmp_path)

    with pytest.raises(DataLossError) as info:
        run_pipelines(spark, settings, [PIPELINE], available_now=True)
    message = str(info.value)
    assert "\n" not in message
    assert f"checkpoint {checkpoint} " in message
    assert "but the pipeline's tables hold its commits up to txn version" in message
    bronze_uri = table_paths(settings, settings.pipeline(PIPELINE))["bronze"]
    assert read_table(bronze_uri).height == 12  # nothing moved

    # The repair the message names (resume where the tables' records end), or from the start.
    command = re.search(r"cdc replay --pipeline \S+ --offsets '(\S+)'$", message)
    assert command is not None, message
    resume = json.loads(command.group(1))
    assert sum(resume["crm.contacts"].values()) == 12
    position = ["--offsets", command.group(1)] if repair == "named" else ["--earliest"]
    args = ["replay", "--pipeline", PIPELINE, *position, "--progress"]
    code = main([*args, *cli_args(fresh_kafka, tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "(bronze +8, quarantine +0;" in out.out, out.out
    # --progress: a line per batch on stderr.
    assert re.search(rf"^{PIPELINE} batch 0: \d+ records, bronze \+\d+", out.err, re.M), out.err
    bronze = read_table(bronze_uri)
    assert bronze.height == 20  # the 8 new records once, none of the 12 again
    assert bronze.select("partition", "offset").unique().height == 20


def test_a_checkpoint_ahead_of_its_topic_stops_the_run(
    spark: Any, fresh_kafka: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The broker came back from an older state under the same topic id (a restore, an
    unclean leader election): the checkpoint read up to offsets the topic no longer has, and
    new records would take those offsets without the query ever reading them."""
    settings = make_settings(fresh_kafka, tmp_path)
    produce(fresh_kafka, "crm.contacts", lines(0, 12), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    bronze_uri = table_paths(settings, settings.pipeline(PIPELINE))["bronze"]
    first = read_table(bronze_uri).group_by("partition").len()
    counts = dict(first.iter_rows())
    landed = {str(p): counts.get(p, 0) for p in range(3)}  # the topic has 3 partitions
    checkpoint = Path(settings.checkpoint_path(PIPELINE))
    last = max(int(p.name) for p in (checkpoint / "offsets").iterdir() if p.name.isdigit())
    entry = checkpoint / "offsets" / str(last)
    log = entry.read_text().splitlines()
    sources = json.loads(log[2])
    sources["crm.contacts"]["0"] = 40  # what the checkpoint had read before the broker's loss
    entry.write_text("\n".join([*log[:2], json.dumps(sources)]))
    produce(fresh_kafka, "crm.contacts", lines(12, 20), tmp_path)
    end = high_watermarks(fresh_kafka)["0"]

    with pytest.raises(DataLossError) as info:
        run_pipelines(spark, settings, [PIPELINE], available_now=True)
    message = str(info.value)
    assert "\n" not in message
    assert (
        f"checkpoint {checkpoint} is ahead of its topic (crm.contacts/0 at 40 but the"
        f" partition ends at {end}): the broker lost records" in message
    )
    command = re.search(r"cdc replay --pipeline \S+ --offsets '(\S+)'$", message)
    assert command is not None, message
    assert json.loads(command.group(1)) == {"crm.contacts": landed}
    code = main(
        [
            "replay",
            "--pipeline",
            PIPELINE,
            "--offsets",
            command.group(1),
            *cli_args(fresh_kafka, tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    bronze = read_table(bronze_uri)
    assert bronze.height == 20
    assert bronze.select("partition", "offset").unique().height == 20


# --------------------------------------------------------------------------------------------
# A checkpoint ahead of its tables


REPLAY = re.compile(r"cdc replay --pipeline \S+ --offsets '(\S+)'$")
RUN = ("run", "--pipeline", PIPELINE, "--available-now")
STATUS = ("status", "--pipeline", PIPELINE)


def cdc(*args: str, bootstrap: str, root: Path, extra: tuple[str, ...] = ()) -> int:
    """``cdc <args>`` in this process (the CLI's own entry point, exit code returned)."""
    return main([*args, *cli_args(bootstrap, root, *extra)])


def refusal(capsys: pytest.CaptureFixture[str], code: int) -> str:
    """The one ``cdc: error:`` line of a refused run (exit code 2)."""
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("cdc: error: ")]
    assert len(errors) == 1, err
    return errors[0].removeprefix("cdc: error: ")


def replay_named(
    message: str, bootstrap: str, root: Path, extra: tuple[str, ...] = ()
) -> dict[str, dict[str, int]]:
    """Run the replay the message names; return its offsets."""
    command = REPLAY.search(message)
    assert command is not None, message
    args = ("replay", "--pipeline", PIPELINE, "--offsets", command.group(1))
    assert cdc(*args, bootstrap=bootstrap, root=root, extra=extra) == 0
    resume: dict[str, dict[str, int]] = json.loads(command.group(1))
    return resume


def account_lines(count: int) -> list[dict[str, Any]]:
    """``crm.accounts`` lines of the demo data set (another pipeline's topic)."""
    dataset = generate(accounts=count, contacts=1, opportunities=1, orders=1, behavior=1, fx_days=1)
    return list(dataset["crm.accounts"])


def batches(checkpoint: Path) -> int:
    return len([p for p in (checkpoint / "commits").iterdir() if p.name.isdigit()])


@pytest.mark.parametrize("identity", ["recorded", "legacy"])
def test_another_pipelines_checkpoint_is_refused_and_the_named_replay_lands_the_rest(
    spark: Any,
    fresh_kafka: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    identity: str,
) -> None:
    """crm_accounts' checkpoint (more batches than crm_contacts' tables hold commits) copied in
    place of crm_contacts': the run went on from crm_accounts' position, landed none of 100
    new records, exit 0. A checkpoint made before the identity file (``legacy``) is told by
    the topic its offsets name."""
    extra = (
        f"pipelines.{PIPELINE}.max_records_per_trigger=6",
        "pipelines.crm_accounts.max_records_per_trigger=5",
    )
    settings = make_settings(fresh_kafka, tmp_path, *extra)
    produce(fresh_kafka, "crm.contacts", lines(0, 12), tmp_path)
    produce(fresh_kafka, "crm.accounts", account_lines(20), tmp_path)
    run_pipelines(spark, settings, [PIPELINE, "crm_accounts"], available_now=True)
    checkpoint = Path(settings.checkpoint_path(PIPELINE))
    other = Path(settings.checkpoint_path("crm_accounts"))
    assert batches(other) > batches(checkpoint)
    shutil.rmtree(checkpoint)
    shutil.copytree(other, checkpoint)
    if identity == "legacy":
        (checkpoint / IDENTITY_FILE).unlink()
    produce(fresh_kafka, "crm.contacts", lines(12, 112), tmp_path)

    code = cdc(*RUN, bootstrap=fresh_kafka, root=tmp_path, extra=extra)
    message = refusal(capsys, code)
    whose = (
        f"belongs to pipeline crm_accounts (topic crm.accounts), not to pipeline {PIPELINE}"
        " (topic crm.contacts)"
        if identity == "recorded"
        else "holds offsets of topic crm.accounts, not of the pipeline's topic crm.contacts"
    )
    assert message.startswith(
        f"pipeline {PIPELINE}: checkpoint {checkpoint} {whose}: a run would go on from another"
        " pipeline's position and skip or lose this one's records. Put the pipeline's own"
        " checkpoint back, or land exactly what the tables miss: cdc replay --pipeline"
        " crm_contacts --offsets '"
    ), message
    bronze_uri = table_paths(settings, settings.pipeline(PIPELINE))["bronze"]
    assert read_table(bronze_uri).height == 12  # nothing moved
    assert batches(checkpoint) == batches(other)

    resume = replay_named(message, fresh_kafka, tmp_path, extra)
    assert sum(resume["crm.contacts"].values()) == 12  # right after what bronze holds
    bronze = read_table(bronze_uri)
    assert bronze.height == 112
    assert bronze.select("partition", "offset").unique().height == 112
    # The replay's checkpoint is the pipeline's own, and a run accepts it.
    assert cdc(*RUN, bootstrap=fresh_kafka, root=tmp_path, extra=extra) == 0
    recorded = read_identity(checkpoint)
    assert recorded is not None and recorded.pipeline == PIPELINE


def older_copy(uri: str, tmp_path: Path) -> Path:
    backup = tmp_path / "bronze-backup"
    shutil.copytree(uri, backup)
    return backup


@pytest.mark.parametrize(
    ("damage", "writer"),
    [
        ("deleted", "delta-rs"),
        ("deleted", "delta-spark"),
        ("recreated", "delta-rs"),
        ("restored-older", "delta-rs"),
    ],
)
def test_bronze_lost_behind_the_checkpoint_is_refused_shown_by_status_and_replayed(
    spark: Any,
    fresh_kafka: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    writer: str,
) -> None:
    """Bronze deleted (or deleted and created again, or restored to an older copy) while the
    checkpoint was kept: the run created bronze again with only the new records, exit 0,
    and ``cdc status`` showed nothing wrong."""
    extra = (f"pipelines.{PIPELINE}.max_records_per_trigger=6", f"lake.writer={writer}")
    settings = make_settings(fresh_kafka, tmp_path, *extra)
    bronze_uri = table_paths(settings, settings.pipeline(PIPELINE))["bronze"]
    checkpoint = Path(settings.checkpoint_path(PIPELINE))
    produce(fresh_kafka, "crm.contacts", lines(0, 12), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    first = read_table(bronze_uri)
    backup = older_copy(bronze_uri, tmp_path)
    produce(fresh_kafka, "crm.contacts", lines(12, 20), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    recorded = read_identity(checkpoint)
    assert recorded is not None
    mark = recorded.tables["bronze"]
    store = DeltaRsStore()
    state = store.log_state(bronze_uri, txn_app_id(PIPELINE, "bronze", bronze_uri))
    assert state is not None and (mark.table_id, mark.txn_version) == (
        state.table_id,
        state.txn_version,
    )
    shutil.rmtree(bronze_uri)
    if damage == "recreated":  # a table of one of the old rows, created anew
        from deltalake import write_deltalake

        write_deltalake(bronze_uri, first.head(1).to_arrow())
    elif damage == "restored-older":
        shutil.copytree(backup, bronze_uri)
    produce(fresh_kafka, "crm.contacts", lines(20, 24), tmp_path)
    before = {p.name for p in (checkpoint / "offsets").iterdir()}

    code = cdc(*RUN, bootstrap=fresh_kafka, root=tmp_path, extra=extra)
    message = refusal(capsys, code)
    problem = {
        "deleted": (
            f"bronze table {bronze_uri} does not exist, but the checkpoint's batches committed"
            f" to it up to txn version {mark.txn_version}"
        ),
        "recreated": f"bronze table {bronze_uri} is another table than the checkpoint's (Delta"
        " table id ",
        "restored-older": f"bronze table {bronze_uri} holds the pipeline's commits up to"
        f" {txn_of(backup, bronze_uri)} only, the checkpoint's up to txn version"
        f" {mark.txn_version} (restored to an older state?)",
    }[damage]
    assert message.startswith(
        f"pipeline {PIPELINE}: checkpoint {checkpoint} is ahead of its tables ({problem}"
    ), message
    assert message.split("): ", 1)[1].startswith(
        "a run would go on from the checkpoint's position, and the records of the missing"
        " commits would be in no table. Restore the tables (`cdc dr restore`), or land exactly"
        " what they miss: cdc replay --pipeline crm_contacts --offsets '"
    ), message
    assert {p.name for p in (checkpoint / "offsets").iterdir()} == before  # nothing read

    # `cdc status` shows it, with the same repair.
    assert cdc(*STATUS, bootstrap=fresh_kafka, root=tmp_path, extra=extra) == 0
    out = capsys.readouterr().out
    assert f"  checkpoint  REFUSED at the next start: {message}\n" in out, out

    replay_named(message, fresh_kafka, tmp_path, extra)
    bronze = read_table(bronze_uri)
    assert bronze.height == 24, bronze  # every record once, the lost ones again
    assert bronze.select("partition", "offset").unique().height == 24
    assert cdc(*STATUS, bootstrap=fresh_kafka, root=tmp_path, extra=extra) == 0
    assert "REFUSED" not in capsys.readouterr().out


def txn_of(table: Path, uri: str) -> int | None:
    return DeltaRsStore().txn_version(str(table), txn_app_id(PIPELINE, "bronze", uri))


def test_a_checkpoint_from_before_the_identity_file_keeps_working_and_gets_one(
    spark: Any, fresh_kafka: str, tmp_path: Path
) -> None:
    settings = make_settings(fresh_kafka, tmp_path)
    produce(fresh_kafka, "crm.contacts", lines(0, 12), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    checkpoint = Path(settings.checkpoint_path(PIPELINE))
    made = read_identity(checkpoint)
    (checkpoint / IDENTITY_FILE).unlink()
    produce(fresh_kafka, "crm.contacts", lines(12, 20), tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    bronze_uri = table_paths(settings, settings.pipeline(PIPELINE))["bronze"]
    assert read_table(bronze_uri).height == 20
    again = read_identity(checkpoint)
    assert made is not None and again is not None
    assert again.tables["bronze"].table_id == made.tables["bronze"].table_id
    assert (again.tables["bronze"].txn_version or 0) > (made.tables["bronze"].txn_version or 0)
