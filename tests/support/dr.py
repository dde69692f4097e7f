"""The DR manifest key of the tests: a secret reference to an environment variable."""

from __future__ import annotations

import pytest

__all__ = ["MANIFEST_KEY", "MANIFEST_KEY_ENV", "manifest_key"]

MANIFEST_KEY_ENV = "DR_TEST_MANIFEST_KEY"
"""Not ``CDC_DR_*``: that prefix would be read as a ``dr.*`` setting, not as the key."""
MANIFEST_KEY = "9f1c" * 16


def manifest_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Put the key in the environment; returns the ``--set`` that points ``dr.manifest_key``
    at it."""
    monkeypatch.setenv(MANIFEST_KEY_ENV, MANIFEST_KEY)
    return f"dr.manifest_key=env:{MANIFEST_KEY_ENV}"
