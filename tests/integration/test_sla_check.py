"""``cdc sla check`` against a real pipeline: a Slack webhook (a local HTTP receiver) and SNS
(moto's server, its messages read back through an SQS subscription) get each breach once
when it opens and once when it closes; the webhook URL never appears in the output."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cdc.cli import main
from cdc.pipeline.queries import run_pipelines
from tests.support.envelopes import change
from tests.support.kafka import produce
from tests.support.local_settings import cli_args, make_settings
from tests.support.moto_server import moto_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PIPELINE = "crm_contacts"


@pytest.fixture
def slack() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local incoming-webhook receiver: its URL and the JSON bodies posted to it."""
    posts: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            posts.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/s3cr3tpath", posts
    finally:
        server.shutdown()
        server.server_close()


def test_sla_breaches_are_notified_once_when_they_open_and_once_when_they_close(
    spark: Any,
    fresh_kafka: str,
    tmp_path: Path,
    slack: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import boto3

    url, posts = slack
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TEST_SLACK_WEBHOOK": url,
    }.items():
        monkeypatch.setenv(key, value)
    lines = [change(f"c{i}", "c", 1000 * (i + 1), email=f"c{i}@x.io") for i in range(4)]
    produce(fresh_kafka, "crm.contacts", lines, tmp_path)
    settings = make_settings(fresh_kafka, tmp_path)
    run_pipelines(spark, settings, [PIPELINE], available_now=True)
    more = [change(f"n{i}", "c", 9000 + i, email=f"n{i}@x.io") for i in range(2)]
    produce(fresh_kafka, "crm.contacts", more, tmp_path)  # now behind its topic

    with moto_server(tmp_path) as endpoint:
        sns = boto3.client("sns", endpoint_url=endpoint, region_name="us-east-1")
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        topic = sns.create_topic(Name="cdc-sla")["TopicArn"]
        queue = sqs.create_queue(QueueName="oncall")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

        def received() -> list[str]:
            got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for m in got.get("Messages", []):
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            return [json.loads(m["Body"])["Subject"] for m in got.get("Messages", [])]

        args = [
            "sla",
            "check",
            "--pipeline",
            PIPELINE,
            *cli_args(fresh_kafka, tmp_path),
            "--set",
            "notify.slack_webhook_url=env:TEST_SLACK_WEBHOOK",
            "--set",
            f"notify.sns_topic_arn={topic}",
            "--set",
            f"notify.sns_endpoint_url={endpoint}",
            "--set",
            "notify.sns_region=us-east-1",
            "--set",
            "defaults.sla.freshness_seconds=0.001",
        ]
        assert main(args) == 1
        out, err = capsys.readouterr()
        assert out.splitlines()[0].startswith(f"{PIPELINE} freshness: BREACH ")
        assert out.splitlines()[1] == f"{PIPELINE} no_records: ok"
        assert [p["text"].splitlines()[0] for p in posts] == [f"*SLA breach: {PIPELINE} freshness*"]
        assert received() == [f"SLA breach: {PIPELINE} freshness"]
        assert "s3cr3tpath" not in out + err

        assert main(args) == 1  # still open: nobody is told again
        capsys.readouterr()
        assert len(posts) == 1 and received() == []

        run_pipelines(spark, settings, [PIPELINE], available_now=True)  # caught up
        assert main(args) == 0
        out, _ = capsys.readouterr()
        assert out.splitlines()[-1] == f"{PIPELINE}/freshness: resolved"
        assert posts[-1]["text"].splitlines()[0] == f"*SLA resolved: {PIPELINE} freshness*"
        assert received() == [f"SLA resolved: {PIPELINE} freshness"]

        # The webhook gone: one line naming the notifier, not its URL; exit 2.
        more = [change(f"m{i}", "c", 19000 + i, email=f"m{i}@x.io") for i in range(2)]
        produce(fresh_kafka, "crm.contacts", more, tmp_path)
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", "http://127.0.0.1:9/services/T0/B0/s3cr3tpath")
        assert main(args) == 2
        out, err = capsys.readouterr()
        assert err.startswith("cdc: error: Slack webhook unreachable: ")
        assert "s3cr3tpath" not in out + err and len(err.strip().splitlines()) == 1
