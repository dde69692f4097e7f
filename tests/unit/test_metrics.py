"""The service's metrics and its /metrics, /healthz and /readyz endpoints (no Spark)."""

from __future__ import annotations

import pytest

from cdc.config.settings import SlaSettings
from cdc.ops.metrics import METRIC_NAMES, MetricsServer, ServiceMetrics, consumer_lag
from cdc.pipeline.batch import BatchStats
from tests.support.endpoints import http_get as _get
from tests.support.endpoints import metric_samples


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return metric_samples(metrics.exposition().decode())


def test_batch_stats_move_the_counters() -> None:
    metrics = ServiceMetrics(["crm_contacts", "orders"])
    before = samples(metrics)
    assert before[("cdc_input_records_total", (("pipeline", "orders"),))] == 0
    stats = BatchStats(
        3,
        input_rows=10,
        bronze_rows=8,
        quarantined=2,
        quarantine_reasons={"decode_error": 1, "not_framed": 1},
        inserted=4,
        updated=2,
        closed=2,
        duplicates=1,
        retries=1,
        seconds=1.5,
        phases={"read": 0.5, "merge": 0.7},
    )
    metrics.on_batch("crm_contacts", stats)
    metrics.on_batch("crm_contacts", stats)
    got = samples(metrics)
    c = (("pipeline", "crm_contacts"),)
    assert got[("cdc_input_records_total", c)] == 20
    assert got[("cdc_bronze_records_total", c)] == 16
    reason = (("pipeline", "crm_contacts"), ("reason", "decode_error"))
    assert got[("cdc_quarantined_records_total", reason)] == 2
    assert got[("cdc_scd2_rows_total", (("change", "closed"), *c))] == 4
    assert got[("cdc_commit_retries_total", c)] == 2
    assert got[("cdc_batch_duration_seconds_count", c)] == 2
    assert got[("cdc_batch_duration_seconds_bucket", (("le", "2.5"), *c))] == 2
    phase = (("phase", "merge"), ("pipeline", "crm_contacts"))
    assert got[("cdc_batch_phase_seconds_sum", phase)] == 1.4
    assert got[("cdc_last_batch_timestamp_seconds", c)] > 1.7e9
    names = {
        name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name, _ in got
    }
    assert names - {"cdc_broker_up"} <= set(METRIC_NAMES)


def test_consumer_lag_per_partition() -> None:
    source = {
        "endOffset": '{"crm.contacts": {"0": 5, "1": 7}}',
        "latestOffset": '{"crm.contacts": {"0": 9, "1": 7, "2": 3}}',
    }
    assert consumer_lag(source) == {
        ("crm.contacts", 0): 4,
        ("crm.contacts", 1): 0,
        ("crm.contacts", 2): 3,
    }
    assert consumer_lag({"endOffset": None, "latestOffset": "not json"}) == {}
    metrics = ServiceMetrics(["p"])
    metrics.query_progress("p", {"processedRowsPerSecond": 12.5, "sources": [source]})
    got = samples(metrics)
    assert (
        got[
            (
                "cdc_consumer_lag_records",
                (("partition", "0"), ("pipeline", "p"), ("topic", "crm.contacts")),
            )
        ]
        == 4
    )
    assert got[("cdc_input_records_per_second", (("pipeline", "p"),))] == 12.5


def test_endpoints_report_liveness_readiness_and_metrics() -> None:
    metrics = ServiceMetrics(["a", "b"])
    broker = {"up": True, "probes": 0}

    def probe() -> bool:
        broker["probes"] += 1
        return bool(broker["up"])

    with MetricsServer(metrics, "127.0.0.1", 0, probe, broker_check_s=0) as server:
        assert _get(server.port, "/healthz") == (200, "ok\n")
        status, body = _get(server.port, "/readyz")
        assert status == 503
        assert body == "pipeline a is not running\npipeline b is not running\n"
        metrics.query_started("a")
        metrics.query_started("b")
        assert _get(server.port, "/readyz") == (200, "ready\n")
        metrics.query_stopped("b", "DataLossError: topic t was recreated")
        broker["up"] = False
        status, body = _get(server.port, "/readyz")
        assert status == 503
        assert body.splitlines() == [
            "pipeline b failed: DataLossError: topic t was recreated",
            "the Kafka broker does not answer",
        ]
        status, body = _get(server.port, "/metrics")
        assert status == 200
        assert 'cdc_query_failures_total{pipeline="b"} 1.0' in body
        assert "cdc_broker_up 0.0" in body
        assert _get(server.port, "/nope")[0] == 404
        metrics.query_started("b")  # restarted: its failure no longer counts
        broker["up"] = True
        assert _get(server.port, "/readyz") == (200, "ready\n")


def test_a_failing_probe_means_not_ready() -> None:
    def probe() -> bool:
        raise RuntimeError("boom")

    metrics = ServiceMetrics([])
    with MetricsServer(metrics, "127.0.0.1", 0, probe) as server:
        assert _get(server.port, "/readyz") == (503, "the Kafka broker does not answer\n")


def test_sla_levels_and_freshness_are_exported() -> None:
    metrics = ServiceMetrics(["a"], sla={"a": SlaSettings(freshness_seconds=60)})
    a = (("pipeline", "a"),)
    got = samples(metrics)
    assert got[("cdc_sla_freshness_seconds", a)] == 60
    assert got[("cdc_sla_no_records_seconds", a)] == 3600
    assert got[("cdc_sla_quarantine_ratio", a)] == 0.05
    metrics.query_started("a")
    assert samples(metrics)[("cdc_caught_up_timestamp_seconds", a)] > 1.7e9
    behind = {"endOffset": '{"t": {"0": 1}}', "latestOffset": '{"t": {"0": 5}}'}
    level = {"endOffset": '{"t": {"0": 5}}', "latestOffset": '{"t": {"0": 5}}'}
    metrics.caught_up.labels("a").set(0)
    metrics.query_progress("a", {"sources": [behind]})
    assert samples(metrics)[("cdc_caught_up_timestamp_seconds", a)] == 0  # still behind
    metrics.query_progress("a", {"sources": [level]})
    assert samples(metrics)[("cdc_caught_up_timestamp_seconds", a)] > 1.7e9
    metrics.caught_up.labels("a").set(0)
    metrics.query_idle("a")  # no new record at all: caught up
    assert samples(metrics)[("cdc_caught_up_timestamp_seconds", a)] > 1.7e9
    metrics.last_record.labels("a").set(0)
    metrics.on_batch("a", BatchStats(0))  # an empty batch is not a record
    assert samples(metrics)[("cdc_last_record_timestamp_seconds", a)] == 0


def test_progress_line(capsys: pytest.CaptureFixture[str]) -> None:
    from cdc.cli import print_progress

    print_progress(
        "p", BatchStats(4, input_rows=10, bronze_rows=9, quarantined=1, inserted=3, seconds=1.25)
    )
    assert capsys.readouterr().err == (
        "p batch 4: 10 records, bronze +9, quarantine +1, silver 3 inserted, 0 updated,"
        " 0 closed in 1.2s\n"
    )
