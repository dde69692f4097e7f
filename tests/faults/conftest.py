"""Fixtures of the fault suite: a broker per test and one clean reference run per session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cdc.broker import EmbeddedBroker
from cdc.pipelines import run_pipelines
from tests.faults.harness import PIPELINE, Sent, Tables, base_stream, produce, read_tables, settings


@dataclass(frozen=True)
class Reference:
    """The base stream as produced on a fresh broker and the tables of a clean run over it."""

    sent: list[Sent]
    tables: Tables


@pytest.fixture()
def broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker of this test's own (in memory: a restart loses every record)."""
    with EmbeddedBroker.start_on_free_port() as b:
        yield b


@pytest.fixture(scope="session")
def reference(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Clean, uninterrupted in-process run over :func:`base_stream` (same batch size)."""
    root = tmp_path_factory.mktemp("reference")
    with EmbeddedBroker.start_on_free_port() as b:
        sent = produce(b.bootstrap, base_stream())
        clean = settings(b.bootstrap, root)
        run_pipelines(spark, clean, [PIPELINE], available_now=True)
    return Reference(sent, read_tables(clean))
