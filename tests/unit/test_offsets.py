"""Offset arithmetic of the Kafka source: pure functions, no broker, no Spark."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.errors import BrokerUnavailableError, ConfigError, DataLossError
from cdc.source._kafka import fetch_range
from cdc.source.offsets import (
    DataLoss,
    DataLossKind,
    OffsetRange,
    StartingPosition,
    Watermarks,
    next_end_offsets,
    offsets_from_json,
    offsets_to_json,
    pack_ranges,
    parse_ending_offsets,
    parse_starting_position,
    partitions_needing_earliest,
    plan_ranges,
    ranges_between,
    rate_limit,
    reconcile_start,
    resolve_ending_offsets,
    resolve_starting_offsets,
    split_range,
)
from cdc.source.options import SourceOptions

T0 = ("orders", 0)
T1 = ("orders", 1)
T2 = ("orders", 2)


# ------------------------------------------------------------------ JSON shape


def test_offsets_to_json_sorts_partitions_numerically() -> None:
    offsets = {("b", 10): 5, ("b", 2): 7, ("a", 0): 1}
    assert offsets_to_json(offsets) == {"a": {"0": 1}, "b": {"2": 7, "10": 5}}
    assert list(offsets_to_json(offsets)["b"]) == ["2", "10"]


def test_offsets_json_round_trip() -> None:
    offsets = {T0: 3, T1: 0, ("x", 4): 99}
    assert offsets_from_json(offsets_to_json(offsets)) == offsets


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2], 'start offsets must be a JSON object like {"topic": {"0": 42}}, got [1, 2]'),
        ({"t": 5}, "start offsets: topic 't' must map partitions to offsets like {\"0\": 42}"),
        ({"t": {"x": 1}}, "start offsets: partition 'x' of topic 't' is not an integer"),
        ({"t": {"0": "1"}}, "start offsets: offset for t/0 must be an integer, got '1'"),
        ({"t": {"0": -1}}, "start offsets: offsets must be >= 0, got t/0"),
    ],
)
def test_offsets_from_json_rejects_bad_shapes(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        offsets_from_json(value, "start offsets")
    assert str(info.value).startswith(message)


# ------------------------------------------------------------------ options


def test_starting_position_defaults_to_earliest() -> None:
    assert parse_starting_position(None, None, ["t"]) == StartingPosition("earliest")
    assert parse_starting_position(" LATEST ", None, ["t"]) == StartingPosition("latest")


def test_starting_timestamp_takes_precedence() -> None:
    position = parse_starting_position("latest", "1700000000000", ["t"])
    assert position == StartingPosition("timestamp", timestamp_ms=1_700_000_000_000)


def test_starting_offsets_json() -> None:
    position = parse_starting_position('{"t": {"0": 23, "1": -2, "2": -1}}', None, ["t", "u"])
    assert position.kind == "specific"
    assert position.offsets == {("t", 0): 23, ("t", 1): -2, ("t", 2): -1}


@pytest.mark.parametrize(
    ("starting", "timestamp", "message"),
    [
        (
            "{not json",
            None,
            "startingOffsets must be earliest, latest or JSON like "
            '{"topic": {"0": 23, "1": -2}}; \'{not json\' is not valid JSON '
            "(Expecting property name enclosed in double quotes at position 1)",
        ),
        (
            '{"other": {"0": 1}}',
            None,
            "startingOffsets names topics that are not subscribed: other (subscribed: t)",
        ),
        (
            '{"t": {"0": -3}}',
            None,
            "startingOffsets: offsets must be >= 0, or -2 (earliest) / -1 (latest);"
            " invalid for t/0",
        ),
        (None, "yesterday", "startingTimestamp must be epoch milliseconds (an integer), got"),
        (None, "-5", "startingTimestamp must be >= 0, got -5"),
    ],
)
def test_starting_position_errors(
    starting: str | None, timestamp: str | None, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_starting_position(starting, timestamp, ["t"])
    assert str(info.value).startswith(message)


def test_ending_offsets() -> None:
    assert parse_ending_offsets(None, ["t"]) == {}
    assert parse_ending_offsets('{"t": {"0": 5, "1": -1}}', ["t"]) == {("t", 0): 5, ("t", 1): -1}
    with pytest.raises(ConfigError, match=r"endingOffsets: offsets must be >= 0 or -1"):
        parse_ending_offsets('{"t": {"0": -2}}', ["t"])
    with pytest.raises(ConfigError, match="endingOffsets cannot be earliest"):
        parse_ending_offsets("earliest", ["t"])


def _options(**extra: str) -> dict[str, str]:
    return {
        "kafka.bootstrap.servers": "127.0.0.1:9092",
        "subscribe": "a, b,a",
        "registry.path": "schemas/avro",
        "contracts.path": "schemas/contracts.yaml",
        **extra,
    }


def test_source_options_parse_defaults_and_case_insensitivity() -> None:
    options = SourceOptions.parse(
        _options(
            MAXRECORDSPERTRIGGER="500", failondataloss="False", **{"kafka.security.protocol": "SSL"}
        )
    )
    assert options.topics == ("a", "b")
    assert options.max_records_per_trigger == 500
    assert options.fail_on_data_loss is False
    assert options.max_records_per_partition == 200_000
    assert options.poll_timeout_ms == 1000
    assert options.fetch_batch_size == 10_000
    assert options.kafka_config["security.protocol"] == "SSL"
    assert options.kafka_config["enable.auto.commit"] == "false"
    assert options.bootstrap_servers == "127.0.0.1:9092"
    assert "security" not in repr(options)


def test_source_options_http_registry() -> None:
    options = SourceOptions.parse(
        {
            "kafka.bootstrap.servers": "b:9092",
            "subscribe": "t",
            "contracts.path": "c.yaml",
            "registry.url": "http://registry:8081",
            "registry.client.basic.auth.user.info": "user:secret",
        }
    )
    assert options.registry_path is None
    assert options.registry_url == "http://registry:8081"
    assert options.registry_client_config == {"basic.auth.user.info": "user:secret"}
    assert "secret" not in repr(options)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"maxOffsetsPerTrigger": "5"},
            "unknown cdc_kafka option(s): maxoffsetspertrigger"
            " (did you mean maxRecordsPerTrigger?); valid options: subscribe, startingOffsets,",
        ),
        ({"maxRecordsPerTrigger": "0"}, "maxRecordsPerTrigger must be a positive integer, got 0"),
        ({"failOnDataLoss": "maybe"}, "failOnDataLoss must be true or false, got 'maybe'"),
        ({"subscribe": "  "}, "cdc_kafka option(s) required: subscribe"),
        ({"subscribe": ","}, "subscribe must list at least one topic (comma-separated)"),
    ],
)
def test_source_options_errors(extra: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SourceOptions.parse(_options(**extra))
    assert str(info.value).startswith(message)


def test_source_options_required() -> None:
    with pytest.raises(ConfigError) as info:
        SourceOptions.parse({"subscribe": "t"})
    assert str(info.value) == (
        "cdc_kafka option(s) required: kafka.bootstrap.servers, contracts.path,"
        " registry.path (or registry.url)"
    )


# ------------------------------------------------------------------ starting / ending offsets

WM = {T0: Watermarks(0, 10), T1: Watermarks(5, 20), T2: Watermarks(0, 0)}


def test_resolve_earliest_latest() -> None:
    assert resolve_starting_offsets(StartingPosition("earliest"), WM) == {T0: 0, T1: 5, T2: 0}
    assert resolve_starting_offsets(StartingPosition("latest"), WM) == {T0: 10, T1: 20, T2: 0}


def test_resolve_specific_fills_unlisted_partitions_with_earliest() -> None:
    position = StartingPosition("specific", offsets={T0: 7, T1: -1})
    assert resolve_starting_offsets(position, WM) == {T0: 7, T1: 20, T2: 0}


def test_resolve_specific_unknown_partition() -> None:
    position = StartingPosition("specific", offsets={("orders", 9): 1})
    with pytest.raises(
        ConfigError, match="startingOffsets names partitions that do not exist: orders/9"
    ):
        resolve_starting_offsets(position, WM)


def test_resolve_timestamp_uses_end_when_no_record_is_that_new() -> None:
    position = StartingPosition("timestamp", timestamp_ms=123)
    found = {T0: 4, T1: -1, T2: -1}
    assert resolve_starting_offsets(position, WM, found) == {T0: 4, T1: 20, T2: 0}


def test_resolve_ending_offsets() -> None:
    assert resolve_ending_offsets({}, WM) == {T0: 10, T1: 20, T2: 0}
    assert resolve_ending_offsets({T0: 3, T1: -1}, WM) == {T0: 3, T1: 20, T2: 0}


# ------------------------------------------------------------------ data loss


def test_reconcile_start_detects_every_kind_of_loss() -> None:
    start = {T0: 12, T1: 2, ("gone", 0): 40}
    effective, losses = reconcile_start(start, WM)
    assert effective == {T0: 0, T1: 5, T2: 0}
    assert [(loss.topic, loss.partition, loss.kind, loss.resume_offset) for loss in losses] == [
        ("orders", 0, DataLossKind.OFFSET_BEYOND_END, 0),
        ("orders", 1, DataLossKind.OFFSETS_DELETED, 5),
        ("gone", 0, DataLossKind.PARTITION_GONE, None),
    ]
    assert [loss.describe() for loss in losses] == [
        "data loss on orders/0: the query's offset 12 is beyond the end of the partition 10;"
        " the topic was recreated or the broker lost data",
        "data loss on orders/1: offsets [2, 5) were deleted before they were read"
        " (the earliest available offset is 5)",
        "data loss on gone/0: the partition no longer exists (the query had reached offset 40)",
    ]


def test_reconcile_start_without_loss() -> None:
    effective, losses = reconcile_start({T0: 10, T1: 5}, WM)
    assert effective == {T0: 10, T1: 5, T2: 0}
    assert losses == []


def test_next_end_offsets_all_available() -> None:
    end, losses = next_end_offsets({T0: 4, T1: 5, T2: 0}, WM)
    assert end == {T0: 10, T1: 20, T2: 0}
    assert losses == []


def test_next_end_offsets_respects_available_now_target() -> None:
    target = {T0: 8, T1: 25}  # T2 appeared after the target was recorded
    end, _ = next_end_offsets({T0: 4, T1: 5}, WM, target=target)
    assert end == {T0: 8, T1: 20}
    end, _ = next_end_offsets({T0: 8, T1: 20}, WM, target=target)
    assert end == {T0: 8, T1: 20}


def test_next_end_offsets_with_lost_offsets_ends_below_start() -> None:
    end, losses = next_end_offsets({T0: 50, T1: 5, T2: 0}, WM)
    assert end[T0] == 10
    assert [loss.kind for loss in losses] == [DataLossKind.OFFSET_BEYOND_END]
    ranges, more = ranges_between({T0: 50, T1: 5, T2: 0}, end, {T0: 0})
    assert ranges == [OffsetRange("orders", 0, 0, 10), OffsetRange("orders", 1, 5, 20)]
    assert [loss.kind for loss in more] == [DataLossKind.OFFSET_BEYOND_END]


def test_ranges_between_new_partition_starts_at_earliest() -> None:
    start = {T0: 3}
    end = {T0: 10, T1: 20}
    assert partitions_needing_earliest(start, end) == {T1}
    ranges, losses = ranges_between(start, end, {T1: 5})
    assert ranges == [OffsetRange("orders", 0, 3, 10), OffsetRange("orders", 1, 5, 20)]
    assert losses == []


def test_ranges_between_same_offsets_is_empty() -> None:
    assert ranges_between({T0: 3}, {T0: 3}, {}) == ([], [])


# ------------------------------------------------------------------ rate limit


def test_rate_limit_proportional_and_exact() -> None:
    start = {T0: 0, T1: 0, T2: 0}
    end = {T0: 900, T1: 90, T2: 10}
    limited = rate_limit(start, end, 100)
    assert sum(limited[tp] - start[tp] for tp in start) == 100
    assert limited == {T0: 88, T1: 10, T2: 2}  # ~ 90 : 9 : 1, each at least one


def test_rate_limit_no_cap_needed() -> None:
    assert rate_limit({T0: 5}, {T0: 9}, 100) == {T0: 9}


def test_rate_limit_smaller_than_partition_count_rotates() -> None:
    start = {T0: 0, T1: 0, T2: 0}
    end = {T0: 10, T1: 10, T2: 10}
    seen = []
    for _ in range(3):
        nxt = rate_limit(start, end, 1)
        (moved,) = [tp for tp in start if nxt[tp] != start[tp]]
        seen.append(moved)
        start = nxt
    assert sorted(seen) == [T0, T1, T2]


def test_rate_limit_rejects_bad_limit() -> None:
    with pytest.raises(ValueError, match="max_records must be >= 1, got 0"):
        rate_limit({T0: 0}, {T0: 1}, 0)


partition_backlogs = st.dictionaries(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 7)),
    st.tuples(st.integers(0, 1_000), st.integers(0, 5_000)),
    min_size=1,
    max_size=10,
)


@settings(deadline=None)
@given(partition_backlogs, st.integers(1, 20_000))
def test_rate_limit_never_exceeds_cap_and_sums_exactly(
    backlogs: dict[tuple[str, int], tuple[int, int]], cap: int
) -> None:
    start = {tp: s for tp, (s, _) in backlogs.items()}
    end = {tp: s + n for tp, (s, n) in backlogs.items()}
    limited = rate_limit(start, end, cap)
    assert set(limited) == set(end)
    for tp in end:
        assert start[tp] <= limited[tp] <= end[tp]
    admitted = sum(limited[tp] - start[tp] for tp in end)
    assert admitted == min(cap, sum(end[tp] - start[tp] for tp in end))


@settings(deadline=None)
@given(partition_backlogs, st.integers(1, 50))
def test_rate_limit_starves_no_partition(
    backlogs: dict[tuple[str, int], tuple[int, int]], cap: int
) -> None:
    start = {tp: s for tp, (s, _) in backlogs.items()}
    end = {tp: s + n for tp, (s, n) in backlogs.items()}
    with_data = {tp for tp in end if end[tp] > start[tp]}
    if cap >= len(with_data):
        limited = rate_limit(start, end, cap)
        assert all(limited[tp] > start[tp] for tp in with_data)
        return
    # Fewer records than partitions: every partition advances within ceil(n / cap) batches
    # (as long as no partition runs dry meanwhile, which the backlog bound below ensures).
    rounds = math.ceil(len(with_data) / cap)
    if any(end[tp] - start[tp] < rounds for tp in with_data):
        return
    advanced: set[tuple[str, int]] = set()
    current = dict(start)
    for _ in range(rounds):
        nxt = rate_limit(current, end, cap)
        advanced |= {tp for tp in end if nxt[tp] > current[tp]}
        current = nxt
    assert advanced == with_data


# ------------------------------------------------------------------ splitting


def test_split_range_even_pieces() -> None:
    pieces = split_range(OffsetRange("t", 0, 10, 20), 3)
    assert [(p.start, p.end) for p in pieces] == [(10, 12), (12, 15), (15, 17), (17, 20)]


def test_split_range_small_and_empty() -> None:
    assert split_range(OffsetRange("t", 0, 10, 12), 3) == [OffsetRange("t", 0, 10, 12)]
    assert split_range(OffsetRange("t", 0, 10, 10), 3) == []


@settings(deadline=None)
@given(st.integers(0, 10**12), st.integers(0, 20_000), st.integers(1, 30_000))
def test_split_range_covers_exactly_without_overlap(start: int, size: int, cap: int) -> None:
    pieces = split_range(OffsetRange("t", 1, start, start + size), cap)
    assert sum(p.size for p in pieces) == size
    assert all(0 < p.size <= cap for p in pieces)
    assert len(pieces) == math.ceil(size / cap)
    if pieces:
        assert pieces[0].start == start
        assert pieces[-1].end == start + size
    for left, right in itertools.pairwise(pieces):
        assert left.end == right.start
    if pieces:  # near-equal pieces
        assert max(p.size for p in pieces) - min(p.size for p in pieces) <= 1


@settings(max_examples=50)
@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 3000)), max_size=6), st.integers(1, 500)
)
def test_plan_ranges_preserves_every_offset(spans: list[tuple[int, int]], cap: int) -> None:
    ranges = [OffsetRange("t", i, s, s + n) for i, (s, n) in enumerate(spans)]
    planned = plan_ranges(ranges, cap)
    covered = {(p.partition, o) for p in planned for o in range(p.start, p.end)}
    expected = {(r.partition, o) for r in ranges for o in range(r.start, r.end)}
    assert covered == expected
    assert sum(p.size for p in planned) == len(expected)


@settings(max_examples=50)
@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 3000)), max_size=8),
    st.integers(1, 5000),
)
def test_pack_ranges_keeps_every_range_once_in_order(
    spans: list[tuple[int, int]], minimum: int
) -> None:
    ranges = [OffsetRange("t", i, s, s + n) for i, (s, n) in enumerate(spans)]
    tasks = pack_ranges(ranges, minimum)
    assert [r for task in tasks for r in task] == ranges
    assert all(task for task in tasks)
    for task in tasks[:-1]:  # every task but the last reaches the minimum ...
        assert sum(r.size for r in task) >= minimum
        # ... and would not have without its last range
        assert sum(r.size for r in task[:-1]) < minimum


# ------------------------------------------------------------------ fetch_range termination


class _Error:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code

    def fatal(self) -> bool:
        return False

    def str(self) -> str:
        return f"error {self._code}"


class _Msg:
    def __init__(self, offset: int, error: _Error | None = None) -> None:
        self._offset = offset
        self._error = error

    def error(self) -> _Error | None:
        return self._error

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_000 + self._offset)

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v%d" % self._offset


class _FakeConsumer:
    """Serves a partition whose records sit at ``offsets`` with watermarks ``low``/``high``."""

    def __init__(self, offsets: list[int], low: int, high: int) -> None:
        self.offsets, self.low, self.high = offsets, low, high
        self.position = 0
        self.closed = False
        self.polls = 0

    def assign(self, tps: list[Any]) -> None:
        self.position = tps[0].offset

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        from confluent_kafka import KafkaError

        self.polls += 1
        if self.position < self.low:
            return [_Msg(self.position, _Error(KafkaError._AUTO_OFFSET_RESET))]
        out = [_Msg(o) for o in self.offsets if o >= self.position][:num_messages]
        if out:
            self.position = out[-1].offset() + 1
        if len(out) < num_messages and self.position <= self.high:
            out.append(_Msg(self.high, _Error(KafkaError._PARTITION_EOF)))
            self.position = self.high + 1
        return out

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        return self.low, self.high

    def close(self) -> None:
        self.closed = True


def _fetch(
    consumer: _FakeConsumer, start: int, end: int, losses: list[DataLoss] | None = None, **kw: Any
) -> list[int]:
    def on_loss(loss: DataLoss) -> None:
        if losses is None:
            raise DataLossError(loss.describe())
        losses.append(loss)

    chunks: Iterator[list[Any]] = fetch_range(
        {"bootstrap.servers": "x:1"},
        OffsetRange("t", 0, start, end),
        on_data_loss=on_loss,
        batch_size=4,
        consumer_factory=lambda config: consumer,
        **kw,
    )
    return [message[2] for chunk in chunks for message in chunk]


def test_fetch_reads_exactly_the_range() -> None:
    consumer = _FakeConsumer(list(range(20)), 0, 20)
    assert _fetch(consumer, 3, 11) == list(range(3, 11))
    assert consumer.closed


def test_fetch_tolerates_compaction_gaps_inside_and_at_the_end() -> None:
    consumer = _FakeConsumer([0, 1, 4, 5, 9], 0, 10)
    assert _fetch(consumer, 0, 8) == [0, 1, 4, 5]
    # A gap at the start is not loss when the earliest offset is still at or below the start.
    assert _fetch(_FakeConsumer([0, 1, 4, 5, 9], 0, 10), 2, 10) == [4, 5, 9]


def test_fetch_gap_below_earliest_offset_is_data_loss() -> None:
    consumer = _FakeConsumer([6, 7, 8], 6, 9)
    with pytest.raises(DataLossError, match=r"offsets \[2, 6\) were deleted"):
        _fetch(consumer, 2, 9)
    losses: list[DataLoss] = []
    assert _fetch(_FakeConsumer([6, 7, 8], 6, 9), 2, 9, losses) == [6, 7, 8]
    assert [loss.kind for loss in losses] == [DataLossKind.OFFSETS_DELETED]


def test_fetch_partition_ending_before_range_is_data_loss() -> None:
    with pytest.raises(DataLossError, match="records from offset 3 vanished"):
        _fetch(_FakeConsumer([0, 1, 2], 0, 3), 0, 10)
    losses: list[DataLoss] = []
    assert _fetch(_FakeConsumer([0, 1, 2], 0, 3), 0, 10, losses) == [0, 1, 2]
    assert [loss.kind for loss in losses] == [DataLossKind.RECORDS_MISSING]


def test_fetch_times_out_without_progress() -> None:
    class Stuck(_FakeConsumer):
        def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
            self.polls += 1
            return []

    ticks = iter(range(0, 1000, 10))
    consumer = Stuck([], 0, 100)
    with pytest.raises(BrokerUnavailableError) as info:
        _fetch(consumer, 0, 5, clock=lambda: float(next(ticks)), fetch_timeout_ms=25_000)
    assert str(info.value) == "cannot fetch t/0 offsets [0, 5) from Kafka at x:1 within 25s"
    assert consumer.closed


# ------------------------------------------------------------------ stream reader wiring


class _FakeMetadata:
    """Stands in for the driver-side Kafka client of :class:`KafkaStreamReader`."""

    def __init__(self, watermarks: dict[tuple[str, int], Watermarks]) -> None:
        self.marks = watermarks
        self.calls = 0

    def topic_watermarks(self, topics: Any) -> dict[tuple[str, int], Watermarks]:
        self.calls += 1
        return {tp: wm for tp, wm in self.marks.items() if tp[0] in topics}

    def watermarks(self, tps: Any) -> dict[tuple[str, int], Watermarks]:
        self.calls += 1
        return {tp: self.marks[tp] for tp in tps if tp in self.marks}

    def offsets_for_times(self, tps: Any, timestamp_ms: int) -> dict[tuple[str, int], int]:
        # The broker's answer: the first offset at or after the time, -1 when none is.
        self.calls += 1
        self.asked = timestamp_ms
        return {tp: self.by_time.get(tp, -1) for tp in tps}

    by_time: dict[tuple[str, int], int] = {}
    asked: int | None = None

    def close(self) -> None:
        pass


def _stream_reader(marks: dict[tuple[str, int], Watermarks], **extra: str) -> Any:
    from pyspark.sql.types import StructType

    from cdc.source import KafkaStreamReader

    options = SourceOptions.parse(_options(subscribe="orders", **extra))
    reader = KafkaStreamReader(options, StructType())
    reader._metadata = _FakeMetadata(marks)  # type: ignore[assignment]
    return reader


def test_stream_reader_read_limits_and_available_now_target() -> None:
    from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

    marks = {T0: Watermarks(0, 30), T1: Watermarks(0, 10)}
    reader = _stream_reader(marks, maxRecordsPerTrigger="8")
    assert reader.getDefaultReadLimit() == ReadMaxRows(8)
    start = reader.initialOffset()
    assert start == {"orders": {"0": 0, "1": 0}}
    assert reader.reportLatestOffset() is None

    assert reader.latestOffset(start, ReadMaxRows(8)) == {"orders": {"0": 6, "1": 2}}
    # ReadAllAvailable (e.g. Trigger.Once) must ignore maxRecordsPerTrigger.
    assert reader.latestOffset(start, ReadAllAvailable()) == {"orders": {"0": 30, "1": 10}}
    assert reader.reportLatestOffset() == {"orders": {"0": 30, "1": 10}}

    reader.prepareForTriggerAvailableNow()
    marks[T0] = Watermarks(0, 50)  # arrives after the target: not read by this run
    assert reader.latestOffset(start, ReadAllAvailable()) == {"orders": {"0": 30, "1": 10}}
    assert reader.reportLatestOffset() == {"orders": {"0": 50, "1": 10}}


def test_stream_reader_plans_split_tasks_and_empty_ranges_without_io() -> None:
    marks = {T0: Watermarks(0, 30), T1: Watermarks(0, 10)}
    reader = _stream_reader(marks, maxRecordsPerPartition="12", minRecordsPerTask="1")
    calls = reader._metadata.calls
    assert reader.partitions({"orders": {"0": 5}}, {"orders": {"0": 5}}) == []
    assert reader._metadata.calls == calls
    planned = reader.partitions({"orders": {"0": 0}}, {"orders": {"0": 30, "1": 10}})
    assert [repr(p) for p in planned] == [
        "KafkaInputPartition(orders/0 [0, 10))",
        "KafkaInputPartition(orders/0 [10, 20))",
        "KafkaInputPartition(orders/0 [20, 30))",
        "KafkaInputPartition(orders/1 [0, 10))",
    ]
    # By default small ranges share a task: one task for a small batch over many partitions.
    packed = _stream_reader(marks, maxRecordsPerPartition="12", minRecordsPerTask="15")
    planned = packed.partitions({"orders": {"0": 0}}, {"orders": {"0": 30, "1": 10}})
    assert [repr(p) for p in planned] == [
        "KafkaInputPartition(orders/0 [0, 10), orders/0 [10, 20))",
        "KafkaInputPartition(orders/0 [20, 30), orders/1 [0, 10))",
    ]
    planned = _stream_reader(marks).partitions({"orders": {"0": 0}}, {"orders": {"0": 30, "1": 10}})
    assert [repr(p) for p in planned] == ["KafkaInputPartition(orders/0 [0, 30), orders/1 [0, 10))"]


def test_stream_reader_data_loss_fails_or_continues() -> None:
    from pyspark.sql.streaming.datasource import ReadAllAvailable

    marks = {T0: Watermarks(0, 3)}
    start = {"orders": {"0": 10, "1": 4}}
    with pytest.raises(DataLossError) as info:
        _stream_reader(marks).latestOffset(start, ReadAllAvailable())
    assert str(info.value) == (
        "data loss on orders/0: the query's offset 10 is beyond the end of the partition 3;"
        " the topic was recreated or the broker lost data; data loss on orders/1: the partition"
        " no longer exists (the query had reached offset 4); set failOnDataLoss=false to skip"
        " the lost records and continue, or reset the pipeline's offsets with `cdc replay`"
    )
    reader = _stream_reader(marks, failOnDataLoss="false")
    end = reader.latestOffset(start, ReadAllAvailable())
    assert end == {"orders": {"0": 3}}
    planned = reader.partitions(start, end)
    assert [repr(p) for p in planned] == ["KafkaInputPartition(orders/0 [0, 3))"]


def test_stream_reader_pickles_without_its_client() -> None:
    import pickle

    reader = _stream_reader({T0: Watermarks(0, 1)})
    copy = pickle.loads(pickle.dumps(reader))
    assert copy._metadata is None
    assert copy._options == reader._options


def test_stream_reader_starting_timestamp_uses_the_brokers_lookup() -> None:
    """The part Tansu cannot show (its ListOffsets-by-time answers 0): a middle timestamp."""
    marks = {T0: Watermarks(0, 30), T1: Watermarks(5, 10)}
    reader = _stream_reader(marks, startingTimestamp="1500000", startingOffsets="earliest")
    reader._metadata.by_time = {T0: 12}  # partition 1 has no record at or after the time
    assert reader.initialOffset() == {"orders": {"0": 12, "1": 10}}
    assert reader._metadata.asked == 1_500_000


def test_fetch_consumer_prefetches_a_bounded_queue_without_stalling() -> None:
    # A small prefetch queue is overfilled by one fetch response; librdkafka's default
    # fetch.queue.backoff.ms (1 s) would then stall the task after every response.
    configs: list[dict[str, Any]] = []

    def factory(config: dict[str, Any]) -> _FakeConsumer:
        configs.append(config)
        return _FakeConsumer(list(range(20)), 0, 20)

    def read(kafka: dict[str, str]) -> list[int]:
        chunks = fetch_range(
            kafka,
            OffsetRange("t", 0, 0, 10),
            on_data_loss=print,
            batch_size=4,
            consumer_factory=factory,
        )
        return [message[2] for chunk in chunks for message in chunk]

    assert read({"bootstrap.servers": "x:1"}) == list(range(10))
    assert configs[-1]["queued.min.messages"] == 4
    assert configs[-1]["fetch.queue.backoff.ms"] == 10
    read({"bootstrap.servers": "x:1", "fetch.queue.backoff.ms": "100"})
    assert configs[-1]["fetch.queue.backoff.ms"] == "100"
