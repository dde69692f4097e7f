"""Fixtures of the fault suite: one clean reference run per session, on the session's broker.

Most fault tests share the session's Kafka broker (:func:`tests.conftest.fresh_kafka` gives
it to them with no topics left by earlier tests). A test that stops, kills or wipes the
broker asks for :func:`own_broker` instead: a broker of its own, so the others never see it
go away.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cdc.pipeline.queries import run_pipelines
from cdc.runtime.broker import EmbeddedBroker
from tests.support.faults import (
    PIPELINE,
    Reference,
    base_stream,
    produce,
    read_tables,
    settings,
)
from tests.support.kafka import delete_all_topics


@pytest.fixture()
def own_broker() -> Iterator[EmbeddedBroker]:
    """A Kafka broker of this test's own, for tests that restart, kill or wipe it."""
    with EmbeddedBroker.start_on_free_port() as b:
        yield b


@pytest.fixture(scope="session")
def reference(
    spark: Any, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    """Clean, uninterrupted in-process run over :func:`base_stream` (same batch size).

    Session-scoped fixtures are set up before function-scoped ones, so a test's
    ``fresh_kafka`` empties the cluster again after this run.
    """
    root = tmp_path_factory.mktemp("reference")
    delete_all_topics(kafka_bootstrap)  # fresh_kafka is function-scoped: not usable here
    sent = produce(kafka_bootstrap, base_stream())
    clean = settings(kafka_bootstrap, root)
    run_pipelines(spark, clean, [PIPELINE], available_now=True)
    return Reference(sent, read_tables(clean))
