"""The local configuration (``config/local.yaml``) pointed at a test broker and a temporary lake.

The same overrides serve in-process runs (:func:`make_settings`) and ``cdc`` subprocesses
(:func:`cli_args`), so both see the same pipelines, lake and checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from cdc.config.settings import Settings, load_settings
from tests.support.paths import REPO_ROOT

__all__ = ["cli_args", "local_settings", "make_settings", "overrides"]


def overrides(bootstrap: str, root: Path, *extra: str) -> list[str]:
    """``--set`` overrides: the broker, ``<root>/lake``, ``<root>/checkpoints``, then ``extra``."""
    return [
        f"kafka.bootstrap_servers={bootstrap}",
        f"lake.root={root / 'lake'}",
        f"checkpoints.root={root / 'checkpoints'}",
        *extra,
    ]


def make_settings(bootstrap: str, root: Path, *extra: str) -> Settings:
    """The local settings with :func:`overrides` (``CDC_*`` variables apply too)."""
    return load_settings(
        "local", overrides=overrides(bootstrap, root, *extra), config_dir=REPO_ROOT / "config"
    )


def cli_args(bootstrap: str, root: Path, *extra: str) -> list[str]:
    """The ``cdc`` arguments that give a subprocess the settings of :func:`make_settings`."""
    args = ["--config-dir", str(REPO_ROOT / "config")]
    for item in overrides(bootstrap, root, *extra):
        args += ["--set", item]
    return args


def local_settings(root: Path, *overrides: str) -> Settings:
    """``config/local.yaml`` with ``lake.root`` and ``checkpoints.root`` under ``root``, for
    tests that need no server (no ``CDC_*`` variable of the shell leaking in).

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
