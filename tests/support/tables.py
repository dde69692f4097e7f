"""Read Delta tables in tests whoever wrote them (deletion vectors included)."""

from __future__ import annotations

import polars as pl

from cdc.store.delta_rs import DeltaRsStore

__all__ = ["WRITERS", "read_table"]

WRITERS = ("delta-rs", "delta-spark")
"""Both table writers: suites that prove the core run on each."""


def read_table(uri: str) -> pl.DataFrame:
    """The whole table as Polars (through a query, so deletion vectors are honoured)."""
    table = DeltaRsStore().read(uri)
    assert table is not None, f"no Delta table at {uri}"
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame
