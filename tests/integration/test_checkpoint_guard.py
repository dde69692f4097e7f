"""A checkpoint deleted or truncated behind its tables stops the run; the named replay resumes.

Before this guard, the next run re-read the topic from the checkpoint's older position, took
every batch for "already committed" (the tables hold those txn versions) and landed none of
the records produced since, with exit code 0.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from cdc.cli import main
from cdc.errors import DataLossError
from cdc.lake import table_paths
from cdc.pipelines import run_pipelines
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
