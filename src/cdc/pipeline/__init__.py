"""The streaming pipelines: one query per pipeline, one micro-batch at a time.

Owns the query lifecycle (:mod:`cdc.pipeline.queries`), Spark's Kafka source decoded on the
executors (:mod:`cdc.pipeline.kafka_source`), the micro-batch skeleton
(:mod:`cdc.pipeline.batch`) and its two writers (:mod:`cdc.pipeline.batch_local` on delta-rs,
:mod:`cdc.pipeline.batch_spark` on delta-spark), expectations applied per batch
(:mod:`cdc.pipeline.expectations`), the after-batch invariant check
(:mod:`cdc.pipeline.batch_check`), the checkpoint's files (:mod:`cdc.pipeline.checkpoint`)
and the guard that checks them against the tables and the topic
(:mod:`cdc.pipeline.checkpoint_guard`), what the tables hold (:mod:`cdc.pipeline.landed`),
the topic's identity (:mod:`cdc.pipeline.topic_identity`), refilled logs
(:mod:`cdc.pipeline.refill`) and Kafka data loss (:mod:`cdc.pipeline.kafka_loss`). It may
import :mod:`cdc.ingest`, :mod:`cdc.store` and everything below them; never the operations,
companions, gold, warehouses, governance, lineage or the CLI.
"""

from __future__ import annotations

__all__: list[str] = []
