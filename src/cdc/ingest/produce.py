"""JSON lines -> Confluent-framed Avro -> Kafka, for users, demos and tests.

Each input line is one record::

    {"key": {...}, "value": {...} | null, "partition": 2}

``key_b64`` / ``value_b64`` instead carry exact bytes (base64), which is how poison messages
are produced on purpose. Plain JSON values follow the subject's latest schema: unions are
untagged, timestamps are ISO-8601 strings with an offset or epoch milliseconds, decimals are
JSON numbers or strings (never rounded), dates are ISO dates.

Parsing (:func:`parse_lines`) is pure; :func:`produce_records` and :func:`produce_file` do
the I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal, InvalidOperation
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import schemaless_writer
from fastavro.validation import validate

from cdc.errors import BrokerUnavailableError, CdcError, ConfigError, ProduceError
from cdc.ingest.contracts import TopicContract
from cdc.ingest.registry import AvroType, RegisteredSchema, SchemaRegistry, frame, type_label
from cdc.runtime.kafka_admin import (
    KafkaMetadata,
    admin_client,
    ensure_topic,
    partition_count,
    topic_max_message_bytes,
)

# confluent_kafka's producer is imported where records are sent: parsing and encoding do not need
# it.

log = logging.getLogger(__name__)

__all__ = [
    "LineError",
    "OutboundRecord",
    "ProduceReport",
    "default_partition",
    "encode_datum",
    "murmur2",
    "parse_lines",
    "produce_file",
    "produce_records",
]

_LINE_KEYS = ("key", "key_b64", "partition", "value", "value_b64")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)
_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)
_MAX_LISTED_ERRORS = 20
_WIDE = Context(prec=400)


@dataclass(frozen=True)
class OutboundRecord:
    """One encoded record ready to send.

    Attributes:
        line: 1-based line number in the input.
        key: Framed key bytes, or None for no key.
        value: Framed value bytes, or None for a tombstone.
        partition: Explicit partition, or None to use the default partitioner.
    """

    line: int
    key: bytes | None
    value: bytes | None
    partition: int | None = None


@dataclass(frozen=True)
class LineError:
    """Why one input line was rejected."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class ProduceReport:
    """What :func:`produce_records` delivered."""

    topic: str
    sent: int
    per_partition: dict[int, int] = field(default_factory=dict)


class _Invalid(Exception):
    """A line is invalid: at ``path`` (filled in by the caller when ``""``) or as a whole (None)."""

    def __init__(self, path: str | None, reason: str) -> None:
        super().__init__(reason if path is None else f"{path}: {reason}")
        self.path = path
        self.reason = reason


# --------------------------------------------------------------------------- parsing


def parse_lines(
    lines: Iterable[str], registry: SchemaRegistry, contract: TopicContract
) -> tuple[list[OutboundRecord], list[LineError]]:
    """Convert JSON lines into framed records with the subjects' latest schemas.

    Blank lines are skipped (they still count for line numbers).

    Args:
        lines: The input, one JSON object per line.
        registry: Where the key and value subjects live.
        contract: The target topic's contract (names the subjects).

    Returns:
        ``(records, errors)``: every valid line encoded, every invalid line explained as
        ``line N: <path>: <reason>``.
    """
    key_schema = registry.latest(contract.key_subject)
    value_schema = registry.latest(contract.value_subject)
    records: list[OutboundRecord] = []
    errors: list[LineError] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(_parse_line(number, line, key_schema, value_schema))
        except _Invalid as exc:
            errors.append(LineError(number, str(exc)))
    return records, errors


