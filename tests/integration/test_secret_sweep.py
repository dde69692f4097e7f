"""No secret reaches any output: every secret setting of the settings model, given a malformed
value that carries a sentinel, through the real ``cdc`` command that uses it.

The settings come from the model itself (:func:`cdc.config.settings.secret_fields`, the fields typed
:class:`cdc.config.settings.Secret`): a secret setting added later fails
:func:`test_every_secret_setting_has_a_case` until a case here exercises it. Each case runs
``python -m cdc.cli`` in a subprocess, once with text and once with JSON logs (``-v``), and
the sentinel must be in neither stdout nor stderr (one-line errors, tracebacks, log records)
nor in any file the command wrote (Delta commits, checkpoints, the SLA state). The error must
still name the problem (``expect``). No JVM is started, but for the Java client's case
(``slow``: Spark's Kafka source against the session's broker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cdc.config.settings import secret_fields
from tests.support.endpoints import free_port
from tests.support.moto_server import moto_server
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration

SENTINEL = "S3NT1NEL"
"""Every secret value of a case holds ``S3NT1NEL`` and a fresh suffix (``{S}`` below)."""

CLOSED = free_port()
"""A loopback port nobody listens on: Kafka, PostgreSQL, S3, a registry that is down."""

S3 = [
    "AWS_REGION=us-east-1",
    "AWS_ACCESS_KEY_ID=AKIDCDCSWEEP",
    "AWS_ALLOW_HTTP=true",
]
"""Object-store settings around the secret ones (the access key id is not the secret)."""


@dataclass(frozen=True)
class Case:
    """One secret setting, a malformed value for it, the command that reads it."""

    setting: str
    """The :func:`secret_fields` path the case exercises."""
    name: str
    command: tuple[str, ...]
    overrides: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment of the command; ``{S}`` is the sentinel (``{CLOSED}``: the closed port)."""
    exit_code: int = 2
    expect: str = ""
    """Part of stderr (or stdout) that says what is wrong."""
    wrong: str = ""
    """What the output must not say either (a wrong host)."""
    needs: frozenset[str] = frozenset()
    """``gold``: gold tables to publish; ``moto``: Secrets Manager; ``broker``: the session's
    Kafka broker (and Spark in the command: slow)."""


def _s3(section: str, *extra: str) -> tuple[str, ...]:
    return tuple(f"{section}.storage_options.{item}" for item in (*S3, *extra))


