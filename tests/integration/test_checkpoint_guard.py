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
from tests.integration.test_pipeline_e2e import change, make_settings, produce
from tests.integration.test_replay import cli_args
from tests.support.tables import read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = "crm_contacts"


def lines(start: int, n: int) -> list[dict[str, Any]]:
    return [
        change(f"c{i % 5}", "u" if i >= 5 else "c", 1000 * (i + 1), email=f"v{i}@x.io")
        for i in range(start, n)
    ]


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_checkpoint_behind_its_tables_stops_the_run_and_the_named_replay_lands_the_rest(
    spark: Any, fresh_kafka: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
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

    # The repair the message names: resume right after what the tables hold.
    command = re.search(r"cdc replay --pipeline \S+ --offsets '(\S+)'$", message)
    assert command is not None, message
    resume = json.loads(command.group(1))
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
    assert bronze.height == 20  # the 8 new records once, none of the 12 again
    assert bronze.select("partition", "offset").unique().height == 20
    assert sum(resume["crm.contacts"].values()) == 12
