"""Log lines: JSON objects with the batch's fields, and no secret in any line."""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from cdc import cli
from cdc.config.settings import load_settings
from cdc.errors import CdcError
from cdc.runtime.logs import (
    JsonFormatter,
    SecretRedactor,
    configure_logging,
    redact,
    redact_secrets_of,
    secret_values,
)
from tests.support.paths import REPO_ROOT


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
    import cdc.runtime.kafka_admin  # noqa: F401  (installs the filter)

    log = logging.getLogger("cdc.kafka.librdkafka")
    with caplog.at_level(logging.DEBUG, logger="cdc.kafka.librdkafka"):
        log.warning("GETPID [rdkafka#producer-8]: Broker: Coordinator load in progress: retrying")
        log.warning("FAIL [rdkafka#producer-8]: Connection refused")
    assert [(r.levelname, r.getMessage().split(": ", 1)[-1]) for r in caplog.records] == [
        ("DEBUG", "Broker: Coordinator load in progress: retrying"),
        ("WARNING", "Connection refused"),
    ]


SECRET = "hunter2-S3NT1NEL"


def _as_a_cdc_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Logging as in a ``cdc`` process (pytest's handlers, added when the test body starts,
    set aside; the redactor empty), restored afterwards."""
    import cdc.runtime.logs

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(cdc.runtime.logs._redactor, "secrets", set())
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", SECRET)


def _failing_command(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[str]:
    """``cdc verify`` replaced by a command that loads the settings, logs, then raises."""

    def command(args: argparse.Namespace) -> int:
        cli._settings(args)
        try:
            raise error
        except Exception:
            logging.getLogger("cdc.test").exception("while verifying with %s", SECRET)
        raise error

    monkeypatch.setitem(cli._COMMANDS, "verify", command)
    return [
        "verify",
        "--config-dir",
        str(REPO_ROOT / "config"),
        "--set",
        "kafka.client.sasl.password=env:TEST_KAFKA_PASSWORD",
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_one_line_error_and_its_log_record_are_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    _as_a_cdc_process(monkeypatch)
    args = _failing_command(monkeypatch, CdcError(f"refused: sasl.password={SECRET}"))
    assert cli.main([*args, "--log-format", log_format]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert err.splitlines()[-1] == "cdc: error: refused: sasl.password=***"
    logged = err.splitlines()[0]
    if log_format == "json":
        record = json.loads(logged)
        assert record["message"] == "while verifying with ***"
        assert record["exception"].endswith("cdc.errors.CdcError: refused: sasl.password=***")
    else:
        assert logged.endswith("ERROR cdc.test: while verifying with ***")
        assert "CdcError: refused: sasl.password=***" in err


def test_a_bug_shows_its_traceback_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A library's exception text may quote a secret: the traceback of a bug is for
    debugging, so it is shown (exit code 1), cleaned like any log line."""
    _as_a_cdc_process(monkeypatch)
    try:
        raise ValueError(f"unknown url type: {SECRET!r}")
    except ValueError as cause:
        bug = RuntimeError("while notifying")
        bug.__cause__ = cause
    args = _failing_command(monkeypatch, bug)
    assert cli.main(args) == 1
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "S3NT1NEL" not in err
    assert "Traceback (most recent call last):" in err
    assert "ValueError: unknown url type: '***'" in err
    assert err.rstrip().endswith("RuntimeError: while notifying")


def test_structured_fields_and_stack_are_redacted() -> None:
    redactor = SecretRedactor([SECRET])
    record = _record("batch", counts={"input": 1, "note": f"pw {SECRET}"}, phases=[SECRET])
    record.stack_info = f"Stack (most recent call last):\n  f({SECRET!r})"
    assert redactor.filter(record)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["counts"] == {"input": 1, "note": "pw ***"} and doc["phases"] == ["***"]
    assert SECRET not in json.dumps(doc)


def test_every_secret_setting_is_redacted_with_its_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the model marks secret is found; a webhook's path, a URL's password and the words
    of a value with spaces are redacted too (a library may quote only those)."""
    monkeypatch.setenv("TEST_HOOK", "https://hooks.slack.com/services/T0/B0/S3NT1NEL x")
    monkeypatch.setenv("TEST_DSN", "postgresql://cdc:dsn%40S3NT1NEL@[::1:5432/db")
    monkeypatch.setenv("TEST_REGISTRY", "https://cdc:reg-S3NT1NEL@registry:8081")
    settings = load_settings(
        "local",
        [
            "notify.slack_webhook_url=env:TEST_HOOK",
            "warehouse.dsn=env:TEST_DSN",
            "registry.url=env:TEST_REGISTRY",
            "registry.client.basic.auth.user.info=cdc:basic-S3NT1NEL",
            "dr.storage_options.AWS_SECRET_ACCESS_KEY=dr-S3NT1NEL",
            "lake.storage_options.AWS_ENDPOINT_URL=http://minio:9000",  # not a secret
            "kafka.java_client.sasl.jaas.config=org.apache.kafka.common.security.plain."
            'PlainLoginModule required username="cdc" password="jaas-S3NT1NEL";',
            "kafka.client.security.protocol=SASL_SSL",  # not a secret either
        ],
        config_dir=REPO_ROOT / "config",
        environ={},
    )
    found = secret_values(settings)
    redactor = SecretRedactor(found)
    for text in (
        "InvalidURL: URL can't contain control characters. '/services/T0/B0/S3NT1NEL x'",
        "unknown url type: 'https://hooks.slack.com/services/T0/B0/S3NT1NEL'",
        'in URI: "postgresql://cdc:dsn%40S3NT1NEL@[::1:5432/db"',
        "password dsn@S3NT1NEL refused",
        "GET https://cdc:reg-S3NT1NEL@registry:8081/schemas failed",
        "basic auth cdc:basic-S3NT1NEL",
        "signature of dr-S3NT1NEL",
        'PlainLoginModule required username="cdc" password="jaas-S3NT1NEL";',
    ):
        assert "S3NT1NEL" not in redactor.redact(text), text
    # Only a secret value's own pieces: the words of a JAAS config are not secrets.
    assert redactor.redact("a key is required") == "a key is required"
    assert "http://minio:9000" not in found and "SASL_SSL" not in found
    # A registry URL without credentials holds no secret: it stays readable.
    plain = load_settings(
        "local", ["registry.url=http://registry:8081"], config_dir=REPO_ROOT / "config"
    )
    assert "http://registry:8081" not in secret_values(plain)


def test_redact_uses_what_the_command_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    _as_a_cdc_process(monkeypatch)
    settings = load_settings(
        "local",
        ["kafka.client.sasl.password=env:TEST_KAFKA_PASSWORD"],
        config_dir=REPO_ROOT / "config",
    )
    assert redact(f"x {SECRET}") == f"x {SECRET}"
    redact_secrets_of(settings)
    assert redact(f"x {SECRET}") == "x ***"