CASES = [
    # kafka.client: librdkafka (every command that talks to Kafka), SASL.
    Case(
        "kafka.client",
        "run-sasl-mechanism",
        ("run", "--pipeline", "crm_contacts", "--available-now"),
        (
            "kafka.client.security.protocol=SASL_PLAINTEXT",
            "kafka.client.sasl.mechanism=env:SWEEP_MECHANISM",
        ),
        {"SWEEP_MECHANISM": "{S} PLAIN"},
        expect="cdc: error: kafka.client.sasl.mechanisms: librdkafka refuses this setting",
    ),
    Case(
        "kafka.client",
        "sla-check-sasl-password",
        ("sla", "check"),
        (
            "kafka.client.security.protocol=SASL_PLAINTEXT",
            "kafka.client.sasl.mechanism=PLAIN",
            "kafka.client.sasl.username=cdc",
            "kafka.client.sasl.password=env:SWEEP_PASSWORD",
        ),
        {"SWEEP_PASSWORD": '{S}" quote\\ and space'},
        exit_code=1,
        expect="broker_unreachable: BREACH cannot reach Kafka at 127.0.0.1:{CLOSED}",
    ),
    Case(
        "kafka.client",
        "produce-sasl-password",
        ("produce", "--topic", "crm.contacts", "--file", "{WORK}/records.jsonl"),
        (
            "kafka.client.security.protocol=SASL_PLAINTEXT",
            "kafka.client.sasl.mechanism=SCRAM-SHA-512",
            "kafka.client.sasl.username=cdc",
            "kafka.client.sasl.password=env:SWEEP_PASSWORD",
        ),
        {"SWEEP_PASSWORD": "{S} pw"},
        expect="cdc: error: Kafka at 127.0.0.1:{CLOSED}",
    ),
    # kafka.java_client: Spark's Kafka source only, so a real query.
    Case(
        "kafka.java_client",
        "run-jaas",
        ("run", "--pipeline", "crm_contacts", "--available-now"),
        (
            "kafka.java_client.security.protocol=SASL_PLAINTEXT",
            "kafka.java_client.sasl.mechanism=PLAIN",
            "kafka.java_client.sasl.jaas.config=env:SWEEP_JAAS",
        ),
        # No closing semicolon: a JAAS config Kafka's parser refuses.
        {
            "SWEEP_JAAS": "org.apache.kafka.common.security.plain.PlainLoginModule required"
            ' username="cdc" password="{S}"'
        },
        expect="cdc: error: pipeline crm_contacts failed: Failed to create new KafkaAdminClient",
        needs=frozenset({"broker"}),
    ),
    # registry: the HTTP registry, read by `cdc run` before Spark starts (orders has
    # expectations, bound to the reader schema).
    Case(
        "registry.url",
        "run-registry-user-info",
        ("run", "--pipeline", "orders", "--available-now"),
        ("registry.url=env:SWEEP_REGISTRY",),
        {"SWEEP_REGISTRY": "http://cdc:{S}@127.0.0.1:{CLOSED}"},
        expect="cdc: error: schema registry http://127.0.0.1:{CLOSED} failed to return",
    ),
    Case(
        "registry.url",
        "run-registry-malformed",
        ("run", "--pipeline", "orders", "--available-now"),
        ("registry.url=env:SWEEP_REGISTRY",),
        {"SWEEP_REGISTRY": "http://cdc:{S}@[::1:{CLOSED}/"},
        expect="cdc: error: registry: the HTTP client refuses registry.url <invalid URL>",
    ),
    Case(
        "registry.client",
        "run-registry-basic-auth",
        ("run", "--pipeline", "orders", "--available-now"),
        (
            "registry.url=http://127.0.0.1:{CLOSED}",
            "registry.client.basic.auth.user.info=env:SWEEP_AUTH",
        ),
        {"SWEEP_AUTH": "{S}-without-a-colon"},
        expect="cdc: error: registry: the HTTP client refuses",
    ),
    # lake.storage_options: every command that reads the lake.
    Case(
        "lake.storage_options",
        "status-secret-key",
        ("status", "--pipeline", "orders"),
        (
            "lake.root=s3://lake/sweep",
            *_s3("lake", "AWS_ENDPOINT_URL=http://127.0.0.1:{CLOSED}"),
            "lake.storage_options.AWS_SECRET_ACCESS_KEY=env:SWEEP_KEY",
        ),
        {"SWEEP_KEY": "{S} key\nwith a newline"},
        expect="cdc: error: cannot read the Delta table at s3://lake/sweep/bronze/events_orders",
    ),
    Case(
        "lake.storage_options",
        "gold-build-endpoint",
        ("gold", "build"),
        (
            "lake.root=s3://lake/sweep",
            *_s3("lake", "AWS_SECRET_ACCESS_KEY=x"),
            "lake.storage_options.AWS_ENDPOINT_URL=env:SWEEP_ENDPOINT",
        ),
        {"SWEEP_ENDPOINT": "http://{S}:notaport"},
        expect="cdc: error: cannot read the Delta table at s3://lake/sweep/silver/",
    ),
    Case(
        "lake.storage_options",
        "sla-check-session-token",
        ("sla", "check", "--pipeline", "orders"),
        (
            "lake.root=s3://lake/sweep",
            *_s3("lake", "AWS_ENDPOINT_URL=http://127.0.0.1:{CLOSED}", "AWS_SECRET_ACCESS_KEY=x"),
            "lake.storage_options.AWS_SESSION_TOKEN=env:SWEEP_TOKEN",
        ),
        {"SWEEP_TOKEN": "{S}/token"},
        exit_code=1,
        expect="lake_unreachable: BREACH cannot read the Delta table at s3://lake/sweep/",
    ),
    # dr.storage_options: the DR location (pyarrow's S3 client).
    Case(
        "dr.storage_options",
        "dr-verify-secret-key",
        ("dr", "verify"),
        (
            "dr.location=s3://dr-bucket/sweep",
            *_s3("dr", "AWS_ENDPOINT_URL=http://127.0.0.1:{CLOSED}"),
            "dr.storage_options.AWS_SECRET_ACCESS_KEY=env:SWEEP_KEY",
        ),
        {"SWEEP_KEY": "{S} key"},
        expect="cdc: error: dr verify: storage failed: ",
    ),
    Case(
        "dr.storage_options",
        "dr-snapshot-endpoint",
        ("dr", "snapshot"),
        (
            "dr.location=s3://dr-bucket/sweep",
            *_s3("dr", "AWS_SECRET_ACCESS_KEY=x"),
            "dr.storage_options.AWS_ENDPOINT_URL=env:SWEEP_ENDPOINT",
        ),
        {"SWEEP_ENDPOINT": "http://{S}:notaport"},
        expect="cdc: error: dr snapshot: storage failed: ",
    ),
    # dr.manifest_key: the HMAC key of DR manifests (too short to sign with).
    Case(
        "dr.manifest_key",
        "dr-verify-short-manifest-key",
        ("dr", "verify"),
        ("dr.location=/nonexistent/dr-sweep", "dr.manifest_key=env:SWEEP_MANIFEST_KEY"),
        {"SWEEP_MANIFEST_KEY": "{S}"},
        expect="(dr.manifest_key): the key is shorter than 32 bytes",
    ),
    # warehouse: cdc publish.
    Case(
        "warehouse.dsn",
        "publish-malformed-dsn",
        ("publish", "--target", "postgres"),
        ("warehouse.dsn=env:SWEEP_DSN",),
        {"SWEEP_DSN": "postgresql://cdc:{S}@[::1:5432/db"},
        expect="cdc: error: warehouse.dsn is not a PostgreSQL connection string: end of string"
        ' reached when looking for matching "]" in IPv6 host address (the value is not shown:'
        " it may hold a password)",
        wrong="localhost",
        needs=frozenset({"gold"}),
    ),
    Case(
        "warehouse.dsn",
        "publish-keyword-dsn",
        ("publish", "--target", "postgres"),
        ("warehouse.dsn=env:SWEEP_DSN",),
        {"SWEEP_DSN": "host=127.0.0.1 password={S} {S}-stray-word"},
        expect='cdc: error: warehouse.dsn is not a PostgreSQL connection string: missing "="'
        ' after "..." in connection info string',
        wrong="localhost",
        needs=frozenset({"gold"}),
    ),
    Case(
        "warehouse.dsn",
        "publish-unreachable-dsn",
        ("publish", "--target", "postgres"),
        ("warehouse.dsn=env:SWEEP_DSN",),
        {"SWEEP_DSN": "postgresql://cdc:{S}@127.0.0.1:{CLOSED}/analytics"},
        expect="cdc: error: cannot reach the postgres warehouse at 127.0.0.1:{CLOSED}/analytics",
        needs=frozenset({"gold"}),
    ),
    Case(
        "warehouse.password",
        "publish-password",
        ("publish", "--target", "postgres"),
        (
            "warehouse.host=127.0.0.1",
            "warehouse.port={CLOSED}",
            "warehouse.user=cdc",
            "warehouse.password=env:SWEEP_PASSWORD",
        ),
        {"SWEEP_PASSWORD": "{S}' quote and space"},
        expect="cdc: error: cannot reach the postgres warehouse at 127.0.0.1:{CLOSED}/",
        needs=frozenset({"gold"}),
    ),
    Case(
        "warehouse.password",
        "publish-password-from-file",
        ("publish", "--target", "postgres"),
        (
            "warehouse.host=127.0.0.1",
            "warehouse.port={CLOSED}",
            "warehouse.password=file:{SECRETS}/warehouse-password",
        ),
        expect="cdc: error: cannot reach the postgres warehouse at 127.0.0.1:{CLOSED}/",
        needs=frozenset({"gold"}),
    ),
    Case(
        "warehouse.password",
        "publish-password-aws-sm-not-json",
        ("publish", "--target", "postgres"),
        ("warehouse.host=127.0.0.1", "warehouse.password=aws-sm:sweep/not-json#password"),
        expect="cdc: error: secret reference 'aws-sm:sweep/not-json#password': the secret is"
        " not JSON (a #key needs an object)",
        needs=frozenset({"moto", "gold"}),
    ),
    Case(
        "warehouse.password",
        "publish-password-aws-sm-list",
        ("publish", "--target", "postgres"),
        ("warehouse.host=127.0.0.1", "warehouse.password=aws-sm:sweep/a-list#password"),
        expect="cdc: error: secret reference 'aws-sm:sweep/a-list#password': key not found",
        needs=frozenset({"moto", "gold"}),
    ),
    # lineage: a companion's OpenLineage run (cdc gold build on an empty lake: it succeeds)
    # with the http transport at a malformed URL (refused at start), a URL nobody answers,
    # an API key no HTTP header can carry (a run's event that is not sent is logged, the run
    # goes on), and the kafka transport with a SASL mechanism librdkafka refuses.
    *(
        Case(
            setting,
            f"gold-build-lineage-{name}",
            ("gold", "build"),
            ("lineage.enabled=true", "lineage.transport=http", *overrides),
            env,
            exit_code=code,
            expect=expect,
        )
        for setting, name, overrides, env, code, expect in (
            (
                "lineage.http.url",
                "url-malformed",
                ("lineage.http.url=env:SWEEP_OL_URL",),
                {"SWEEP_OL_URL": "marquez:5000/{S}"},
                2,
                "cdc: error: lineage.http.url: not an http(s) URL",
            ),
            (
                "lineage.http.url",
                "url-unreachable",
                ("lineage.http.url=env:SWEEP_OL_URL",),
                {"SWEEP_OL_URL": "http://cdc:{S}@127.0.0.1:{CLOSED}"},
                0,
                "lineage: an OpenLineage event was not sent: ",
            ),
            (
                "lineage.http.api_key",
                "api-key-not-a-header",
                (
                    "lineage.http.url=http://127.0.0.1:{CLOSED}",
                    "lineage.http.api_key=env:SWEEP_OL_KEY",
                ),
                {"SWEEP_OL_KEY": "{S}\nInjected: header"},
                0,
                "lineage: an OpenLineage event was not sent: ",
            ),
            (
                "lineage.kafka.client",
                "kafka-sasl-mechanism",
                (
                    "lineage.transport=kafka",
                    "lineage.kafka.client.security.protocol=SASL_PLAINTEXT",
                    "lineage.kafka.client.sasl.mechanism=env:SWEEP_MECHANISM",
                ),
                {"SWEEP_MECHANISM": "{S} PLAIN"},
                2,
                "cdc: error: lineage.transport kafka: cannot be set up: ",
            ),
        )
    ),
    # notify.slack_webhook_url: cdc sla check, with a breach open (the broker is down).
    *(
        Case(
            "notify.slack_webhook_url",
            f"sla-check-webhook-{name}",
            ("sla", "check", "--pipeline", "orders"),
            ("notify.slack_webhook_url=env:SWEEP_HOOK",),
            {"SWEEP_HOOK": hook},
            expect=f"cdc: error: {expect}",
        )
        for name, hook, expect in (
            (
                "without-scheme",
                "hooks.slack.com/services/T0/B0/{S}",
                "notify.slack_webhook_url: not an http(s) URL",
            ),
            (
                "with-a-space",
                "https://hooks.slack.com/services/T0/B0/{S} x",
                "notify.slack_webhook_url: not an http(s) URL",
            ),
            (
                "unreachable",
                "http://127.0.0.1:{CLOSED}/services/T0/B0/{S}",
                "Slack webhook unreachable: ",
            ),
            (
                "refuses",
                "{HOOK}/services/T0/B0/{S}",
                "Slack webhook refused the notification: HTTP 403",
            ),
        )
    ),
]


