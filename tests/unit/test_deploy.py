"""Deploy configuration agrees with the code: versions, master, baked JARs, entry points."""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pyspark
import pytest
import yaml

from cdc.config import load_settings
from cdc.errors import ConfigError
from tests.conftest import REPO_ROOT

POM = REPO_ROOT / "jvm" / "pom.xml"
_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _pom_property(name: str) -> str:
    node = ET.parse(POM).getroot().find(f"m:properties/m:{name}", _NS)
    assert node is not None and node.text, name
    return node.text.strip()


def _pinned(package: str) -> str:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    for spec in dependencies:
        match = re.match(rf"{re.escape(package)}==([\w.]+)", spec)
        if match:
            return match.group(1)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


def _spark_applications() -> list[dict[str, object]]:
    found = []
    for path in sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "SparkApplication":
                found.append(doc)
    assert found, "no SparkApplication in deploy/k8s"
    return found


def test_spark_and_delta_versions_agree_everywhere() -> None:
    import pyspark

    spark = _pom_property("spark.version")
    assert _pinned("pyspark") == spark == pyspark.__version__
    assert _pinned("delta-spark") == _pom_property("delta.version")
    for app in _spark_applications():
        assert app["spec"]["sparkVersion"] == spark  # type: ignore[index]


def test_cluster_configs_leave_the_master_to_spark_submit() -> None:
    for env in ("dev", "prod"):
        settings = load_settings(env, config_dir=REPO_ROOT / "config", environ={})
        assert settings.spark.master is None, env
        assert "spark.master" not in settings.spark.conf, env
    local = load_settings("local", config_dir=REPO_ROOT / "config", environ={})
    assert local.spark.master == "local[*]"


def test_spark_applications_run_shipped_code_with_the_baked_jars() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    jars = re.search(r"CDC_JARS_DIR=(\S+)", dockerfile)
    assert jars is not None
    for app in _spark_applications():
        spec = app["spec"]
        main = str(spec["mainApplicationFile"])  # type: ignore[index]
        assert main.startswith("local:///opt/cdc/")
        assert (REPO_ROOT / main.removeprefix("local:///opt/cdc/")).is_file()
        conf = spec["sparkConf"]  # type: ignore[index]
        for side in ("driver", "executor"):
            assert conf[f"spark.{side}.extraClassPath"] == (
                f"{jars.group(1)}/spark/*:{jars.group(1)}/s3/*"
            )
        assert "spark.master" not in conf


def test_a_driver_without_master_outside_spark_submit_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cdc.spark import build_session

    for name in ("PYSPARK_GATEWAY_PORT", "MASTER"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"spark\.master is not set and the driver does not"):
        build_session(master=None)


def test_pom_is_the_one_place_jars_are_declared() -> None:
    text = Path(POM).read_text()
    for artifact in ("delta-spark_", "spark-sql-kafka-0-10_", "kafka_"):
        assert text.count(f"<artifactId>{artifact}") == 1, artifact
    # Nothing resolves packages when a session starts (spark.jars.packages would, at query
    # start, from the network).
    for path in (REPO_ROOT / "src").rglob("*.py"):
        assert "spark.jars.packages" not in path.read_text(), path


def test_prod_writes_with_delta_spark_and_the_image_can_reach_s3() -> None:
    prod = load_settings("prod", config_dir=REPO_ROOT / "config", environ={})
    assert prod.lake.writer == "delta-spark"
    assert prod.lake.root.startswith("s3://")
    # The image bakes the S3A JARs; their Hadoop is the pyspark wheel's.
    assert re.search(r"cdc\.jvm install .*--profile s3", (REPO_ROOT / "Dockerfile").read_text())
    wheel = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert len(wheel) == 1
    hadoop = wheel[0].name.removeprefix("hadoop-client-api-").removesuffix(".jar")
    assert f"<hadoop.version>{hadoop}</hadoop.version>" in Path(POM).read_text()


