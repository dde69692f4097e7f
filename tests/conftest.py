"""Session fixtures: real processes started once per test session.

One Apache Kafka broker (KRaft, from the JARs ``make install`` fetched) serves the whole
session; tests that want the real topic names start from an empty cluster through
:func:`fresh_kafka`, which deletes every topic the previous test left. Set
``CDC_TEST_BOOTSTRAP`` to point the integration tests at an existing Kafka cluster instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc.ingest.contracts import TopicContract, load_contracts
from cdc.ingest.registry import FileRegistry
from tests.support.kafka import delete_all_topics
from tests.support.paths import CONTRACTS_PATH, REGISTRY_PATH


@pytest.fixture(scope="session")
def registry_path() -> Path:
    return REGISTRY_PATH


@pytest.fixture(scope="session")
def contracts_path() -> Path:
    return CONTRACTS_PATH


@pytest.fixture(scope="module")
def registry(registry_path: Path) -> FileRegistry:
    """The project's file registry (one per test module)."""
    return FileRegistry.load(registry_path)


@pytest.fixture(scope="module")
def contracts(contracts_path: Path) -> dict[str, TopicContract]:
    """The project's topic contracts (one per test module)."""
    return load_contracts(contracts_path)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real broker: ``CDC_TEST_BOOTSTRAP`` or the embedded Kafka."""
    existing = os.environ.get("CDC_TEST_BOOTSTRAP")
    if existing:
        yield existing
        return
    from cdc.runtime.broker import EmbeddedBroker

    with EmbeddedBroker.start_on_free_port() as broker:
        yield broker.bootstrap


@pytest.fixture()
def fresh_kafka(kafka_bootstrap: str) -> str:
    """The session's broker with no topics left by earlier tests (real topic names are free)."""
    delete_all_topics(kafka_bootstrap)
    return kafka_bootstrap


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One SparkSession for the whole test session (starting Spark costs seconds), with the
    OpenLineage Spark agent's JAR when installed (attached only by the runs that report
    lineage: tests/integration/test_lineage_streaming.py)."""
    from cdc.runtime.spark import build_session

    session = build_session(app_name="cdc-tests", master="local[2]", lineage=True)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throwaway database on a real PostgreSQL server for the session (the local cluster,
    started if down; ``CDC_TEST_POSTGRES_DSN`` for another): see ``tests/support/postgres.py``."""
    from tests.support.postgres import postgres_database

    with postgres_database() as database:
        yield database


@pytest.fixture(scope="session")
def governed_postgres() -> Iterator[Any]:
    """A throwaway database for the governance tests: pgaudit loaded (the test fails, saying
    how to install it, when it is not), the owner may create roles and set ``pgaudit.role``,
    and the server log is known: see ``tests/support/postgres.py``."""
    from tests.support.postgres import postgres_database

    with postgres_database(governed=True) as database:
        yield database