REFERENCE_ONLY = ("dr.manifest_key",)
"""Secret settings the model accepts only as a reference (never a literal key)."""


def test_every_secret_setting_has_a_case() -> None:
    """A secret setting nobody exercises here fails: add a case for it."""
    secret = set(secret_fields())
    assert secret >= {"kafka.client", "warehouse.dsn", "notify.slack_webhook_url"}
    exercised = {case.setting for case in CASES}
    assert sorted(secret - exercised) == [], "secret settings without a case"
    assert sorted(exercised - secret) == [], "cases of settings not marked secret"
    for case in CASES:  # each case sets its setting, to a value holding the sentinel
        assert any(o.startswith(case.setting) for o in case.overrides), case.name
        held = " ".join([*case.env.values(), *case.overrides])
        assert "{S}" in held or "file:{SECRETS}" in held or "moto" in case.needs, case.name


def test_every_secret_setting_is_hidden_and_known_to_the_redactor(tmp_path: Path) -> None:
    """Each setting the model marks secret, holding a sentinel: not in the settings' repr nor
    in the metrics, and every output cleaned of it (what the redactor is given)."""
    from prometheus_client import generate_latest

    from cdc.config.settings import load_settings
    from cdc.ops.metrics import ServiceMetrics
    from cdc.runtime.logs import SecretRedactor, secret_values

    values: dict[str, str] = {}
    overrides = []
    for i, (path, marker) in enumerate(secret_fields().items()):
        sentinel = f"{SENTINEL}x{i}"
        path = path.replace("*", "crm_contacts")  # a map of models: one of its entries
        if marker.carries == "entries":  # an entry whose name says it is secret
            overrides.append(f"{path}.password={sentinel}")
        elif marker.carries == "credentials":  # a URL or DSN with a password
            overrides.append(f"{path}=postgresql://cdc:{sentinel}@db:5432/a")
        elif path in REFERENCE_ONLY:  # refused as a literal: a reference to a file holding it
            sentinel = sentinel.ljust(40, "x")
            held = tmp_path / path
            held.write_text(sentinel)
            overrides.append(f"{path}=file:{held}")
        else:
            overrides.append(f"{path}={sentinel}")
        values[path] = sentinel
    settings = load_settings("local", overrides, config_dir=REPO_ROOT / "config", environ={})
    assert SENTINEL not in repr(settings)
    metrics = ServiceMetrics(
        settings.pipelines, sla={n: settings.sla(n) for n in settings.pipelines}
    )
    assert SENTINEL.encode() not in generate_latest(metrics.registry)
    redactor = SecretRedactor(secret_values(settings))
    for path, sentinel in values.items():
        assert sentinel not in redactor.redact(f"refused {sentinel}!"), path


