"""Operating the pipelines: status, replay, verify, SLA checks, metrics.

Owns ``cdc status`` (:mod:`cdc.ops.status`), ``cdc replay`` and its diff
(:mod:`cdc.ops.replay`, :mod:`cdc.ops.replay_diff`), ``cdc verify``
(:mod:`cdc.ops.verify`), ``cdc sla check`` (:mod:`cdc.ops.sla`) and the metrics and health
endpoints (:mod:`cdc.ops.metrics`). It may import :mod:`cdc.pipeline` and everything below
it; not the companions, gold, warehouses, governance, lineage or the CLI.
"""

from __future__ import annotations

__all__: list[str] = []
