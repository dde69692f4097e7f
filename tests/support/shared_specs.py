"""The specification files tests validate against, read from ``../shared/specs``.

They are copies of public specifications at pinned versions, kept beside the project (never in
it). ``CDC_SPECS_DIR`` names another folder holding the same layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

__all__ = ["specs_dir"]


def specs_dir(name: str) -> Path:
    """The folder ``name`` of the shared specifications; a missing one fails the test.

    Args:
        name: a folder under the specifications root, e.g. ``k8s-crds``.

    Returns:
        Its path.
    """
    root = Path(os.environ.get("CDC_SPECS_DIR") or REPO_ROOT.parent / "shared" / "specs")
    folder = root / name
    if not folder.is_dir() or not any(folder.iterdir()):
        pytest.fail(
            f"specification folder {folder} is missing"
            f" (or set CDC_SPECS_DIR to the folder holding {name}/)",
            pytrace=False,
        )
    return folder
