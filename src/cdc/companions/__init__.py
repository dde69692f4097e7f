"""The batch companions of the streaming pipelines: table maintenance and disaster recovery.

Owns ``cdc maintain`` (:mod:`cdc.companions.maintenance`: OPTIMIZE, VACUUM, health) and ``cdc
dr`` (:mod:`cdc.companions.dr`, with the manifest's pure shape and signature in
:mod:`cdc.companions.dr_manifest`). It may import :mod:`cdc.ops` (a restore replays),
:mod:`cdc.gold`, :mod:`cdc.pipeline` and everything below; not the warehouses, governance,
lineage or the CLI.
"""

from __future__ import annotations

__all__: list[str] = []
