"""The gold layer: business tables built from silver by ``cdc gold build``.

* ``gold/customer_360``: one row per account: its current contacts, open pipeline, revenue
  (lifetime and 90 days) in the reporting currency, last engagement;
* ``gold/daily_revenue``: orders and revenue per order day, region and currency;
* ``gold/opportunity_pipeline``: the pipeline at each month's end, per stage;
* ``gold/customer_features``: ML features per account and as-of day, point-in-time correct.

Pure computations live in :mod:`cdc.gold.frames` (point-in-time joins, FX, order states),
:mod:`cdc.gold.tables` (the tables) and :mod:`cdc.gold.refresh` (incremental scopes); reading
silver and writing Delta in :mod:`cdc.gold.build`. Consumers: ``docs/guides/consumption-layer.md``
and ``docs/guides/ml-features.md``.
"""

from __future__ import annotations

from cdc.gold.build import GoldResult, build_gold, gold_path, parse_day
from cdc.gold.tables import GOLD_KEYS, GOLD_SCHEMAS, GOLD_TABLES

__all__ = [
    "GOLD_KEYS",
    "GOLD_SCHEMAS",
    "GOLD_TABLES",
    "GoldResult",
    "build_gold",
    "gold_path",
    "parse_day",
]
