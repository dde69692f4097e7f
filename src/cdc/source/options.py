"""Typed, validated options of the ``cdc_kafka`` data source (pure parsing, no I/O).

Spark hands a data source its options as strings in a case-insensitive map; :meth:`SourceOptions.
parse` turns them into one frozen value, rejecting unknown keys with the list of valid ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cdc.errors import ConfigError
from cdc.source.offsets import (
    PartitionOffsets,
    StartingPosition,
    parse_ending_offsets,
    parse_starting_position,
)

__all__ = ["KAFKA_PREFIX", "REGISTRY_CLIENT_PREFIX", "SourceOptions"]

KAFKA_PREFIX = "kafka."
"""Options starting with this prefix are librdkafka settings for every consumer."""
REGISTRY_CLIENT_PREFIX = "registry.client."
"""Options starting with this prefix are ``SchemaRegistryClient`` settings (with registry.url)."""

_REQUIRED = ("kafka.bootstrap.servers", "subscribe", "contracts.path")
_VALID = (
    "subscribe",
    "startingOffsets",
    "startingTimestamp",
    "endingOffsets",
    "maxRecordsPerTrigger",
    "maxRecordsPerPartition",
    "minRecordsPerTask",
    "failOnDataLoss",
    "registry.path",
    "registry.url",
    "contracts.path",
    "maxMessageBytes",
    "pollTimeoutMs",
    "fetchBatchSize",
    "fetchTimeoutMs",
)
_CANONICAL = {name.lower(): name for name in _VALID}
# Names from Spark's built-in Kafka source that users will reach for first.
_SPARK_NAMES = {
    "maxoffsetspertrigger": "maxRecordsPerTrigger",
    "kafkaconsumer.polltimeoutms": "pollTimeoutMs",
    "assign": "subscribe",
    "subscribepattern": "subscribe",
}
# librdkafka settings the source owns: it never joins a group nor commits offsets.
_FORCED_KAFKA = {"enable.auto.commit": "false", "enable.auto.offset.store": "false"}


@dataclass(frozen=True)
class SourceOptions:
    """Parsed options of one ``cdc_kafka`` read."""

    topics: tuple[str, ...]
    kafka_config: Mapping[str, str] = field(repr=False)
    registry_path: str | None
    contracts_path: str
    registry_url: str | None = None
    registry_client_config: Mapping[str, str] = field(default_factory=dict, repr=False)
    starting: StartingPosition = field(default_factory=lambda: StartingPosition("earliest"))
    ending: PartitionOffsets = field(default_factory=dict)
    max_records_per_trigger: int | None = None
    max_records_per_partition: int = 200_000
    min_records_per_task: int = 10_000
    fail_on_data_loss: bool = True
    max_message_bytes: int | None = None
    poll_timeout_ms: int = 1000
    fetch_batch_size: int = 10_000
    fetch_timeout_ms: int = 120_000

    @property
    def bootstrap_servers(self) -> str:
        """``kafka.bootstrap.servers`` (never secret, safe to print)."""
        return self.kafka_config["bootstrap.servers"]

    @classmethod
    def parse(cls, options: Mapping[str, str]) -> SourceOptions:
        """Validate and convert the data source options.

        Args:
            options: option name to string value (names are case-insensitive).

        Returns:
            The parsed options.

        Raises:
            ConfigError: an option is missing, unknown or malformed.
        """
        lowered = {str(key).lower(): str(value) for key, value in options.items()}
        kafka = {
            key[len(KAFKA_PREFIX) :]: value
            for key, value in lowered.items()
            if key.startswith(KAFKA_PREFIX)
        }
        registry_client = {
            key[len(REGISTRY_CLIENT_PREFIX) :]: value
            for key, value in lowered.items()
            if key.startswith(REGISTRY_CLIENT_PREFIX)
        }
        unknown = sorted(
            key
            for key in lowered
            if not key.startswith((KAFKA_PREFIX, REGISTRY_CLIENT_PREFIX)) and key not in _CANONICAL
        )
        if unknown:
            hints = [
                f"{key} (did you mean {_SPARK_NAMES[key]}?)" if key in _SPARK_NAMES else key
                for key in unknown
            ]
            raise ConfigError(
                f"unknown cdc_kafka option(s): {', '.join(hints)}; valid options:"
                f" {', '.join(_VALID)}, kafka.<librdkafka setting>"
                f" and {REGISTRY_CLIENT_PREFIX}<schema registry client setting>"
            )
        missing = [name for name in _REQUIRED if not lowered.get(name.lower(), "").strip()]
        if (
            not lowered.get("registry.path", "").strip()
            and not lowered.get("registry.url", "").strip()
        ):
            missing.append("registry.path (or registry.url)")
        if missing:
            raise ConfigError(f"cdc_kafka option(s) required: {', '.join(missing)}")
        topics = _parse_topics(lowered["subscribe"])
        kafka.update(_FORCED_KAFKA)

        def get(name: str) -> str | None:
            value = lowered.get(name.lower())
            return value.strip() if value is not None and value.strip() else None

        return cls(
            topics=topics,
            kafka_config=kafka,
            registry_path=get("registry.path"),
            contracts_path=lowered["contracts.path"].strip(),
            registry_url=get("registry.url"),
            registry_client_config=registry_client,
            starting=parse_starting_position(
                get("startingOffsets"), get("startingTimestamp"), topics
            ),
            ending=parse_ending_offsets(get("endingOffsets"), topics),
            max_records_per_trigger=_positive_int(
                get("maxRecordsPerTrigger"), "maxRecordsPerTrigger"
            ),
            max_records_per_partition=_positive_int_or(
                get("maxRecordsPerPartition"), "maxRecordsPerPartition", 200_000
            ),
            min_records_per_task=_positive_int_or(
                get("minRecordsPerTask"), "minRecordsPerTask", 10_000
            ),
            fail_on_data_loss=_boolean(get("failOnDataLoss"), "failOnDataLoss", True),
            max_message_bytes=_positive_int(get("maxMessageBytes"), "maxMessageBytes"),
            poll_timeout_ms=_positive_int_or(get("pollTimeoutMs"), "pollTimeoutMs", 1000),
            fetch_batch_size=_positive_int_or(get("fetchBatchSize"), "fetchBatchSize", 10_000),
            fetch_timeout_ms=_positive_int_or(get("fetchTimeoutMs"), "fetchTimeoutMs", 120_000),
        )


def _parse_topics(value: str) -> tuple[str, ...]:
    topics: list[str] = []
    for item in value.split(","):
        topic = item.strip()
        if topic and topic not in topics:
            topics.append(topic)
    if not topics:
        raise ConfigError("subscribe must list at least one topic (comma-separated)")
    return tuple(topics)


def _positive_int_or(value: str | None, name: str, default: int) -> int:
    number = _positive_int(value, name)
    return default if number is None else number


def _positive_int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be a positive integer, got {number}")
    return number


def _boolean(value: str | None, name: str, default: bool) -> bool:
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ConfigError(f"{name} must be true or false, got {value!r}")