@pytest.fixture(scope="module")
def aws_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's server with the two malformed secrets of the aws-sm cases."""
    import boto3

    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        client = boto3.client(
            "secretsmanager",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_secret(Name="sweep/not-json", SecretString=f'{{"password": "{SENTINEL}')
        client.create_secret(Name="sweep/a-list", SecretString=json.dumps([SENTINEL]))
        yield url


@pytest.fixture(scope="module")
def refusing_hook() -> Iterator[str]:
    """A webhook receiver that refuses every post (HTTP 403)."""

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(403)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _gold_tables(lake: Path) -> None:
    """One-row gold tables: enough for ``cdc publish`` to go on to the warehouse."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from cdc.gold.tables import GOLD_TABLES

    for name in GOLD_TABLES:
        write_deltalake(str(lake / "gold" / name), pa.table({"x": [1]}))


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    ]


def run_case(case: Case, tmp_path: Path, extra_env: Mapping[str, str], bootstrap: str) -> None:
    """Run the case's command with text and with JSON logs; assert the sentinel shows
    nowhere and the error says what is wrong."""
    sentinel = f"{SENTINEL}{uuid.uuid4().hex[:8]}"
    secrets = tmp_path / "secrets"  # files holding the secret: outside what is searched
    secrets.mkdir(parents=True)
    (secrets / "warehouse-password").write_text(f"{sentinel} from a file\n")

    def fill(text: str, work: Path) -> str:
        return (
            text.replace("{S}", sentinel)
            .replace("{CLOSED}", str(CLOSED))
            .replace("{WORK}", str(work))
            .replace("{SECRETS}", str(secrets))
            .replace("{HOOK}", extra_env.get("SWEEP_HOOK_BASE", ""))
        )

    def one(log_format: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
        work = tmp_path / log_format
        (work / "lake").mkdir(parents=True)
        (work / "records.jsonl").write_text(
            json.dumps({"key": {"contact_id": "c1"}, "value": None}) + "\n"
        )
        if "gold" in case.needs:
            _gold_tables(work / "lake")
        args = [
            sys.executable,
            "-m",
            "cdc.cli",
            *(fill(a, work) for a in case.command),
            "--config-dir",
            str(REPO_ROOT / "config"),
            "--log-format",
            log_format,
            "-v",
            "--progress",
        ]
        base = [
            f"kafka.bootstrap_servers={bootstrap}",
            "kafka.connect_timeout_s=1",
            f"lake.root={work / 'lake'}",
            f"checkpoints.root={work / 'checkpoints'}",
            f"warehouse.path={work / 'warehouse.duckdb'}",
            "warehouse.connect_timeout_s=1",
            "notify.timeout_s=2",
        ]
        for item in (*base, *case.overrides):
            args += ["--set", fill(item, work)]
        env = {
            **os.environ,
            **extra_env,
            **{k: fill(v, work) for k, v in case.env.items()},
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT / "src"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
            ),
        }
        done = subprocess.run(
            args, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        return work, done

    # Side by side, but for commands that start Spark: one JVM at a time on the test machine.
    with ThreadPoolExecutor(1 if "broker" in case.needs else 2) as pool:
        runs = list(pool.map(one, ["text", "json"]))
    for work, done in runs:
        where = f"{case.name} ({work.name} logs)\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        assert sentinel not in done.stdout, where
        assert sentinel not in done.stderr, where
        assert SENTINEL not in done.stdout + done.stderr, where  # nor a piece of it
        assert _files_holding(work, sentinel.encode()) == [], where
        assert done.returncode == case.exit_code, where
        assert fill(case.expect, work) in done.stdout + done.stderr, where
        assert not case.wrong or case.wrong not in done.stdout + done.stderr, where
        if work.name == "json":  # every log line is a JSON object
            for line in done.stderr.splitlines():
                if line.startswith("{"):
                    json.loads(line)


FAST = [c for c in CASES if "broker" not in c.needs]


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_no_secret_reaches_any_output(
    case: Case, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    extra: dict[str, str] = {}
    if "moto" in case.needs:
        endpoint = request.getfixturevalue("aws_endpoint")
        extra = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    if "{HOOK}" in str(case.env):
        extra["SWEEP_HOOK_BASE"] = request.getfixturevalue("refusing_hook")
    run_case(case, tmp_path, extra, f"127.0.0.1:{CLOSED}")


SPARK = [c for c in CASES if "broker" in c.needs]


@pytest.mark.slow
@pytest.mark.parametrize("case", SPARK, ids=[c.name for c in SPARK])
def test_no_secret_reaches_any_output_of_a_query(
    case: Case, tmp_path: Path, fresh_kafka: str
) -> None:
    from cdc.ingest.contracts import load_contracts
    from cdc.ingest.produce import produce_file
    from cdc.ingest.registry import FileRegistry

    records = tmp_path / "records.jsonl"  # a record for the query to read (a tombstone)
    records.write_text(json.dumps({"key": {"contact_id": "c1"}, "value": None}) + "\n")
    schemas = REPO_ROOT / "schemas"
    registry, contracts = (
        FileRegistry.load(schemas / "avro"),
        load_contracts(schemas / "contracts.yaml"),
    )
    produce_file(fresh_kafka, registry, contracts, "crm.contacts", records)
    run_case(case, tmp_path / "case", {}, fresh_kafka)
