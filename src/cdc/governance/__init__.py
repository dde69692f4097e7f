"""Data-access governance: who may read which table, column and row, enforced per target.

Owns the policy of each environment (:mod:`cdc.governance.policy`,
``config/governance/<env>.yaml``), the catalog of every table the service writes with the
classification tags its columns carry (:mod:`cdc.governance.catalog`, tags from the
contracts and the gold lineage), the target-independent resolution of a policy against the
catalog (:mod:`cdc.governance.access`), its pure compilation per target into a desired state,
and the adapters that read a target's actual state, plan the difference, apply it and report
drift (:mod:`cdc.governance.base`; PostgreSQL, Lake Formation, DuckDB audience files,
Snowflake), plus the generated runbook. It may import :mod:`cdc.config.settings`,
:mod:`cdc.ingest.contracts`, :mod:`cdc.ingest.registry`, the writers' pure schema functions
(:mod:`cdc.ingest.changes`, :mod:`cdc.core.scd2`), :mod:`cdc.gold` and :mod:`cdc.warehouse`
(connections); nothing imports it but the CLI.
"""

from __future__ import annotations

__all__: list[str] = []
