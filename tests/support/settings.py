"""Settings for tests that need no server: the repository's ``local`` config, its lake and
checkpoints under a test's folder, no ``CDC_*`` variable of the shell leaking in."""

from __future__ import annotations

from pathlib import Path

from cdc.config import Settings, load_settings
from tests.conftest import REPO_ROOT

__all__ = ["local_settings"]


def local_settings(root: Path, *overrides: str) -> Settings:
    """``config/local.yaml`` with ``lake.root`` and ``checkpoints.root`` under ``root``.

    Args:
        root: the test's folder (``lake/`` and ``cp/`` go below it).
        *overrides: more ``--set`` overrides.
    """
    return load_settings(
        "local",
        [f"lake.root={root / 'lake'}", f"checkpoints.root={root / 'cp'}", *overrides],
        config_dir=REPO_ROOT / "config",
        environ={},
    )
