"""The lake itself on S3 (moto's server on loopback), written by each writer: delta-rs through
its storage options, delta-spark through S3A. Delta commits there without a rename (S3 has
none): the tables must equal a local run's.

Why moto and not s3proxy (Maven Central, tried: 2.6.0 with its filesystem backend): a Delta
commit on S3 is a put-if-absent of the next log entry (``If-None-Match: *``). s3proxy answers
that header with NotImplemented, so it cannot show that a commit race is refused; moto answers
PreconditionFailed, as S3 does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.pipeline.queries import run_pipelines
from cdc.store import store_for
from tests.support.envelopes import change
from tests.support.kafka import produce
from tests.support.local_settings import make_settings, overrides
from tests.support.moto_server import moto_server
from tests.support.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PIPELINE = "crm_contacts"
AUDIT = ["_ingested_at", "_batch_id", "_topic_id"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local S3 endpoint with a bucket ``lake``; yields the lake's storage options."""
    import boto3

    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        options = {
            "AWS_ENDPOINT_URL": url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket="lake")
        yield options


def _frames(writer: str, root: str, options: dict[str, str]) -> dict[str, pl.DataFrame]:
    store = store_for(writer, options)
    out = {}
    for role, name in (("bronze", "bronze/crm_contacts"), ("silver", "silver/dim_contact")):
        table = store.read(f"{root}/{name}")
        assert table is not None, f"{root}/{name}"
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        frame = frame.drop([c for c in AUDIT if c in frame.columns])
        keys = ["partition", "offset"] if role == "bronze" else ["contact_id", "valid_from"]
        out[role] = frame.sort(keys)
    return out


@pytest.mark.parametrize("writer", ["delta-rs", "delta-spark"])
def test_the_lake_on_s3_equals_a_local_run(
    spark: Any, fresh_kafka: str, tmp_path: Path, s3: dict[str, str], writer: str
) -> None:
    lines = [
        change(f"c{i % 5}", "c" if i < 5 else "u", 1000 * (i + 1), email=f"v{i}@x.io")
        for i in range(12)
    ]
    produce(fresh_kafka, "crm.contacts", lines, tmp_path)
    root = f"s3://lake/{writer}"
    settings = [*overrides(fresh_kafka, tmp_path), f"lake.root={root}", f"lake.writer={writer}"]
    settings += [f"lake.storage_options.{k}={v}" for k, v in s3.items()]
    command = [sys.executable, "-m", "cdc.cli", "run", "--pipeline", PIPELINE, "--available-now"]
    for item in settings:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    local = make_settings(fresh_kafka, tmp_path / "local", f"lake.writer={writer}")
    run_pipelines(spark, local, [PIPELINE], available_now=True)
    got = _frames(writer, root, s3)
    want = _frames(writer, local.lake.root, {})
    assert got["bronze"].height == 12
    assert got["bronze"].equals(want["bronze"])
    assert got["silver"].equals(want["silver"])
