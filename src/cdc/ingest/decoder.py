"""The columnar decoder: Kafka records to decoded, validated rows, on the executors. Pure.

:class:`TopicDecoder` decodes one topic's Confluent-framed Avro records (the registry's writer
schema by id, resolved to the contract's reader schema) and validates them against the
topic's contract (:mod:`cdc.ingest.contracts`), column by column on Arrow batches
(:class:`KafkaRecords`). Every input message yields exactly one output row: a valid row
(``error_code`` null) goes to bronze, an invalid one (``error_code`` set, ``value`` null, raw
bytes kept) to quarantine. Bad data never raises; only a bad configuration does.

Checks run in this order and the first failure decides the reason: size, key, value
(framing, schema id, body, schema resolution), the contract's rules, then (for an SCD2
pipeline's decoder) whether the record's sequence can be encoded
(:class:`cdc.core.sequence.SequenceCheck`). :func:`validate_contracts` builds every
contract's decoder once and names the contracts that cannot have one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from fastavro import schemaless_reader
from fastavro.read import SchemaResolutionError

from cdc.core.sequence import MAX_TIME_MS, SequenceCheck
from cdc.errors import ConfigError, FramingError, SchemaNotFoundError
from cdc.ingest.contracts import (
    ENVELOPE_OPS,
    OPS_WITH_AFTER,
    ContractRule,
    KafkaMessage,
    QuarantineReason,
    TopicContract,
    avro_to_arrow_type,
    compile_rules,
    decoded_schema,
    rule_violations,
)
from cdc.ingest.registry import (
    ColumnarReader,
    RegisteredSchema,
    SchemaRegistry,
    check_backward,
    columnar_reader,
    extra_fields,
    unframe,
)
from cdc.ingest.registry.framing import HEADER_SIZE, MAGIC_BYTE
from cdc.ingest.semantic import SemanticTypes

__all__ = ["KafkaRecords", "TopicDecoder", "kafka_batch", "validate_contracts"]


def validate_contracts(
    contracts: Mapping[str, TopicContract], registry: SchemaRegistry
) -> list[str]:
    """Check that every contract's subjects exist and its rules fit the value schema.

    Args:
        contracts: Contracts by topic.
        registry: The registry holding their subjects.

    Returns:
        One message per problem; empty when every contract can build a decoder.
    """
    problems: list[str] = []
    for topic, contract in sorted(contracts.items()):
        try:
            TopicDecoder(registry, contract)
        except (ConfigError, SchemaNotFoundError) as exc:
            problems.append(f"{topic}: {exc}")
    return problems


@dataclass(frozen=True)
class _Plan:
    """How to read one writer schema id on one side (key or value), computed once per id."""

    writer: dict[str, Any] | None = None
    reader: dict[str, Any] | None = None
    """None when the writer is the reader (fastavro then skips resolution)."""
    extras: tuple[str, ...] = ()
    label: str = ""
    code: QuarantineReason | None = None
    error: str | None = None
    columnar: ColumnarReader | None = None
    """The vectorised reader, when the writer is the reader and the schema supports it."""


_Decoded = tuple[Any, "_Plan | None", "QuarantineReason | None", "str | None"]


class TopicDecoder:
    """Decode and validate one topic's messages into one Arrow row each.

    Reader schemas are the latest version of the contract's subjects. Plans per writer
    schema id (writer schema, resolution check, extra fields) are computed once and cached.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        contract: TopicContract,
        max_message_bytes: int = 1_048_576,
        *,
        columnar: bool = True,
        sequence: SequenceCheck | None = None,
        clock: Callable[[], float] = time.time,
        unavailable: Sequence[str] = (),
    ) -> None:
        """Build the decoder.

        Args:
            registry: Where writer schema ids are resolved.
            contract: The topic's contract.
            max_message_bytes: Larger messages (key + value) are quarantined as ``oversize``.
            columnar: Decode clean records of supported schemas with the vectorised reader
                (:mod:`cdc.ingest.registry.columnar`); False decodes every record with fastavro.
                The output is the same either way.
            sequence: The SCD2 pipeline's sequence check: a record whose sequence cannot be
                encoded is quarantined (``source_time_out_of_range``,
                ``position_out_of_range``). None: not checked (facts, tools).
            clock: Seconds since the epoch, for the check's future bound (tests inject it).
            unavailable: placeholders for unchanged values (a TOASTed column): a leaf holding
                one passes the contract's patterns and allowed values.

        Raises:
            SchemaNotFoundError: A contract subject is not in the registry.
            ConfigError: A rule path does not fit the value schema, or a schema does not map
                to Arrow.
        """
        self._registry = registry
        self._contract = contract
        self._max_bytes = max_message_bytes
        self._readers: dict[str, RegisteredSchema] = {
            "key": registry.latest(contract.key_subject),
            "value": registry.latest(contract.value_subject),
        }
        self._rules = compile_rules(
            contract, self._readers["value"].avro_type, unavailable=tuple(unavailable)
        )
        self._envelope = contract.kind == "envelope"
        raw = {
            side: avro_to_arrow_type(reader.avro_type, nested_nullable=True)
            for side, reader in self._readers.items()
        }
        # Decoded as the Avro types, then Debezium's semantic types as Delta's (see
        # _semantic_types): the reading paths build the first schema, callers get the second.
        self._schema = decoded_schema(raw["key"], raw["value"])
        self._semantic = {
            side: SemanticTypes(reader.avro_type, contract.decimals)
            for side, reader in self._readers.items()
        }
        self._out_schema = decoded_schema(
            self._semantic["key"].arrow_type(raw["key"]),
            self._semantic["value"].arrow_type(raw["value"]),
        )
        self._plans: dict[tuple[str, int], _Plan] = {}
        self._columnar = columnar
        self._sequence = sequence
        self._clock = clock

    @property
    def arrow_schema(self) -> pa.Schema:
        """The schema of every batch :meth:`decode_records` returns."""
        return self._out_schema

    def reader_version(self, side: str = "value") -> str:
        """The reader schema of ``side``: ``<subject> v<version> (id <id>)``."""
        r = self._readers[side]
        return f"{r.subject} v{r.version} (id {r.schema_id})"

    def row_aliases(self) -> dict[str, tuple[str, ...]]:
        """The Avro aliases of each field of the row (an envelope's ``after``, a flat
        record's value): a field's former names."""
        node = self._readers["value"].avro_type
        if self._envelope:
            after = next((f.type for f in node.fields if f.name == "after"), None)
            node = after if after is not None else node
        if node.kind == "union":
            node = node.non_null_branches()[0]
        return {f.name: f.aliases for f in node.fields if f.aliases}

    @property
    def contract(self) -> TopicContract:
        """The contract this decoder enforces."""
        return self._contract

    def decode_records(self, records: pa.RecordBatch) -> pa.RecordBatch:
        """Decode and validate Kafka records in the shape of Spark's Kafka source.

        Clean records whose writer schema is the reader schema are decoded column-wise
        (:mod:`cdc.ingest.registry.columnar`) and their rules checked on Arrow columns; every other
        record (another writer version, a suspect body, a broken rule, a missing key...) goes
        through fastavro and the per-record checks, which also write the error texts.

        Args:
            records: columns ``topic``, ``partition``, ``offset``, ``timestamp`` (a timestamp
                or epoch milliseconds), ``key`` and ``value`` (binary); others are ignored.

        Returns:
            A batch with :attr:`arrow_schema`, one row per record, in input order.
        """
        columns = KafkaRecords.from_arrow(records, self._schema)
        if not self._columnar or len(columns) == 0:
            decoded = self._decode_rows(columns.messages(range(len(columns))))
        else:
            decoded = self._decode_columns(columns)
        return self._semantic_types(self._check_sequences(decoded))

    def _semantic_types(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Debezium's semantic types as their Delta types (:mod:`cdc.ingest.semantic`): a
        valid record whose value does not fit goes to quarantine (``value_out_of_range``)."""
        if all(t.empty for t in self._semantic.values()):
            return batch
        s = self._schema
        arrays = dict(zip(s.names, batch.columns, strict=True))
        valid = pc.is_null(arrays["error_code"]).to_pylist()
        codes = arrays["error_code"].to_pylist()
        errors = arrays["error"].to_pylist()
        bad = [False] * batch.num_rows
        for side, types in self._semantic.items():
            if types.empty:
                continue
            arrays[side], found = types.convert(arrays[side])
            for i, error in enumerate(found):
                if error is not None and valid[i] and not bad[i]:
                    bad[i] = True
                    codes[i], errors[i] = QuarantineReason.VALUE_OUT_OF_RANGE.value, error
        out = self._out_schema
        if any(bad):
            mask = pa.array(bad, pa.bool_())
            for side in ("key", "value"):
                none = pa.nulls(batch.num_rows, out.field(side).type)
                arrays[side] = pc.if_else(mask, none, arrays[side])
            arrays["error_code"] = pa.array(codes, out.field("error_code").type)
            arrays["error"] = pa.array(errors, out.field("error").type)
        return pa.RecordBatch.from_arrays(
            [arrays[n].cast(out.field(n).type) for n in out.names], schema=out
        )

    def _check_sequences(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Quarantine the valid records whose sequence cannot be encoded (see ``sequence``).

        One check on the decoded batch, whichever path decoded each record: the columnar and
        the fastavro paths, and so both writers, give every record the same verdict.
        """
        check = self._sequence
        if check is None or batch.num_rows == 0:
            return batch
        s = self._schema
        names = ("partition", "offset", "timestamp", "value")
        columns = {n: batch.column(s.get_field_index(n)) for n in names}
        columns["value"] = _project(columns["value"], [p.split(".") for p in check.paths])
        frame = pl.from_arrow(pa.table(columns))
        assert isinstance(frame, pl.DataFrame)
        found = check.violations(frame, int(self._clock() * 1000))
        code, error = (
            found.get_column(c).to_arrow(compat_level=pl.CompatLevel.oldest()).cast(pa.string())
            for c in ("code", "error")
        )
        valid = pc.is_null(batch.column(s.get_field_index("error_code")))
        bad = pc.and_(valid, pc.is_valid(code))
        if not pc.any(bad).as_py():
            return batch
        arrays = dict(zip(s.names, batch.columns, strict=True))
        arrays["error_code"] = pc.if_else(bad, code, arrays["error_code"])
        arrays["error"] = pc.if_else(bad, error, arrays["error"])
        none = pa.nulls(batch.num_rows, s.field("value").type)
        arrays["value"] = pc.if_else(bad, none, arrays["value"])
        return pa.RecordBatch.from_arrays(list(arrays.values()), schema=s)

    def _decode_columns(self, records: KafkaRecords) -> pa.RecordBatch:
        """The columnar path: clean rows vectorised, the others by :meth:`_decode_rows`."""
        n = len(records)
        key_raw, value_raw = records.key, records.value
        key_side, value_side = _Side(key_raw), _Side(value_raw)
        fast = (key_side.length + value_side.length <= self._max_bytes) & key_side.framed
        tombstone = ~value_side.valid
        fast &= tombstone | value_side.framed
        fast &= self._readable("key", key_side, fast)
        fast &= tombstone | self._readable("value", value_side, fast & ~tombstone)
        rows = np.flatnonzero(fast)
        key_col, bad = self._read_side("key", key_side, rows)
        value_rows = rows[~tombstone[rows]]
        value_col, value_bad = self._read_side("value", value_side, value_rows)
        if self._rules or self._envelope:
            value_bad |= _rule_suspects(value_col, self._rules, self._envelope, value_bad)
        has_value = ~tombstone[rows]
        bad[has_value] |= value_bad
        if bad.any():
            keep = ~bad
            key_col = key_col.filter(pa.array(keep))
            value_col = value_col.filter(pa.array(keep[has_value]))
            rows, has_value = rows[keep], has_value[keep]
        if not has_value.all():  # tombstones: a null value
            value_at = np.full(len(rows), -1, dtype=np.int64)
            value_at[has_value] = np.arange(int(has_value.sum()))
            value_col = value_col.take(pa.array(value_at, mask=~has_value))
        s = self._schema
        value_ids = value_side.schema_id[rows]
        columns = [
            records.topic,
            records.partition,
            records.offset,
            records.timestamp,
            key_raw,
            value_raw,
        ]
        if len(rows) < n:
            chosen = pa.array(rows)
            columns = [column.take(chosen) for column in columns]
        columns += [
            pa.array(key_side.schema_id[rows], s.field("key_schema_id").type),
            pa.array(value_ids, s.field("value_schema_id").type, mask=tombstone[rows]),
            key_col,
            value_col,
            pa.nulls(len(rows), s.field("extra_fields").type),
            pa.nulls(len(rows), s.field("error_code").type),
            pa.nulls(len(rows), s.field("error").type),
        ]
        batch = pa.RecordBatch.from_arrays(columns, schema=s)
        if len(rows) == n:
            return batch
        slow = np.flatnonzero(~np.isin(np.arange(n), rows))
        rest = self._decode_rows(records.messages(slow.tolist()))
        order = np.empty(n, dtype=np.int64)
        order[rows] = np.arange(len(rows))
        order[slow] = np.arange(len(rows), n)
        return pa.concat_batches([batch, rest]).take(pa.array(order))

    def _readable(self, side: str, frames: _Side, among: npt.NDArray[np.bool_]) -> Any:
        """True where a row in ``among`` has a schema id with a columnar reader."""
        ok = np.zeros(len(among), dtype=np.bool_)
        ids = frames.schema_id
        for schema_id in np.unique(ids[among]).tolist():
            if self._side_plan(side, int(schema_id)).columnar is not None:
                ok |= among & (ids == schema_id)
        return ok

    def _side_plan(self, side: str, schema_id: int) -> _Plan:
        plan = self._plans.get((side, schema_id))
        if plan is None:
            plan = self._plans[(side, schema_id)] = self._plan(side, schema_id)
        return plan

    def _read_side(self, side: str, frames: _Side, rows: Any) -> tuple[pa.Array, Any]:
        """Column-decode ``rows`` of one side: (array aligned with rows, bad mask)."""
        typ = self._schema.field(side).type
        ids = frames.schema_id[rows]
        unique = np.unique(ids).tolist()
        bad = np.zeros(len(rows), dtype=np.bool_)
        parts: list[pa.Array] = []
        where = np.empty(len(rows), dtype=np.int64)
        done = 0
        for schema_id in unique:
            reader = self._side_plan(side, int(schema_id)).columnar
            assert reader is not None
            sel = np.flatnonzero(ids == schema_id) if len(unique) > 1 else np.arange(len(rows))
            array, failed = reader.read(
                frames.data, frames.start[rows[sel]] + HEADER_SIZE, frames.end[rows[sel]]
            )
            parts.append(array)
            bad[sel] = failed
            where[sel] = np.arange(done, done + len(sel))
            done += len(sel)
        if not parts:
            return pa.nulls(0, typ), bad
        if len(parts) == 1:
            return parts[0], bad
        return pa.concat_arrays(parts).take(pa.array(where)), bad

    def _decode_rows(self, messages: Sequence[KafkaMessage]) -> pa.RecordBatch:
        """Decode every message with fastavro and check its rules one by one."""
        # Column lists filled in one pass, then one pa.array per column: about twice as fast
        # as RecordBatch.from_pylist over row dicts (measured on contact envelopes).
        n = len(messages)
        topics: list[str] = [""] * n
        partitions: list[int] = [0] * n
        offsets: list[int] = [0] * n
        stamps: list[int | None] = [None] * n
        key_raw: list[bytes | None] = [None] * n
        value_raw: list[bytes | None] = [None] * n
        key_ids: list[int | None] = [None] * n
        value_ids: list[int | None] = [None] * n
        keys: list[Any] = [None] * n
        values: list[Any] = [None] * n
        extras: list[list[str] | None] = [None] * n
        codes: list[str | None] = [None] * n
        errors: list[str | None] = [None] * n
        key_required = self._contract.key_required
        for i, (topic, partition, offset, ts_ms, key, value) in enumerate(messages):
            topics[i], partitions[i], offsets[i] = topic, partition, offset
            stamps[i] = _micros(ts_ms)
            key_raw[i], value_raw[i] = key, value
            size = (len(key) if key is not None else 0) + (len(value) if value is not None else 0)
            if size > self._max_bytes:
                codes[i] = QuarantineReason.OVERSIZE
                errors[i] = (
                    f"message is {size} bytes (key + value), over max_message_bytes "
                    f"{self._max_bytes}"
                )
                continue
            key_plan: _Plan | None = None
            if key is None:
                if key_required:
                    codes[i] = QuarantineReason.MISSING_KEY
                    errors[i] = f"key is absent ({self._contract.topic} requires a key)"
                    continue
            else:
                key_ids[i] = _schema_id(key)
                record, key_plan, code, error = self._decode("key", key)
                if code is not None:  # any unusable key counts as missing; the text says why
                    codes[i], errors[i] = QuarantineReason.MISSING_KEY, error
                    continue
                keys[i] = record
            if value is None:  # a tombstone
                if key_plan is not None and key_plan.extras:
                    extras[i] = list(key_plan.extras)
                continue
            value_ids[i] = _schema_id(value)
            record, value_plan, code, error = self._decode("value", value)
            if code is not None:
                codes[i], errors[i] = code, error
                continue
            assert value_plan is not None
            found = (key_plan.extras if key_plan is not None else ()) + value_plan.extras
            if found:
                extras[i] = list(found)
            if self._rules or self._envelope:
                broken = rule_violations(record, self._rules, self._envelope)
                if broken:
                    codes[i], errors[i] = QuarantineReason.RULE_VIOLATION, "; ".join(broken)
                    continue
            values[i] = record
        s = self._schema
        columns = [
            pa.array(topics, s.field("topic").type),
            pa.array(partitions, s.field("partition").type),
            pa.array(offsets, s.field("offset").type),
            pa.array(stamps, s.field("timestamp").type),
            pa.array(key_raw, s.field("key_raw").type),
            pa.array(value_raw, s.field("value_raw").type),
            pa.array(key_ids, s.field("key_schema_id").type),
            pa.array(value_ids, s.field("value_schema_id").type),
            self._arrow_column("key", keys, codes, errors, values),
            self._arrow_column("value", values, codes, errors, None),
            pa.array(extras, s.field("extra_fields").type),
            pa.array(codes, s.field("error_code").type),
            pa.array(errors, s.field("error").type),
        ]
        return pa.RecordBatch.from_arrays(columns, schema=s)

    def _arrow_column(
        self,
        side: str,
        records: list[Any],
        codes: list[str | None],
        errors: list[str | None],
        values: list[Any] | None,
    ) -> pa.Array:
        """The decoded keys or values as an Arrow column.

        A record fastavro decoded may still not fit the column (a decimal with more digits
        than its precision, an ``int`` beyond 32 bits): that record is quarantined rather
        than failing the batch (``missing_key`` for a key, ``decode_error`` for a value).
        ``values`` (given with the keys) loses the value of a row whose key did not fit.
        """
        typ = self._schema.field(side).type
        try:
            return pa.array(records, typ)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            pass
        for i, record in enumerate(records):
            if record is None:
                continue
            try:
                pa.array([record], typ)
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
                records[i] = None
                if values is not None:
                    values[i] = None
                codes[i] = (
                    QuarantineReason.MISSING_KEY if side == "key" else QuarantineReason.DECODE_ERROR
                )
                errors[i] = f"{side} does not fit its Arrow type: {type(exc).__name__}: {exc}"
        return pa.array(records, typ)

    def _decode(self, side: str, data: bytes) -> _Decoded:
        """Decode one key or value: (record, plan, error code, error text)."""
        if len(data) < 5 or data[0] != 0 or data[1] & 0x80:  # 0x80: a negative schema id
            try:
                unframe(data)
            except FramingError as exc:
                return None, None, QuarantineReason.NOT_FRAMED, f"{side} is not framed: {exc}"
        schema_id = int.from_bytes(data[1:5], "big", signed=True)
        plan = self._plans.get((side, schema_id))
        if plan is None:
            plan = self._plans[(side, schema_id)] = self._plan(side, schema_id)
        if plan.code is not None:
            return None, plan, plan.code, plan.error
        assert plan.writer is not None
        buffer = BytesIO(data)
        buffer.seek(5)
        try:
            record = schemaless_reader(buffer, plan.writer, plan.reader)
        except SchemaResolutionError as exc:
            reader = self._readers[side].label
            error = f"{side} {plan.label} cannot be read as {reader}: {exc}"
            return None, plan, QuarantineReason.SCHEMA_MISMATCH, error
        except EOFError:
            error = f"{side} is truncated: the Avro body of {plan.label} ends early"
            return None, plan, QuarantineReason.DECODE_ERROR, error
        except Exception as exc:  # corrupt input surfaces as many exception types
            error = f"{side} could not be decoded with {plan.label}: {type(exc).__name__}: {exc}"
            return None, plan, QuarantineReason.DECODE_ERROR, error
        trailing = len(data) - buffer.tell()
        if trailing:
            error = f"{side} has {trailing} trailing byte(s) after the Avro body of {plan.label}"
            return None, plan, QuarantineReason.DECODE_ERROR, error
        return record, plan, None, None

    def _plan(self, side: str, schema_id: int) -> _Plan:
        reader = self._readers[side]
        try:
            writer = self._registry.by_id(schema_id)
        except SchemaNotFoundError:
            return _Plan(
                code=QuarantineReason.UNKNOWN_SCHEMA_ID,
                error=f"{side} schema id {schema_id} is not in the registry",
            )
        label = f"writer schema {schema_id} ({writer.label})"
        if writer.schema_id == reader.schema_id:
            columnar = (
                columnar_reader(reader.avro_type, self._schema.field(side).type)
                if self._columnar
                else None
            )
            return _Plan(writer=reader.parsed, label=label, columnar=columnar)
        problems = check_backward(reader.avro_type, writer.avro_type, root=side)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return _Plan(
                label=label,
                code=QuarantineReason.SCHEMA_MISMATCH,
                error=f"{side} {label} cannot be read as {reader.label}: {problems[0]}{more}",
            )
        return _Plan(
            writer=writer.parsed,
            reader=reader.parsed,
            extras=tuple(extra_fields(reader.avro_type, writer.avro_type, root=side)),
            label=label,
        )

    def __getstate__(self) -> dict[str, Any]:
        # Plans hold parsed schemas; executors rebuild them on first use.
        state = self.__dict__.copy()
        state["_plans"] = {}
        return state


def _schema_id(data: bytes) -> int | None:
    framed = len(data) >= 5 and data[0] == 0 and not data[1] & 0x80  # a negative id: not framed
    return int.from_bytes(data[1:5], "big", signed=True) if framed else None


class KafkaRecords:
    """Kafka records as Arrow columns typed like the decoder's output (the columnar input)."""

    def __init__(
        self,
        topic: pa.Array,
        partition: pa.Array,
        offset: pa.Array,
        timestamp: pa.Array,
        key: pa.Array,
        value: pa.Array,
    ) -> None:
        """Hold the columns (already cast to the output schema's types)."""
        self.topic, self.partition, self.offset = topic, partition, offset
        self.timestamp, self.key, self.value = timestamp, key, value

    def __len__(self) -> int:
        return len(self.offset)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch, schema: pa.Schema) -> KafkaRecords:
        """Columns of a batch from Spark's Kafka source (or any batch of those names)."""

        def column(name: str, typ: pa.DataType) -> pa.Array:
            array = batch.column(batch.schema.get_field_index(name))
            if pa.types.is_integer(array.type) and pa.types.is_timestamp(typ):
                ms = array.cast(pa.int64())
                none = pc.or_(pc.less(ms, 0), pc.greater(ms, MAX_TIME_MS))
                array = pc.if_else(none, None, pc.multiply(ms, 1000))
            return array if array.type == typ else array.cast(typ)

        return cls(
            column("topic", schema.field("topic").type),
            column("partition", schema.field("partition").type),
            column("offset", schema.field("offset").type),
            column("timestamp", schema.field("timestamp").type),
            column("key", pa.binary()),
            column("value", pa.binary()),
        )

    def messages(self, rows: Iterable[int]) -> list[KafkaMessage]:
        """The given rows as message tuples (for the per-record path)."""
        chosen = pa.array(list(rows), pa.int64())
        stamps = self.timestamp.take(chosen).cast(pa.int64()).to_pylist()
        return list(
            zip(
                self.topic.take(chosen).to_pylist(),
                self.partition.take(chosen).to_pylist(),
                self.offset.take(chosen).to_pylist(),
                [None if us is None else us // 1000 for us in stamps],
                self.key.take(chosen).to_pylist(),
                self.value.take(chosen).to_pylist(),
                strict=True,
            )
        )


class _Side:
    """The key or value column of a batch as numpy views: framing and schema id per row."""

    def __init__(self, raw: pa.Array) -> None:
        n = len(raw)
        _, offsets_buffer, data_buffer = raw.buffers()
        assert offsets_buffer is not None
        bounds = np.frombuffer(offsets_buffer, dtype=np.int32, count=n + 1, offset=raw.offset * 4)
        self.start = bounds[:-1].astype(np.int64)
        self.end = bounds[1:].astype(np.int64)
        self.length = self.end - self.start
        self.valid: npt.NDArray[np.bool_] = raw.is_valid().to_numpy(zero_copy_only=False)
        self.data: bytes | pa.Buffer = data_buffer if data_buffer is not None else b""
        data = np.frombuffer(self.data, dtype=np.uint8)
        self.framed = self.valid & (self.length >= HEADER_SIZE)
        at = np.where(self.framed, self.start, 0)
        if data.size:
            header = data[np.minimum(at[:, None] + np.arange(HEADER_SIZE), data.size - 1)]
            self.framed &= header[:, 0] == MAGIC_BYTE
            big_endian = header[:, 1:].astype(np.uint32)
            ids = (big_endian[:, 0] << 24) | (big_endian[:, 1] << 16)
            ids |= (big_endian[:, 2] << 8) | big_endian[:, 3]
            signed = ids.view(np.int32)
            self.framed &= signed >= 0  # a negative id is not framed (the row path says why)
            self.schema_id = np.where(self.framed, signed, 0)
        else:
            self.schema_id = np.zeros(n, dtype=np.int32)


def _project(values: pa.Array, paths: Sequence[Sequence[str]]) -> pa.Array:
    """A struct column with only the fields on ``paths`` (missing ones left out), nulls kept.

    The sequence check reads a few fields: projecting them first spares converting every
    other field of the record.
    """
    if not pa.types.is_struct(values.type):
        return values
    wanted = dict.fromkeys(p[0] for p in paths if p)
    names = [n for n in wanted if values.type.get_field_index(n) >= 0]
    if not names:
        return pa.nulls(len(values))
    children = []
    for name in names:
        child = pc.struct_field(values, [values.type.get_field_index(name)])
        rest = [p[1:] for p in paths if p and p[0] == name and len(p) > 1]
        children.append(_project(child, rest) if rest else child)
    return pa.StructArray.from_arrays(
        children,
        fields=[pa.field(n, c.type) for n, c in zip(names, children, strict=True)],
        mask=pc.is_null(values),
    )


def _micros(ms: int | None) -> int | None:
    """One Kafka timestamp (ms) as microseconds; None when it means none."""
    return ms * 1000 if ms is not None and 0 <= ms <= MAX_TIME_MS else None


def _rule_suspects(
    values: pa.Array, rules: Sequence[ContractRule], envelope: bool, skip: npt.NDArray[np.bool_]
) -> Any:
    """True where a decoded value (a struct column) may break a rule; never False for one that does.

    The per-record path re-checks these rows and writes the messages; here every built-in
    envelope check and every rule is evaluated on whole columns (Python only for patterns,
    allowed values and ranges, on the leaf values alone). Rows in ``skip`` (values the
    columnar reader did not vouch for) are not looked at.
    """
    n = len(values)
    suspect = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return suspect
    if envelope:
        op = values.field("op")
        if pa.types.is_string(op.type):
            known = pc.is_in(op, value_set=pa.array(ENVELOPE_OPS)).fill_null(False)
            ops = op.fill_null("")
            needs_after = pc.is_in(ops, value_set=pa.array(sorted(OPS_WITH_AFTER)))
            needs_before = pc.equal(ops, "d")
            suspect |= ~_np(known)
            suspect |= _np(needs_after) & _np(values.field("after").is_null())
            suspect |= _np(needs_before) & _np(values.field("before").is_null())
        else:
            suspect[:] = True
    for rule in rules:
        holder: Any = values
        applies = ~skip
        for step in rule.parents:
            holder = holder.field(step)
            if not isinstance(holder.type, pa.StructType):
                applies[:] = False  # a fastavro value here would not be a record either
                suspect[:] = True
                break
            applies &= _np(holder.is_valid())
        else:
            leaf = holder.field(rule.leaf)
            present = applies & _np(leaf.is_valid())
            if rule.kind == "required":
                suspect |= applies & ~present
                if pa.types.is_string(leaf.type):
                    suspect |= present & _np(pc.equal(leaf, "").fill_null(False))
                continue
            where = np.flatnonzero(present)
            if not len(where):
                continue
            broken = _broken(rule, leaf.take(pa.array(where)).to_pylist())
            suspect[where[broken]] = True
    return suspect


def _broken(rule: ContractRule, leaves: list[Any]) -> Any:
    """Which non-null leaf values break a pattern, allowed-values or range rule."""
    skip = rule.unavailable
    if rule.kind == "pattern":
        assert rule.pattern is not None
        match = rule.pattern.fullmatch
        return np.fromiter(
            (v not in skip and match(v) is None for v in leaves), np.bool_, len(leaves)
        )
    if rule.kind == "allowed":
        allowed = rule.allowed
        return np.fromiter(
            (not (isinstance(v, str) and v in skip) and v not in allowed for v in leaves),
            np.bool_,
            len(leaves),
        )
    lo, hi = rule.lo, rule.hi
    return np.fromiter(
        ((lo is not None and v < lo) or (hi is not None and v > hi) for v in leaves),
        np.bool_,
        len(leaves),
    )


def _np(array: Any) -> Any:
    """A boolean Arrow array as numpy (nulls are never passed here)."""
    return array.to_numpy(zero_copy_only=False)


def kafka_batch(messages: Sequence[KafkaMessage]) -> pa.RecordBatch:
    """``messages`` in the columns, order and types of Spark's Kafka source (what
    :meth:`TopicDecoder.decode_records` reads: ``cdc snapshot`` reads the topic with a plain
    consumer, tests and benchmarks hold records as tuples).

    Args:
        messages: ``(topic, partition, offset, timestamp_ms, key, value)`` tuples; a
            timestamp that is negative (Kafka's "none") or past 9999-12-31 becomes null.

    Returns:
        A batch with ``key``, ``value``, ``topic``, ``partition``, ``offset``, ``timestamp``
        and ``timestampType``.
    """
    topics, partitions, offsets, stamps, keys, values = (
        tuple(zip(*messages, strict=True)) if messages else ((),) * 6
    )
    micros = [t * 1000 if t is not None and 0 <= t <= MAX_TIME_MS else None for t in stamps]
    return pa.RecordBatch.from_arrays(
        [
            pa.array(keys, pa.binary()),
            pa.array(values, pa.binary()),
            pa.array(topics, pa.string()),
            pa.array(partitions, pa.int32()),
            pa.array(offsets, pa.int64()),
            pa.array(micros, pa.timestamp("us", "UTC")),
            pa.array([0] * len(micros), pa.int32()),
        ],
        names=["key", "value", "topic", "partition", "offset", "timestamp", "timestampType"],
    )
