"""Pure logic: frames and values in, frames and values out.

Owns the order of a key's changes (:mod:`cdc.core.sequence`: source positions per connector,
their encoding, the sequence checks), the SCD2 fold (:mod:`cdc.core.scd2`), the invariant
rules (:mod:`cdc.core.invariants`), offset-range arithmetic (:mod:`cdc.core.ranges`) and
Kafka offsets as data (:mod:`cdc.core.offsets`). It may import :mod:`cdc.config` (for
settings types) and :mod:`cdc.errors`, Polars and PyArrow; never a table, Kafka, Spark,
deltalake or delta (import-linter holds it to that).
"""

from __future__ import annotations

__all__: list[str] = []
