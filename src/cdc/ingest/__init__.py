"""From Kafka records to change events: the registry, the contracts, decoding, producing.

Owns the schema registry (:mod:`cdc.ingest.registry`: file and HTTP registries, Confluent
framing, compatibility), the topic contracts and their rules (:mod:`cdc.ingest.contracts`),
the columnar decoder the Kafka source runs on the executors (:mod:`cdc.ingest.decoder`), a
decoded batch split into bronze, quarantine and SCD2 change events (:mod:`cdc.ingest.changes`)
and ``cdc produce`` (:mod:`cdc.ingest.produce`). It may import :mod:`cdc.runtime`, :mod:`cdc.core`,
:mod:`cdc.config` and :mod:`cdc.errors`; never a Delta table (that is :mod:`cdc.store`) nor a
pipeline.
"""

from __future__ import annotations

__all__: list[str] = []
