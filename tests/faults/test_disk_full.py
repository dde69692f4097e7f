"""A full disk under the lake: the run stops with one line, and no Rust panic reaches the user.

delta-rs's worker threads panic when a write fails half-way ("thread 'tokio-rt-worker'
panicked at ... Already shut down", plus a backtrace under ``RUST_BACKTRACE``) and Rust
prints that straight to the terminal, above the error the service reports. The lake here is
a 1 MiB tmpfs, mounted in a private mount namespace (``unshare``) so nothing outlives the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.faults import base_builder, cdc_command, produce, run_env
from tests.support.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MOUNT_AND_RUN = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'


def test_a_full_disk_is_one_line_without_rust_panic_output(
    fresh_kafka: str, tmp_path: Path
) -> None:
    assert shutil.which("unshare"), "util-linux's unshare is needed to mount a small disk"
    builder = base_builder()
    for i in range(300):  # ~2.4 MB of incompressible text: more than the 1 MiB disk holds
        builder.upsert(f"c{i % 20:02d}", last_name=os.urandom(4000).hex())
    produce(fresh_kafka, builder.recs)
    lake = tmp_path / "lake"
    lake.mkdir()
    command = cdc_command(["run", "--available-now"], fresh_kafka, tmp_path, ())
    result = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", MOUNT_AND_RUN, str(lake), *command],
        capture_output=True,
        text=True,
        env={**run_env(None), "RUST_BACKTRACE": "1"},
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr
    assert "panicked" not in result.stderr and "backtrace" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # The progress line, then the error: nothing else (the JVM's start banner is filtered).
    progress, error = result.stderr.strip().splitlines()
    assert progress == "running crm_contacts (available-now, env local)"
    assert error.startswith("cdc: error: pipeline crm_contacts failed: TableWriteError: "), error
    assert error.endswith("No space left on device (os error 28)"), error
