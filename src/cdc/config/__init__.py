"""Typed settings and where they put things: the bottom layer above :mod:`cdc.errors`.

Owns the settings model (:mod:`cdc.config.settings`: files, ``--set``, ``CDC_*`` variables,
secret references), the librdkafka to Java client translation
(:mod:`cdc.config.kafka_clients`), the expectation rules as settings
(:mod:`cdc.config.expectations`), where a pipeline's tables live and the app id its writes
carry (:mod:`cdc.config.lake`) and the generated configuration reference
(:mod:`cdc.config.reference`). It may import :mod:`cdc.errors` and libraries (pydantic,
PyYAML; boto3 and Polars where they are used), never another package of :mod:`cdc`.
"""

from __future__ import annotations

__all__: list[str] = []