def _parse_line(
    number: int, line: str, key_schema: RegisteredSchema, value_schema: RegisteredSchema
) -> OutboundRecord:
    try:
        # Decimal keeps JSON numbers exact until the schema says what they are.
        doc = json.loads(line, parse_float=Decimal)
    except ValueError as exc:
        raise _Invalid(None, f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _Invalid(None, f"expected a JSON object, got {_show(doc)}")
    unknown = sorted(set(doc) - set(_LINE_KEYS))
    if unknown:
        raise _Invalid(
            None,
            f"unknown key(s) {', '.join(unknown)} (valid keys: {', '.join(_LINE_KEYS)})",
        )
    key = _side(doc, "key", key_schema)
    value = _side(doc, "value", value_schema)
    partition = doc.get("partition")
    if partition is not None and (
        not isinstance(partition, int) or isinstance(partition, bool) or partition < 0
    ):
        raise _Invalid("partition", f"expected a non-negative integer, got {_show(partition)}")
    return OutboundRecord(number, key, value, partition)


def _side(doc: dict[str, Any], side: str, schema: RegisteredSchema) -> bytes | None:
    raw_key = f"{side}_b64"
    if side in doc and raw_key in doc:
        raise _Invalid(None, f"'{side}' and '{raw_key}' are mutually exclusive")
    if raw_key in doc:
        encoded = doc[raw_key]
        if encoded is None:
            return None
        if not isinstance(encoded, str):
            raise _Invalid(raw_key, f"expected a base64 string, got {_show(encoded)}")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Invalid(raw_key, f"invalid base64: {exc}") from exc
    if side not in doc:
        raise _Invalid(None, f"missing '{side}' (or '{raw_key}'); use null for none")
    if doc[side] is None:
        return None
    return encode_datum(schema, doc[side], root=side)


def encode_datum(schema: RegisteredSchema, datum: Any, *, root: str = "value") -> bytes:
    """Encode a plain-JSON datum with ``schema`` and frame it with the schema's id.

    Args:
        schema: The writer schema (a registered version).
        datum: JSON-decoded value (numbers ideally parsed as :class:`Decimal`).
        root: Name of the top level in error paths.

    Returns:
        Confluent-framed Avro bytes.

    Raises:
        ValueError: The datum does not fit; the message is ``<path>: <reason>``.
    """
    converted = _convert(schema.avro_type, datum, root)
    if not validate(converted, schema.parsed, raise_errors=False):
        raise _Invalid(root, f"does not validate against {schema.label}")
    buffer = BytesIO()
    try:
        schemaless_writer(buffer, schema.parsed, converted)
    except Exception as exc:  # fastavro raises several types; report them on the line
        raise _Invalid(root, f"cannot encode with {schema.label}: {exc}") from exc
    return frame(schema.schema_id, buffer.getvalue())


def _show(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (int, Decimal)):
        text = str(value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _expected(node: AvroType, value: Any) -> _Invalid:
    return _Invalid("", f"expected {type_label(node)}, got {_show(value)}")


def _convert(node: AvroType, value: Any, path: str) -> Any:
    """JSON value -> the Python value fastavro writes for ``node``."""
    try:
        return _convert_node(node, value, path)
    except _Invalid as exc:
        if exc.path == "":  # raised by a leaf, which does not know its path
            raise _Invalid(path, exc.reason) from None
        raise


def _convert_node(node: AvroType, value: Any, path: str) -> Any:
    kind = node.kind
    if kind == "union":
        return _convert_union(node, value, path)
    if kind == "record":
        if not isinstance(value, dict):
            raise _expected(node, value)
        names = {f.name for f in node.fields}
        unknown = sorted(set(value) - names)
        if unknown:
            raise _Invalid(path, f"unknown field(s) {', '.join(unknown)} for {type_label(node)}")
        out: dict[str, Any] = {}
        for f in node.fields:
            child = f"{path}.{f.name}"
            if f.name in value:
                out[f.name] = _convert(f.type, value[f.name], child)
            elif f.has_default:
                out[f.name] = _convert(f.type, f.default, child)
            else:
                raise _Invalid(child, "missing required field")
        return out
    if kind == "array":
        assert node.items is not None
        if not isinstance(value, list):
            raise _expected(node, value)
        return [_convert(node.items, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "map":
        assert node.items is not None
        if not isinstance(value, dict):
            raise _expected(node, value)
        return {k: _convert(node.items, v, f"{path}.{k}") for k, v in value.items()}
    return _convert_leaf(node, value)


def _convert_union(node: AvroType, value: Any, path: str) -> Any:
    if value is None:
        if any(b.kind == "null" for b in node.branches):
            return None
        raise _expected(node, value)
    branches = node.non_null_branches()
    first_error: _Invalid | None = None
    for branch in branches:
        try:
            return _convert(branch, value, path)
        except _Invalid as exc:
            first_error = first_error or exc
    if len(branches) == 1 and first_error is not None:
        raise first_error
    raise _Invalid(path, f"expected {type_label(node)}, got {_show(value)}")


def _convert_leaf(node: AvroType, value: Any) -> Any:
    logical, kind = node.logical, node.kind
    if logical == "decimal":
        return _decimal(node, value)
    if logical in ("timestamp-millis", "timestamp-micros"):
        return _timestamp(node, value)
    if logical == "date":
        return _date(node, value)
    if kind == "null":
        if value is not None:
            raise _expected(node, value)
        return None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _expected(node, value)
        return value
    if kind in ("int", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _expected(node, value)
        lo, hi = _INT_RANGE if kind == "int" else _LONG_RANGE
        if not lo <= value <= hi:
            raise _Invalid("", f"{value} is out of range for {kind}")
        return value
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise _expected(node, value)
        return float(value)
    if kind == "string":
        if not isinstance(value, str):
            raise _expected(node, value)
        return value
    if kind == "enum":
        if not isinstance(value, str) or value not in node.symbols:
            raise _Invalid("", f"expected one of {', '.join(node.symbols)}, got {_show(value)}")
        return value
    if kind in ("bytes", "fixed"):
        # Avro's JSON encoding: one character per byte, code points 0-255.
        if not isinstance(value, str):
            raise _expected(node, value)
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise _Invalid("", "bytes must be characters U+0000..U+00FF") from exc
        if kind == "fixed" and len(raw) != node.size:
            raise _Invalid("", f"expected {node.size} bytes, got {len(raw)}")
        return raw
    raise _expected(node, value)


def _decimal(node: AvroType, value: Any) -> Decimal:
    assert node.precision is not None and node.scale is not None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise _expected(node, value)
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise _expected(node, value) from exc
    if not number.is_finite():
        raise _expected(node, value)
    try:
        exact = number.quantize(Decimal(1).scaleb(-node.scale), context=_WIDE)
    except InvalidOperation as exc:
        raise _Invalid("", f"{_show(value)} does not fit {type_label(node)}") from exc
    if exact != number:  # never round money
        raise _Invalid("", f"{_show(value)} has more than {node.scale} fractional digits")
    if len(exact.as_tuple().digits) > node.precision:
        raise _Invalid("", f"{_show(value)} does not fit {type_label(node)}")
    return exact


def _timestamp(node: AvroType, value: Any) -> int:
    per_second = 1000 if node.logical == "timestamp-millis" else 1_000_000
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise _Invalid(
            "",
            f"expected {node.logical} (ISO-8601 string with offset or epoch "
            f"{'milliseconds' if per_second == 1000 else 'microseconds'}), got {_show(value)}",
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _Invalid("", f"invalid ISO-8601 timestamp {_show(value)}") from exc
    if moment.tzinfo is None:
        raise _Invalid("", f"timestamp {_show(value)} has no UTC offset (add Z or +00:00)")
    delta = moment - _EPOCH
    unit = timedelta(seconds=1) / per_second
    if delta % unit:
        raise _Invalid("", f"timestamp {_show(value)} is more precise than {node.logical}")
    return delta // unit


def _date(node: AvroType, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise _Invalid("", f"expected date (ISO date or epoch days), got {_show(value)}")
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise _Invalid("", f"invalid ISO date {_show(value)}") from exc
    return (day - _EPOCH_DATE).days


# --------------------------------------------------------------------------- partitioning


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``), signed 32-bit."""
    length = len(data)
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h >= 1 << 31 else h


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner picks for a keyed record.

    Args:
        key: The serialized key bytes.
        partitions: The topic's partition count.

    Returns:
        ``toPositive(murmur2(key)) % partitions``.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# --------------------------------------------------------------------------- I/O


def produce_records(
    bootstrap: str,
    records: Sequence[OutboundRecord],
    *,
    topic: str,
    client_config: Mapping[str, Any] | None = None,
    timeout_s: float = 30.0,
    connect_timeout_s: float = 10.0,
) -> ProduceReport:
    """Send records to an existing topic and wait for every delivery report.

    Records without a partition go where Java's default partitioner would put them
    (murmur2 of the key bytes); keyless ones round-robin.

    Args:
        bootstrap: ``host:port[,host:port]``.
        records: From :func:`parse_lines`.
        topic: Target topic; it must exist.
        client_config: Extra librdkafka producer settings.
        timeout_s: Deadline for all deliveries.
        connect_timeout_s: Deadline for the first metadata answer.

    Returns:
        How many records went to each partition.

    Raises:
        BrokerUnavailableError: The cluster did not answer within ``connect_timeout_s``.
        ProduceError: The topic does not exist, a record names a partition the topic does
            not have, or any delivery failed.
    """
    from confluent_kafka import KafkaException, Producer

    admin = admin_client(bootstrap, client_config)
    partitions = partition_count(
        bootstrap, topic, client_config=client_config, timeout_s=connect_timeout_s, admin=admin
    )
    if partitions is None:
        raise ProduceError(f"topic {topic} does not exist on {bootstrap}")
    placed = _place(records, partitions)
    topic_limit = topic_max_message_bytes(
        bootstrap, topic, timeout_s=connect_timeout_s, admin=admin
    )
    _check_sizes(records, topic_limit, client_config)
    producer = Producer(
        {
            "linger.ms": 20,
            # Per-partition order must survive retries.
            "max.in.flight.requests.per.connection": 1,
            **(client_config or {}),
            "bootstrap.servers": bootstrap,
            # All or nothing: one transaction per call (a reader with read_committed, as the
            # pipelines are, never sees the records of an aborted one). A fresh id per call:
            # two produces to one topic must not fence each other.
            "transactional.id": f"cdc-produce-{topic}-{uuid.uuid4().hex}",
            "enable.idempotence": True,
            "logger": logging.getLogger("cdc.kafka.librdkafka"),
        }
    )
    failures: list[str] = []
    last_offset: dict[int, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"partition {msg.partition()}: {err}")
        else:
            last_offset[msg.partition()] = max(last_offset.get(msg.partition(), -1), msg.offset())

    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    try:
        producer.init_transactions(connect_timeout_s)
    except KafkaException as exc:
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap} did not start a producer transaction within"
            f" {connect_timeout_s:g}s: {_kafka_error(exc)}"
        ) from None
    producer.begin_transaction()
    try:
        for i, record in enumerate(records):
            while True:
                try:
                    producer.produce(
                        topic,
                        value=record.value,
                        key=record.key,
                        partition=placed[i],
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.05)
                except KafkaException as exc:
                    raise ProduceError(
                        f"line {record.line}: cannot send: {_kafka_error(exc)}"
                    ) from None
        remaining = producer.flush(left())
        if remaining:
            raise ProduceError(
                f"{remaining} record(s) to {topic} not delivered within {timeout_s:g}s"
            )
        if failures:
            shown = "; ".join(failures[:_MAX_LISTED_ERRORS])
            raise ProduceError(f"{len(failures)} record(s) to {topic} failed: {shown}")
        _commit(producer, left)
        _wait_visible(bootstrap, client_config, topic, last_offset, left)
    except ProduceError as exc:
        _abort(producer, left)
        raise ProduceError(
            f"{exc}; the transaction was aborted, no record of this file is visible"
        ) from None
    per_partition: dict[int, int] = {}
    for p in placed:
        per_partition[p] = per_partition.get(p, 0) + 1
    return ProduceReport(
        topic=topic, sent=len(records), per_partition=dict(sorted(per_partition.items()))
    )


def _kafka_error(exc: Exception) -> str:
    error: Any = exc.args[0] if exc.args else None
    return str(error.str()) if hasattr(error, "str") else str(exc)


def _commit(producer: Any, left: Callable[[], float]) -> None:
    """Commit the transaction; retried while Kafka says the failure is retriable.

    Raises:
        ProduceError: the transaction must be aborted, or its outcome cannot be known.
    """
    from confluent_kafka import KafkaException

    while True:
        try:
            producer.commit_transaction(left())
            return
        except KafkaException as exc:
            error: Any = exc.args[0] if exc.args else None
            if error is not None and error.retriable() and left() > 0.1:
                continue
            if error is not None and error.txn_requires_abort():
                raise ProduceError(f"the commit failed: {_kafka_error(exc)}") from None
            raise ProduceError(
                f"the commit of the transaction failed ({_kafka_error(exc)}): Kafka may or may"
                " not have committed it; check the topic before sending the file again"
            ) from None


def _wait_visible(
    bootstrap: str,
    client_config: Mapping[str, Any] | None,
    topic: str,
    last_offset: Mapping[int, int],
    left: Callable[[], float],
) -> None:
    """Return once ``read_committed`` readers see the committed records.

    ``commit_transaction`` returns when the coordinator has logged the commit; the markers
    that make the records readable reach the partitions a moment later. Until then a
    pipeline started right after ``cdc produce`` (it reads ``read_committed``, up to each
    partition's last stable offset) would see none of them.
    """
    meta = KafkaMetadata(
        {"bootstrap.servers": bootstrap, **(client_config or {})}, timeout_s=min(10.0, left())
    )
    try:
        while True:
            try:
                marks = meta.watermarks([(topic, p) for p in last_offset])
            except CdcError as exc:  # committed all the same: say so, do not fail the produce
                log.warning("the transaction to %s is committed; %s", topic, exc)
                return
            waiting = [
                p
                for p, offset in last_offset.items()
                if (topic, p) not in marks or marks[(topic, p)].high <= offset
            ]
            if not waiting:
                return
            if left() <= 0.1:
                log.warning(
                    "the transaction to %s is committed but partitions %s are not readable yet",
                    topic,
                    waiting,
                )
                return
            time.sleep(0.05)
    finally:
        meta.close()


def _abort(producer: Any, left: Callable[[], float]) -> None:
    from confluent_kafka import KafkaException

    try:
        producer.abort_transaction(left())
    except KafkaException as exc:
        log.warning("could not abort the producer transaction: %s", _kafka_error(exc))


RECORD_OVERHEAD_BYTES = 100
"""Bytes a record costs on top of its key and value (batch header, record framing)."""


def _check_sizes(
    records: Sequence[OutboundRecord], topic_limit: int, client_config: Mapping[str, Any] | None
) -> None:
    """Refuse, before anything is sent, records larger than the topic or the client accepts."""
    client_limit = int((client_config or {}).get("message.max.bytes", 1_000_000))
    limit = min(topic_limit, client_limit)
    sizes = [
        (r.line, len(r.key or b"") + len(r.value or b"") + RECORD_OVERHEAD_BYTES) for r in records
    ]
    too_large = [(line, size) for line, size in sizes if size > limit]
    if too_large:
        line, size = too_large[0]
        which = (
            f"the topic's max.message.bytes ({topic_limit})"
            if topic_limit <= client_limit
            else f"the producer's message.max.bytes ({client_limit})"
        )
        raise ProduceError(
            f"{len(too_large)} record(s) larger than {which}: line {line} is about {size}"
            " bytes; nothing was sent"
        )


def _place(records: Sequence[OutboundRecord], partitions: int) -> list[int]:
    placed: list[int] = []
    round_robin = 0
    for record in records:
        if record.partition is not None:
            if record.partition >= partitions:
                raise ProduceError(
                    f"line {record.line}: partition {record.partition} does not exist "
                    f"(the topic has {partitions})"
                )
            placed.append(record.partition)
        elif record.key is not None:
            placed.append(default_partition(record.key, partitions))
        else:
            placed.append(round_robin % partitions)
            round_robin += 1
    return placed


def produce_file(
    bootstrap: str,
    registry: SchemaRegistry,
    contracts: Mapping[str, TopicContract],
    topic: str,
    path: str | Path,
    partitions_if_create: int = 3,
    client_config: Mapping[str, Any] | None = None,
) -> ProduceReport:
    """Validate every line of a JSON-lines file, then send them all (or nothing).

    Args:
        bootstrap: ``host:port[,host:port]``.
        registry: Where the topic's subjects live.
        contracts: Contracts by topic (name the subjects).
        topic: Target topic; created with ``partitions_if_create`` partitions if missing.
        path: The JSON-lines file.
        partitions_if_create: Partition count for a new topic.
        client_config: Extra librdkafka settings.

    Returns:
        What was delivered.

    Raises:
        ConfigError: The topic has no contract, or the file cannot be read.
        ProduceError: Any line is invalid (the message lists the first 20 and the count;
            nothing is sent) or a delivery failed.
        BrokerUnavailableError: The cluster cannot be reached.
    """
    contract = contracts.get(topic)
    if contract is None:
        raise ConfigError(f"topic {topic} has no contract (topics: {', '.join(sorted(contracts))})")
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc}") from exc
    except UnicodeDecodeError as exc:
        line = source.read_bytes()[: exc.start].count(b"\n") + 1
        raise ProduceError(
            f"{source}: line {line} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}):"
            " expected JSON lines; nothing was sent"
        ) from None
    records, errors = parse_lines(text.splitlines(), registry, contract)
    if errors:
        shown = "\n".join(str(e) for e in errors[:_MAX_LISTED_ERRORS])
        more = (
            f"\n... and {len(errors) - _MAX_LISTED_ERRORS} more"
            if len(errors) > _MAX_LISTED_ERRORS
            else ""
        )
        raise ProduceError(
            f"{source}: {len(errors)} invalid line(s), nothing was sent:\n{shown}{more}"
        )
    ensure_topic(bootstrap, topic, partitions_if_create, client_config=client_config)
    return produce_records(bootstrap, records, topic=topic, client_config=client_config)
