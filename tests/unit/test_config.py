"""Typed settings: files, env overrides, --set, secret references, error text."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cdc.config.settings import (
    Secret,
    load_settings,
    parse_duration_seconds,
    read_config,
    resolve_secret,
    secret_fields,
    secret_settings,
)
from cdc.errors import ConfigError, UnknownPipelineError
from tests.support.paths import REPO_ROOT

CONFIG = REPO_ROOT / "config"
PIPELINES = {"crm_accounts", "crm_contacts", "crm_opportunities", "orders", "behavior", "fx_rates"}
"""The shipped pipelines (config/pipelines.yaml), in every environment."""


@pytest.mark.parametrize("env", ["local", "dev", "prod"])
def test_shipped_configs_load(env: str) -> None:
    settings = load_settings(env, config_dir=CONFIG, environ={})
    assert set(settings.pipelines) == PIPELINES


def test_precedence_file_then_env_then_set() -> None:
    environ = {"CDC_KAFKA_BOOTSTRAP_SERVERS": "env:9092", "CDC_TEST_BOOTSTRAP": "ignored"}
    assert load_settings("local", config_dir=CONFIG, environ=environ).kafka.bootstrap_servers == (
        "env:9092"
    )
    settings = load_settings(
        "local", ["kafka.bootstrap_servers=set:9092"], config_dir=CONFIG, environ=environ
    )
    assert settings.kafka.bootstrap_servers == "set:9092"


def test_relative_paths_resolve_against_the_project() -> None:
    settings = load_settings("local", config_dir=CONFIG, environ={})
    assert settings.lake.root == str(REPO_ROOT / "var" / "lake")
    assert settings.registry.path == REPO_ROOT / "schemas" / "avro"


def test_set_values_are_typed() -> None:
    settings = load_settings(
        "local",
        ["pipelines.crm_contacts.max_records_per_trigger=10"],
        config_dir=CONFIG,
        environ={},
    )
    assert settings.pipeline("crm_contacts").max_records_per_trigger == 10


@pytest.mark.parametrize(
    ("overrides", "environ", "message"),
    [
        (["lake.bogus=1"], {}, "unknown key 'lake.bogus'; valid keys: root, storage_options"),
        (
            ["pipelines.crm_contacts.kind=zzz"],
            {},
            "pipelines.crm_contacts.kind: Input should be 'scd2' or 'facts'",
        ),
        (
            ["pipelines.crm_contacts.colour=red"],
            {},
            "unknown key 'pipelines.crm_contacts.colour'; valid keys: topic, kind, target",
        ),
        (["spark.trigger_interval=often"], {}, "is not a duration like '1 second' or '500 ms'"),
        (["nodots"], {}, "--set 'nodots': expected dotted.key=value"),
        # The value may be a secret: the error names the key only.
        (
            ["kafka.bootstrap_servers.x=S3NT1NEL"],
            {},
            "--set 'kafka.bootstrap_servers.x': 'bootstrap_servers' is not a section",
        ),
        ([], {"CDC_KAFKA_NOPE": "x"}, "unknown setting CDC_KAFKA_NOPE; valid for kafka:"),
        (["pipelines.orders.event_id=null"], {}, "a facts pipeline needs 'event_id'"),
        # Names become folders: none may leave the lake, checkpoint or lock root.
        (["pipelines.orders.target=../../x"], {}, "pipelines.orders.target: String should match"),
        (["pipelines.orders.topic=../x"], {}, "pipelines.orders.topic: String should match"),
        (["pipelines.orders.topic=.."], {}, "pipelines.orders.topic: Value error, '..' is not a"),
        (["pipelines.a/b.kind=facts"], {}, "pipeline name 'a/b' is not a name"),
        ([f"pipelines.{'p' * 300}.kind=facts"], {}, "at most 64 characters"),
        (["lake.root="], {}, "lake.root: String should have at least 1 character"),
        (["checkpoints.root=  "], {}, "checkpoints.root: Input should be a valid string"),
        (["checkpoints.root=' '"], {}, "checkpoints.root: String should match"),
    ],
)
def test_bad_settings_get_one_clear_line(
    overrides: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("local", overrides, config_dir=CONFIG, environ=environ)
    assert message in str(info.value)
    assert "\n" not in str(info.value) and "S3NT1NEL" not in str(info.value)


def test_unknown_env_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown env 'qa'; valid: local, dev, prod"):
        load_settings("qa", config_dir=CONFIG, environ={})
    with pytest.raises(ConfigError, match=r"config file .*dev\.yaml not found"):
        load_settings("dev", config_dir=tmp_path, environ={})


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "local.yaml").write_text("kafka:\n  bootstrap_servers: [unclosed\n")
    with pytest.raises(ConfigError, match=r"local.yaml line \d+: invalid YAML"):
        load_settings("local", config_dir=tmp_path, environ={})


# --------------------------------------------------------------------------- include


def _folder(tmp_path: Path, env_file: str, **others: str) -> Path:
    """A config folder: ``local.yaml`` and the files it includes (name -> text)."""
    (tmp_path / "local.yaml").write_text(
        "kafka: {bootstrap_servers: 'k:9092'}\nlake: {root: /l}\ncheckpoints: {root: /c}\n"
        + env_file
    )
    for name, text in others.items():
        (tmp_path / name.replace("__", ".")).write_text(text)
    return tmp_path


SHARED = (
    "pipelines:\n"
    "  contacts: {topic: crm.contacts, kind: scd2, target: dim_contact, keys: [contact_id],"
    " track_history_except: [phone]}\n"
    "  orders: {topic: events.orders, kind: facts, target: fact_orders, event_id: event_id}\n"
)


def test_pipelines_are_defined_once_and_every_environment_reads_them() -> None:
    shared = yaml.safe_load((CONFIG / "pipelines.yaml").read_text())["pipelines"]
    for env in ("local", "dev", "prod"):
        own = yaml.safe_load((CONFIG / f"{env}.yaml").read_text())
        assert own["include"] == "pipelines.yaml", env
        # An environment changes a shared pipeline; it does not define it again.
        for name, changes in (own.get("pipelines") or {}).items():
            assert name in shared and not set(changes) & {"topic", "kind", "target"}, env
        settings = load_settings(env, config_dir=CONFIG, environ={})
        assert list(settings.pipelines) == list(shared), env
        for name, pipeline in settings.pipelines.items():
            assert pipeline.topic == shared[name]["topic"]
    local = load_settings("local", config_dir=CONFIG, environ={})
    assert [e.name for e in local.pipeline("orders").expectations] == [
        "contact_known",
        "amount_positive",
        "ordered_before_event",
    ]
    prod = load_settings("prod", config_dir=CONFIG, environ={})
    assert prod.pipeline("orders").expectations == ()


def test_an_environment_changes_included_pipelines_key_by_key(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        "include: [pipelines.yaml]\n"
        "pipelines:\n"
        "  contacts: {track_history_except: [phone, email], max_records_per_trigger: 10}\n"
        "  orders: {enabled: false}\n"
        "  behavior: {topic: events.behavior, kind: facts, target: fact_behavior,"
        " event_id: event_id}\n",
        pipelines__yaml=SHARED,
    )
    settings = load_settings("local", config_dir=folder, environ={})
    contacts = settings.pipeline("contacts")
    assert (contacts.topic, contacts.keys) == ("crm.contacts", ("contact_id",))  # included
    assert contacts.track_history_except == ("phone", "email")  # a list replaces
    assert contacts.max_records_per_trigger == 10
    assert not settings.pipeline("orders").enabled
    assert list(settings.pipelines) == ["contacts", "orders", "behavior"]
    # --set and CDC_* still win over every file.
    settings = load_settings(
        "local",
        ["pipelines.contacts.max_records_per_trigger=3"],
        config_dir=folder,
        environ={"CDC_LAKE_ROOT": "/elsewhere"},
    )
    assert settings.pipeline("contacts").max_records_per_trigger == 3
    assert settings.lake.root == "/elsewhere"


def test_an_unknown_key_names_the_file_that_holds_it(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        "include: pipelines.yaml\npipelines: {orders: {colour: red}}\n",
        pipelines__yaml=SHARED.replace("keys: [contact_id]", "keyz: [contact_id]"),
    )
    with pytest.raises(ConfigError) as info:
        load_settings("local", config_dir=folder, environ={})
    assert str(info.value).startswith(
        f"invalid configuration ({folder / 'pipelines.yaml'}): unknown key"
        " 'pipelines.contacts.keyz'; valid keys: topic, kind, target,"
    )
    assert "(+1 more)" in str(info.value)
    (folder / "pipelines.yaml").write_text(SHARED)
    with pytest.raises(ConfigError) as info:
        load_settings("local", config_dir=folder, environ={})
    assert str(info.value).startswith(
        f"invalid configuration ({folder / 'local.yaml'}): unknown key 'pipelines.orders.colour'"
    )
    # A key only --set gives: the file that holds the most of it (what it overrides).
    (folder / "local.yaml").write_text(
        (folder / "local.yaml").read_text().replace("{orders: {colour: red}}", "{}")
    )
    with pytest.raises(ConfigError) as info:
        load_settings("local", ["pipelines.contacts.colour=red"], config_dir=folder, environ={})
    assert str(info.value).startswith(
        f"invalid configuration ({folder / 'pipelines.yaml'}): unknown key"
        " 'pipelines.contacts.colour'"
    )
    with pytest.raises(ConfigError) as info:
        load_settings("local", ["lake.colour=red"], config_dir=folder, environ={})
    assert str(info.value).startswith(
        f"invalid configuration ({folder / 'local.yaml'}): unknown key 'lake.colour'"
    )


@pytest.mark.parametrize(
    ("env_file", "others", "message"),
    [
        (
            "include: shared.yaml\n",
            {},
            "config file {folder}/shared.yaml not found (included by {folder}/local.yaml)",
        ),
        (
            "include: pipelines.yaml\n",
            {"pipelines__yaml": "pipelines: [unclosed\n"},
            "config file {folder}/pipelines.yaml line 2: invalid YAML",
        ),
        (
            "include: pipelines.yaml\n",
            {"pipelines__yaml": "- a list\n"},
            "config file {folder}/pipelines.yaml: top level must be a mapping",
        ),
        (
            "include: {pipelines: pipelines.yaml}\n",
            {},
            "config file {folder}/local.yaml: include: expected a file name or a list of them",
        ),
        (
            "include: pipelines.yaml\n",
            {"pipelines__yaml": "include: more.yaml\n"},
            "config file {folder}/pipelines.yaml: include is read only in an environment's file"
            " (it is included by {folder}/local.yaml)",
        ),
    ],
)
def test_a_bad_include_is_one_line(
    tmp_path: Path, env_file: str, others: dict[str, str], message: str
) -> None:
    folder = _folder(tmp_path, env_file, **others)
    with pytest.raises(ConfigError) as info:
        load_settings("local", config_dir=folder, environ={})
    assert str(info.value) == message.format(folder=folder)


def test_read_config_is_the_merged_file_without_include() -> None:
    data = read_config(CONFIG / "prod.yaml")
    assert "include" not in data
    assert data["lake"]["writer"] == "delta-spark"
    assert set(data["pipelines"]) == PIPELINES


def test_unknown_pipeline_lists_valid_names() -> None:
    settings = load_settings("local", config_dir=CONFIG, environ={})
    with pytest.raises(UnknownPipelineError) as info:
        settings.pipeline("nope")
    assert str(info.value) == (
        "unknown pipeline 'nope'; valid: behavior, crm_accounts, crm_contacts, crm_opportunities, "
        "fx_rates, orders"
    )


def test_secrets_resolve_and_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    settings = load_settings("dev", config_dir=CONFIG)
    assert settings.kafka.client_config()["sasl.password"] == "hunter2"
    assert "hunter2" not in repr(settings) and "env:KAFKA_SASL_PASSWORD" not in repr(settings)
    secret_file = tmp_path / "token"
    secret_file.write_text("s3cret\n")
    assert resolve_secret(f"file:{secret_file}") == "s3cret"
    with pytest.raises(ConfigError, match="'env:NOPE_NOT_SET': environment variable is not set"):
        resolve_secret("env:NOPE_NOT_SET")


def test_durations() -> None:
    assert parse_duration_seconds("1 second") == 1
    assert parse_duration_seconds("500 ms") == 0.5
    assert parse_duration_seconds("2 minutes") == 120


def test_librdkafka_settings_become_the_java_clients(tmp_path: Path) -> None:
    from cdc.config.kafka_clients import java_client_config

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    java = java_client_config(
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": 'svc"cdc',
            "sasl.password": "p\\w",
            "ssl.ca.location": str(ca),
            "client.id": "cdc",
        }
    )
    assert java == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required"
        ' username="svc\\"cdc" password="p\\\\w";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.certificates": ca.read_text(),
        "client.id": "cdc",
    }
    with pytest.raises(ConfigError, match="no Java login module for SASL mechanism 'GSSAPI'"):
        java_client_config({"sasl.mechanism": "GSSAPI", "sasl.username": "u"})
    with pytest.raises(ConfigError, match=r"ssl\.certificate\.location and ssl\.key\.location go"):
        java_client_config({"ssl.key.location": str(ca)})


def test_source_options_keep_spark_names_and_replay_start_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from cdc.pipeline.checkpoint import START_FILE
    from cdc.pipeline.kafka_source import source_options

    settings = load_settings(
        "local",
        overrides=[
            "kafka.client={security.protocol: SASL_SSL, sasl.mechanism: PLAIN,"
            " sasl.username: u, sasl.password: env:NOPE_UNUSED}",
            "kafka.java_client={client.dns.lookup: use_all_dns_ips}",
            "defaults.source_options={minPartitions: '4'}",
            "pipelines.crm_contacts.source_options={startingTimestamp: '1000'}",
        ],
        config_dir=REPO_ROOT / "config",
        environ={"NOPE_UNUSED": "secret"},
    )
    # Secret references resolve from the real environment when options are built.
    monkeypatch.setenv("NOPE_UNUSED", "secret")
    options = source_options(settings, settings.pipeline("crm_contacts"))
    assert options["subscribe"] == "crm.contacts"
    assert options["maxOffsetsPerTrigger"] == "50000"
    assert options["minPartitions"] == "4"
    assert options["startingTimestamp"] == "1000"
    assert "startingOffsets" not in options  # a starting option replaces the default one
    assert options["kafka.isolation.level"] == "read_committed"
    assert options["kafka.client.dns.lookup"] == "use_all_dns_ips"
    assert options["kafka.sasl.jaas.config"].endswith('username="u" password="secret";')

    checkpoint = tmp_path / "cp"
    checkpoint.mkdir()
    (checkpoint / START_FILE).write_text(
        json.dumps({"startingOffsets": {"crm.contacts": {"0": 7}}})
    )
    with_start = source_options(settings, settings.pipeline("crm_contacts"), str(checkpoint))
    assert json.loads(with_start["startingOffsets"]) == {"crm.contacts": {"0": 7}}
    assert "startingTimestamp" not in with_start
    (checkpoint / "offsets").mkdir()
    (checkpoint / "offsets" / "0").write_text("v1\n{}\n{}\n")
    # Once Spark has planned a batch, the checkpoint's offsets rule; the start file is moot.
    assert "startingOffsets" not in source_options(
        settings, settings.pipeline("crm_contacts"), str(checkpoint)
    )


def test_set_reaches_dotted_keys_of_client_spark_and_storage_maps() -> None:
    settings = load_settings(
        "local",
        [
            "kafka.client.sasl.password=x",
            "kafka.client.acks=1",
            "spark.conf.spark.sql.shuffle.partitions=4",
            "pipelines.orders.source_options.kafka.fetch.max.bytes=1048576",
            "lake.storage_options.AWS_REGION=eu-west-1",
        ],
        config_dir=CONFIG,
        environ={},
    )
    assert settings.kafka.client["sasl.password"] == "x"
    assert settings.kafka.client["acks"] == "1"  # as written: librdkafka values are strings
    assert settings.spark.conf["spark.sql.shuffle.partitions"] == "4"
    assert settings.pipeline("orders").source_options["kafka.fetch.max.bytes"] == "1048576"
    assert settings.lake.storage_options == {"AWS_REGION": "eu-west-1"}


def test_after_batch_invariant_checks_default_on_and_can_be_turned_off_per_pipeline() -> None:
    settings = load_settings("local", config_dir=REPO_ROOT / "config")
    assert settings.check_invariants("crm_contacts") is True
    off = load_settings(
        "local",
        overrides=[
            "defaults.check_invariants=false",
            "pipelines.crm_accounts.check_invariants=true",
        ],
        config_dir=REPO_ROOT / "config",
    )
    assert (off.check_invariants("crm_contacts"), off.check_invariants("crm_accounts")) == (
        False,
        True,
    )


def test_composite_sequence_by_is_parsed_and_checked() -> None:
    settings = load_settings(
        "local",
        overrides=[
            "pipelines.crm_contacts.sequence_by=[source.file, {path: source.pos, kind: number}]"
        ],
        config_dir=REPO_ROOT / "config",
    )
    fields = settings.pipeline("crm_contacts").sequence_by
    assert isinstance(fields, list)
    assert [getattr(f, "path", f) for f in fields] == ["source.file", "source.pos"]
    with pytest.raises(ConfigError, match="sequence_by"):
        load_settings(
            "local",
            overrides=["pipelines.crm_contacts.sequence_by=[{path: source.pos, kind: text}]"],
            config_dir=REPO_ROOT / "config",
        )


def test_secret_settings_are_found_from_the_model() -> None:
    """The settings typed :class:`Secret` (the sweep in tests/integration/test_secret_sweep.py
    asks for a case for each)."""
    assert {path: marker.carries for path, marker in secret_fields().items()} == {
        "kafka.client": "entries",
        "kafka.java_client": "entries",
        "registry.url": "credentials",
        "registry.client": "entries",
        "lake.storage_options": "entries",
        "notify.slack_webhook_url": "value",
        "dr.storage_options": "entries",
        "dr.manifest_key": "value",
        "warehouse.dsn": "credentials",
        "warehouse.password": "value",
        "lineage.http.url": "credentials",
        "lineage.http.api_key": "value",
        "lineage.kafka.client": "entries",
    }
    settings = load_settings(
        "local",
        ["warehouse.password=env:WH", "registry.client.basic.auth.user.info=env:AUTH"],
        config_dir=CONFIG,
        environ={},
    )
    assert list(secret_settings(settings)) == [
        ("registry.client", Secret("entries"), {"basic.auth.user.info": "env:AUTH"}),
        ("warehouse.password", Secret("value"), "env:WH"),
    ]


def test_a_new_secret_setting_is_found_and_hidden_without_more_code() -> None:
    from typing import Annotated

    from pydantic import BaseModel

    from cdc.config.settings import _Model

    class Vault(_Model):
        token: Annotated[str | None, Secret("value")] = None
        address: str = "https://vault:8200"

    class Outer(BaseModel):
        vaults: dict[str, Vault] = {}
        main: Vault | None = None

    assert secret_fields(Outer) == {
        "vaults.*.token": Secret("value"),
        "main.token": Secret("value"),
    }
    outer = Outer(vaults={"a": Vault(token="t-1234")}, main=Vault())
    assert list(secret_settings(outer)) == [("vaults.a.token", Secret("value"), "t-1234")]
    assert repr(Vault(token="t-1234")) == "Vault(token='***', address='https://vault:8200')"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('{"password": "S3NT1NEL', "the secret is not JSON (a #key needs an object)"),
        ('["S3NT1NEL"]', "key not found in secret"),
        ('"S3NT1NEL"', "key not found in secret"),
    ],
)
def test_an_aws_secret_that_is_not_a_json_object_is_one_line(
    monkeypatch: pytest.MonkeyPatch, raw: str, reason: str
) -> None:
    import sys
    import types

    class Client:
        def get_secret_value(self, SecretId: str) -> dict[str, str]:
            return {"SecretString": raw}

    fake = types.SimpleNamespace(client=lambda service: Client())
    monkeypatch.setitem(sys.modules, "boto3", fake)
    with pytest.raises(ConfigError) as refused:
        resolve_secret("aws-sm:cdc/wh#password")
    assert str(refused.value) == f"secret reference 'aws-sm:cdc/wh#password': {reason}"
    assert refused.value.__cause__ is None  # json's text would quote the secret


@pytest.mark.parametrize(
    ("setting", "name"),
    [
        ({"sasl.mechanism": "S3NT1NEL PLAIN"}, "kafka.client.sasl.mechanisms"),
        ({"security.protocol": "S3NT1NEL"}, "kafka.client.security.protocol"),
        ({"S3NT1NEL.unknown": "x"}, "kafka.client.S3NT1NEL.unknown"),
    ],
)
def test_a_setting_librdkafka_refuses_is_named_not_quoted(
    setting: dict[str, str], name: str
) -> None:
    """librdkafka quotes the refused value (a password, a reference's value): only the
    setting's name is repeated (a name is not a secret)."""
    from cdc.runtime.kafka_admin import KafkaMetadata, admin_client

    for make in (
        lambda: admin_client("127.0.0.1:9", setting),
        lambda: KafkaMetadata({"bootstrap.servers": "127.0.0.1:9", **setting})._get(),
    ):
        with pytest.raises(ConfigError) as refused:
            make()
        assert str(refused.value) == (
            f"{name}: librdkafka refuses this setting (its name or its value, not shown here)"
        )
        if "S3NT1NEL" in next(iter(setting.values())):
            assert "S3NT1NEL" not in str(refused.value)
