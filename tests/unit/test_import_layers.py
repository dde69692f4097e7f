"""The layers of ``src/`` hold: import-linter's contracts (``pyproject.toml``,
``[tool.importlinter]``) pass on the code, and fail on a copy given one import that runs back
up. ``make lint`` runs the same contracts; this shows the check can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the tree at ``root`` (its ``src`` first on the path, no cache)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_code_keeps_every_import_contract() -> None:
    result = _lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_from_a_lower_layer_back_up_fails(tmp_path: Path) -> None:
    shutil.copytree(
        REPO_ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    ranges = tmp_path / "src" / "cdc" / "core" / "ranges.py"
    ranges.write_text(ranges.read_text() + "\nfrom cdc.pipeline.landed import landed_ranges\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "cdc.core is not allowed to import cdc.pipeline" in result.stdout
    assert "cdc.core.ranges -> cdc.pipeline.landed" in result.stdout
