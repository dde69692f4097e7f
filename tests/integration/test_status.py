"""``cdc status`` after a run: offsets against the topic's end, lag, last batch, tables; for
people and as JSON. No secret reaches its output, the logs or the metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cdc.cli import main
from cdc.ops.metrics import ServiceMetrics
from cdc.pipeline.queries import run_pipelines
from tests.support.envelopes import change
from tests.support.kafka import high_watermarks, produce
from tests.support.local_settings import cli_args, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PIPELINE = "crm_contacts"
SECRET = "s3cr3t-VALUE-42"


def test_status_reports_offsets_lag_last_batch_and_tables_without_secrets(
    spark: Any,
    fresh_kafka: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    lines = [change(f"c{i}", "c", 1000 * (i + 1), email=f"c{i}@x.io") for i in range(6)]
    produce(fresh_kafka, "crm.contacts", lines, tmp_path)
    settings = make_settings(fresh_kafka, tmp_path)
    metrics = ServiceMetrics([PIPELINE])
    run_pipelines(spark, settings, [PIPELINE], available_now=True, on_batch=metrics.on_batch)
    ends = high_watermarks(fresh_kafka)
    more = [change(f"n{i}", "c", 9000 + i, email=f"n{i}@x.io") for i in range(3)]
    produce(fresh_kafka, "crm.contacts", more, tmp_path)
    now = high_watermarks(fresh_kafka)
    capfd.readouterr()

    logging.getLogger("cdc").setLevel(logging.DEBUG)
    secret = f"kafka.client.sasl.password={SECRET}"
    args = [*cli_args(fresh_kafka, tmp_path), "--set", secret]
    assert main(["status", "--pipeline", PIPELINE, "--json", *args]) == 0
    out, err = capfd.readouterr()
    (status,) = json.loads(out)
    assert status["pipeline"] == PIPELINE and status["topic"] == "crm.contacts"
    assert status["committed"] == ends
    assert status["latest"] == now
    assert status["lag"] == {
        "total": sum(now.values()) - sum(ends.values()),
        "partitions": {p: now[p] - ends[p] for p in now},
    }
    assert status["lag"]["total"] >= 3
    assert status["last_batch"]["batch"] >= 0 and status["last_batch"]["seconds"] >= 0
    tables = {t["role"]: t for t in status["tables"]}
    assert tables["bronze"]["rows"] == 6 and tables["bronze"]["exists"]
    assert tables["silver"]["rows"] == 6
    assert tables["orphans"]["exists"] is False
    for text in (out, err):
        assert SECRET not in text

    assert main(["status", "--pipeline", PIPELINE, "-v", *args]) == 0
    out, err = capfd.readouterr()
    assert out.splitlines()[0] == f"{PIPELINE}: topic crm.contacts -> dim_contact"
    assert f"  lag         {status['lag']['total']} records (" in out
    assert "  bronze      " in out and "version 0, 6 rows" in out
    assert "  last batch  " in out
    assert SECRET not in out and SECRET not in err
    assert SECRET not in metrics.exposition().decode()
    assert SECRET not in caplog.text  # the log records themselves are redacted
