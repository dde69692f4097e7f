"""Typed settings and where they put things: the bottom layer above :mod:`cdc.errors`.

Owns the settings model (:mod:`cdc.config.settings`: files, ``--set``, ``CDC_*`` variables,
secret references, the librdkafka to Java client translation), the expectation rules as
settings (:mod:`cdc.config.expectations`), where a pipeline's tables live and the app id its
writes carry (:mod:`cdc.config.lake`) and the generated configuration reference
(:mod:`cdc.config.reference`). It may import :mod:`cdc.errors`, pydantic and PyYAML only.
"""

from __future__ import annotations

__all__: list[str] = []
