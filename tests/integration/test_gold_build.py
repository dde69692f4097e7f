"""``cdc gold build`` as the scheduled job runs it: ``batch/gold_build.py`` in its own process.

Silver is the hand-computed scenario of ``tests/unit/test_gold.py``, written with delta-rs;
the job builds gold, a second run changes nothing, a bad argument is one line with exit code 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gold_scenario import AS_OF, DAILY_REVENUE, SCENARIO, Lake
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration


def gold_build(lake: Lake, *args: str) -> subprocess.CompletedProcess[str]:
    overrides = [item for setting in lake.args for item in ("--set", setting)]
    return subprocess.run(
        [sys.executable, "batch/gold_build.py", *overrides, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "CDC_CONFIG_DIR": str(REPO_ROOT / "config")},
        timeout=300,
    )


def test_the_batch_job_builds_gold_then_finds_nothing_to_do(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.write_all(SCENARIO)

    first = gold_build(lake, "--as-of", AS_OF.isoformat())
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "gold/customer_360: changed",
        "gold/daily_revenue: changed",
        "gold/opportunity_pipeline: changed",
        "gold/customer_features: changed",
    ]
    assert lake.gold("daily_revenue").equals(DAILY_REVENUE)

    again = gold_build(lake)  # the default reference day is the newest fact day: the same
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert len(lines) == 4
    assert all(": unchanged, no new version, " in line for line in lines), lines
    assert all("(as of 2026-03-17)" in line for line in lines), lines

    bad = gold_build(lake, "--table", "customer_360", "--as-of", "yesterday")
    assert bad.returncode == 2
    assert bad.stderr == "cdc: error: --as-of 'yesterday' is not a day (YYYY-MM-DD)\n"
