"""Session fixtures: real processes started once per test session.

Set ``CDC_TEST_BOOTSTRAP`` to point the integration tests at an existing Kafka cluster
instead of the embedded Tansu broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REGISTRY_PATH = REPO_ROOT / "schemas" / "avro"
CONTRACTS_PATH = REPO_ROOT / "schemas" / "contracts.yaml"


@pytest.fixture(scope="session")
def registry_path() -> Path:
    return REGISTRY_PATH


@pytest.fixture(scope="session")
def contracts_path() -> Path:
    return CONTRACTS_PATH


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real broker: ``CDC_TEST_BOOTSTRAP`` or an embedded Tansu."""
    existing = os.environ.get("CDC_TEST_BOOTSTRAP")
    if existing:
        yield existing
        return
    from cdc.broker import EmbeddedBroker

    with EmbeddedBroker.start_on_free_port() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def spark():  # type: ignore[no-untyped-def]
    """One SparkSession for the whole test session (starting Spark costs seconds)."""
    from cdc.spark import build_session

    session = build_session(app_name="cdc-tests", master="local[2]")
    yield session
    session.stop()