def test_s3_lake_paths_and_options_reach_spark_as_s3a() -> None:
    from cdc.store.delta_spark import hadoop_options, spark_path

    assert spark_path("s3://lake/cdc/silver/dim") == "s3a://lake/cdc/silver/dim"
    assert spark_path("/var/lake/silver/dim") == "/var/lake/silver/dim"
    assert hadoop_options({"AWS_REGION": "eu-west-1"}) == {"fs.s3a.endpoint.region": "eu-west-1"}
    local = hadoop_options(
        {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "fs.s3a.connection.maximum": "64",
        }
    )
    assert local == {
        "fs.s3a.endpoint": "http://127.0.0.1:9000",
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": "false",
        "fs.s3a.access.key": "k",
        "fs.s3a.secret.key": "s",
        "fs.s3a.connection.maximum": "64",
    }


def test_prometheus_scrapes_the_port_prod_serves_metrics_on() -> None:
    import yaml

    from cdc.config import load_settings

    prod = load_settings("prod", config_dir=REPO_ROOT / "config", environ={})
    assert prod.metrics.enabled and prod.metrics.host == "0.0.0.0"
    app = yaml.safe_load((REPO_ROOT / "deploy/k8s/sparkapplication-crm-contacts.yaml").read_text())
    driver = app["spec"]["driver"]
    assert {"name": "metrics", "protocol": "TCP", "containerPort": prod.metrics.port} in driver[
        "ports"
    ]
    service, monitor = yaml.safe_load_all(
        (REPO_ROOT / "deploy/k8s/monitoring/servicemonitor.yaml").read_text()
    )
    assert service["spec"]["ports"][0]["targetPort"] == prod.metrics.port
    assert set(service["spec"]["selector"].items()) - {("spark-role", "driver")} <= set(
        driver["labels"].items()
    )
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _cron_field_ok(field: str, low: int, high: int) -> bool:
    for part in field.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        first, _, last = base.partition("-")
        bounds = [first, last] if last else [first]
        if not all(b.isdigit() and low <= int(b) <= high for b in bounds):
            return False
    return True


def _batch_jobs() -> dict[str, tuple[str, list[str]]]:
    """Each scheduled job: its schedule and the ``cdc`` arguments it runs."""
    prefixes = {
        "maintain.py": ["maintain"],
        "sla_check.py": ["sla", "check"],
        "dr_snapshot.py": ["dr", "snapshot"],
        "publish.py": ["publish"],
        "gold_build.py": ["gold", "build"],
    }
    jobs = {}
    for path in sorted((REPO_ROOT / "deploy" / "k8s" / "batch").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc["spec"]
            if doc["kind"] == "ScheduledSparkApplication":
                main = spec["template"]["mainApplicationFile"].removeprefix("local:///opt/cdc/")
                args = spec["template"]["arguments"]
                assert (
                    spec["template"]["sparkVersion"]
                    == _spark_applications()[0]["spec"]["sparkVersion"]
                )
            else:
                assert doc["kind"] == "CronJob"
                (container,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
                main = container["command"][1].removeprefix("/opt/cdc/")
                args = container["args"]
            assert (REPO_ROOT / main).is_file(), main
            jobs[doc["metadata"]["name"]] = (spec["schedule"], prefixes[Path(main).name] + args)
    return jobs


def test_batch_jobs_have_valid_schedules_and_run_real_commands() -> None:
    from cdc.cli import _build_parser

    jobs = _batch_jobs()
    assert {name: schedule for name, (schedule, _) in jobs.items()} == {
        "cdc-maintain-optimize": "0 3 * * *",  # daily
        "cdc-maintain-vacuum": "0 4 * * 0",  # weekly
        "cdc-sla-check": "*/5 * * * *",
        "cdc-maintain-health": "30 5 * * *",
        "cdc-dr-snapshot": "0 2 * * *",  # daily
        "cdc-publish": "45 * * * *",  # hourly
        "cdc-gold-build": "30 * * * *",  # hourly, before the publish
    }
    for name, (schedule, argv) in jobs.items():
        fields = schedule.split()
        assert len(fields) == 5, name
        assert all(_cron_field_ok(f, *r) for f, r in zip(fields, _CRON_RANGES, strict=True))
        parsed = _build_parser().parse_args(argv)  # argparse exits on anything it refuses
        assert parsed.env == "prod", name
    assert (REPO_ROOT / "Dockerfile").read_text().count("COPY batch ./batch") == 1
