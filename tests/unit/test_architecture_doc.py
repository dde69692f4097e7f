"""docs/architecture.md names only modules and files that exist.

Every dotted path of ``cdc`` or ``cdc_demo`` the document names (``cdc.pipeline.batch_local``,
``cdc.core.scd2.apply_scd2``) must import, down to its last attribute, and every path of a
source file (``src/cdc/...py``, ``tests/...py``) must be a file of the repository; so a module
that moves or a function renamed without the document fails here.
"""

from __future__ import annotations

import importlib
import re

import pytest

from tests.support.paths import REPO_ROOT

DOCUMENT = REPO_ROOT / "docs" / "architecture.md"
DOTTED = re.compile(r"(?<![\w./-])(cdc(?:_demo)?(?:\.\w+)+)")
FILE = re.compile(r"(?<![\w./-])((?:src|tests|batch|streaming|benchmarks)/[\w/.-]+\.py)\b")
COMMIT_FIELDS = {"cdc.operation", "cdc.app_id", "cdc.batch"}
"""Not modules: the commit-metadata fields delta-rs commits of earlier releases carry."""


def _named(pattern: re.Pattern[str]) -> list[str]:
    return sorted(set(pattern.findall(DOCUMENT.read_text())))


def _resolves(dotted: str) -> bool:
    """Whether ``dotted`` is a module, or a module's attribute chain."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def test_the_document_names_modules_and_files() -> None:
    assert len(_named(DOTTED)) > 40 and _named(FILE)  # the patterns still find its names


@pytest.mark.parametrize("dotted", [d for d in _named(DOTTED) if d not in COMMIT_FIELDS])
def test_every_dotted_path_exists(dotted: str) -> None:
    assert _resolves(dotted), f"docs/architecture.md names {dotted}, which does not exist"


@pytest.mark.parametrize("path", _named(FILE))
def test_every_source_file_exists(path: str) -> None:
    assert (REPO_ROOT / path).is_file(), f"docs/architecture.md names {path}, not a file"


def test_a_moved_module_would_be_caught() -> None:
    assert not _resolves("cdc.batch_local")  # the path before the packages
    assert not _resolves("cdc.core.scd2.no_such_function")
    assert _resolves("cdc.core.scd2.apply_scd2")
