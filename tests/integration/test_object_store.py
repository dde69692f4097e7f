"""Against a local AWS-compatible endpoint (moto's server): secret references in AWS Secrets
Manager, and the DR location on S3 (snapshot, verify, restore)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from cdc.cli import main
from cdc.config.settings import load_settings
from cdc.errors import ConfigError
from tests.support.dr import manifest_key
from tests.support.moto_server import moto_server
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration

AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def aws(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in {**AWS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    return endpoint


def test_aws_secrets_manager_references_resolve_and_failures_name_the_reference(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("KAFKA_SASL_USERNAME", "cdc-dev")  # dev.yaml's other reference

    sm = boto3.client("secretsmanager")
    sm.create_secret(Name="cdc/kafka", SecretString=json.dumps({"password": "pw-7d1e9c"}))

    def settings(reference: str):  # type: ignore[no-untyped-def]
        return load_settings(
            "dev",
            [f"kafka.client.sasl.password={reference}"],
            config_dir=REPO_ROOT / "config",
            environ={},
        )

    assert settings("aws-sm:cdc/kafka#password").kafka.client_config()["sasl.password"] == (
        "pw-7d1e9c"
    )
    assert "pw-7d1e9c" not in repr(settings("aws-sm:cdc/kafka#password"))
    for reference, reason in (
        ("aws-sm:cdc/kafka#nope", "key not found in secret"),
        ("aws-sm:cdc/missing#password", "AWS Secrets Manager lookup failed"),
    ):
        with pytest.raises(ConfigError) as info:
            settings(reference).kafka.client_config()
        assert str(info.value) == f"secret reference {reference!r}: {reason}"


def test_dr_snapshot_verify_and_restore_through_s3(
    aws: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    boto3.client("s3").create_bucket(
        Bucket="cdc-dr", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    lake = tmp_path / "lake"
    for name in ("bronze/crm_contacts", "silver/dim_contact"):
        for i in range(3):
            rows = pa.table({"contact_id": [f"c{i}{j}" for j in range(4)], "n": [i] * 4})
            write_deltalake(str(lake / name), rows, mode="append")
    dr_options = [
        "--set",
        "dr.location=s3://cdc-dr/prod",
        "--set",
        f"dr.storage_options.AWS_ENDPOINT_URL={aws}",
        "--set",
        "dr.storage_options.AWS_REGION=eu-west-1",
        "--set",
        "dr.storage_options.AWS_ACCESS_KEY_ID=testing",
        "--set",
        "dr.storage_options.AWS_SECRET_ACCESS_KEY=testing",
        "--set",
        "dr.storage_options.AWS_ALLOW_HTTP=true",
        "--set",
        manifest_key(monkeypatch),
    ]
    base = ["--set", f"lake.root={lake}", "--set", f"checkpoints.root={tmp_path / 'cp'}"]
    assert main(["dr", "snapshot", *base, *dr_options]) == 0
    out = capsys.readouterr().out
    assert "bronze/crm_contacts: version 2, 12 rows, " in out
    keys = [
        o["Key"]
        for o in boto3.client("s3").list_objects_v2(Bucket="cdc-dr", Prefix="prod/")["Contents"]
    ]
    assert "prod/latest.json" in keys
    assert any(k.startswith("prod/tables/silver/dim_contact/_delta_log/") for k in keys)
    assert main(["dr", "verify", *base, *dr_options]) == 0
    assert capsys.readouterr().out.strip().endswith(": sound")

    restored = tmp_path / "restored"
    assert main(["dr", "restore", "--to", str(restored), "--tables-only", *base, *dr_options]) == 0
    capsys.readouterr()
    for name in ("bronze/crm_contacts", "silver/dim_contact"):
        got = DeltaTable(str(restored / name)).to_pyarrow_table().sort_by("contact_id")
        want = DeltaTable(str(lake / name)).to_pyarrow_table().sort_by("contact_id")
        assert got.equals(want), name

    # One table at a version an earlier snapshot recorded (a later one holds version 3).
    write_deltalake(
        str(lake / "bronze/crm_contacts"), pa.table({"contact_id": ["x"], "n": [9]}), mode="append"
    )
    assert main(["dr", "snapshot", *base, *dr_options]) == 0
    assert "bronze/crm_contacts: version 3, 13 rows, " in capsys.readouterr().out
    older = tmp_path / "older"
    one = ["dr", "restore", "--to", str(older), "--tables-only", "--table", "bronze/crm_contacts"]
    assert main([*one, "--version", "2", *base, *dr_options]) == 0
    capsys.readouterr()
    assert DeltaTable(str(older / "bronze/crm_contacts")).to_pyarrow_table().num_rows == 12
    assert not (older / "silver").exists()
    assert main([*one, "--version", "5", "--to", str(tmp_path / "x"), *base, *dr_options]) == 2
    assert capsys.readouterr().err.strip() == (
        "cdc: error: no snapshot holds bronze/crm_contacts at version 5; versions held: 2, 3"
    )
