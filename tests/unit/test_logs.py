"""Log lines: JSON objects with the batch's fields, and no secret in any line."""

from __future__ import annotations

import json
import logging

import pytest

from cdc.config import load_settings
from cdc.logs import (
    JsonFormatter,
    SecretRedactor,
    configure_logging,
    redact_secrets_of,
    secret_values,
)
from tests.conftest import REPO_ROOT


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("cdc.batch", logging.INFO, "x.py", 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_the_structured_fields() -> None:
    line = JsonFormatter().format(
        _record("pipeline %s batch %d", "p", 3, pipeline="p", batch_id=3, counts={"input": 5})
    )
    doc = json.loads(line)
    assert doc["message"] == "pipeline p batch 3" and doc["level"] == "INFO"
    assert (doc["pipeline"], doc["batch_id"], doc["counts"]) == ("p", 3, {"input": 5})
    assert doc["logger"] == "cdc.batch" and doc["time"].endswith("+00:00")


def test_secret_values_are_found_by_name_and_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "hunter2-long")
    settings = load_settings(
        "local",
        [
            "kafka.client.sasl.username=alice",
            "kafka.client.sasl.password=env:TEST_KAFKA_PASSWORD",
            "lake.storage_options.AWS_SECRET_ACCESS_KEY=abcd1234secret",
        ],
        config_dir=REPO_ROOT / "config",
        environ={},
    )
    found = secret_values(settings)
    assert {"hunter2-long", "abcd1234secret"} <= found
    assert "alice" not in found  # a user name is not a secret
    redactor = SecretRedactor(found)
    record = _record("connect failed: sasl.password=%s jaas=%s", "hunter2-long", "x")
    assert redactor.filter(record)
    assert record.getMessage() == "connect failed: sasl.password=*** jaas=x"


def test_configured_logging_redacts_every_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", "hunter2-long")
    settings = load_settings(
        "local",
        ["kafka.client.sasl.password=env:TEST_KAFKA_PASSWORD"],
        config_dir=REPO_ROOT / "config",
    )
    root = logging.getLogger()
    # As in a `cdc` process: nobody else handles records (pytest's handlers set aside).
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    configure_logging(verbose=True, json_lines=True)
    redact_secrets_of(settings)
    logging.getLogger("cdc.kafka.librdkafka").warning("auth with hunter2-long failed")
    err = capsys.readouterr().err
    assert "hunter2-long" not in err
    assert json.loads(err.strip().splitlines()[-1])["message"] == "auth with *** failed"


def test_librdkafka_retries_it_handles_itself_are_debug_not_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import cdc.kafka_admin  # noqa: F401  (installs the filter)

    log = logging.getLogger("cdc.kafka.librdkafka")
    with caplog.at_level(logging.DEBUG, logger="cdc.kafka.librdkafka"):
        log.warning("GETPID [rdkafka#producer-8]: Broker: Coordinator load in progress: retrying")
        log.warning("FAIL [rdkafka#producer-8]: Connection refused")
    assert [(r.levelname, r.getMessage().split(": ", 1)[-1]) for r in caplog.records] == [
        ("DEBUG", "Broker: Coordinator load in progress: retrying"),
        ("WARNING", "Connection refused"),
    ]
