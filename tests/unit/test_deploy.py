"""The deployment agrees with the image and the code, and the tools users run accept it.

The Helm chart (deploy/helm/cdc-service) is rendered per environment by the pinned helm and
every resource is validated by the pinned kubeconform (``-strict``) against Kubernetes'
schemas and the Spark Operator's and Prometheus Operator's CRDs (tests/support). The
agreement tests then read the rendered manifests, never the templates: versions, image facts
(paths, JARs, config folder, user), ports, pipelines, commands, secrets and mounts must match
the Dockerfile, jvm/pom.xml, pyproject.toml and the settings of config/<env>.yaml.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyspark
import pytest
import yaml

from cdc.config.settings import ENVS, load_settings, merge_mappings, read_config
from cdc.errors import ConfigError
from tests.support.deploy_tools import (
    CHART,
    KUBERNETES_VERSIONS,
    helm,
    kubeconform,
    render,
    tool,
)
from tests.support.paths import REPO_ROOT
from tests.support.shared_specs import specs_dir

POM = REPO_ROOT / "jvm" / "pom.xml"
_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
DEPLOYED_ENVS = tuple(env for env in ENVS if env != "local")
"""Environments with a cluster (values-<env>.yaml); ``local`` is the embedded default."""
SPARK_KINDS = ("SparkApplication", "ScheduledSparkApplication")

# What each command resolves, by config section: the secrets its pod must be given.
_SECTIONS_READ = {
    "run": ("kafka", "registry", "lake", "lineage"),
    "sla check": ("kafka", "notify", "lake", "lineage"),
    "maintain": ("lake", "lineage"),
    "dr snapshot": ("lake", "dr", "lineage"),
    "gold build": ("lake", "lineage"),
    "publish": ("lake", "warehouse", "lineage"),
    # The ops pod (a shell for the runbook's one-off commands) reads whatever they read.
    "ops": ("kafka", "registry", "lake", "notify", "dr", "warehouse", "lineage"),
}
_SCRIPT_COMMANDS = {
    "streaming/cdc_stream.py": ["run"],
    "batch/maintain.py": ["maintain"],
    "batch/sla_check.py": ["sla", "check"],
    "batch/dr_snapshot.py": ["dr", "snapshot"],
    "batch/publish.py": ["publish"],
    "batch/gold_build.py": ["gold", "build"],
}


# ----------------------------------------------------------------------------- sources


def _pom_property(name: str) -> str:
    node = ET.parse(POM).getroot().find(f"m:properties/m:{name}", _NS)
    assert node is not None and node.text, name
    return node.text.strip()


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _pinned(package: str) -> str:
    for spec in _pyproject()["project"]["dependencies"]:
        match = re.match(rf"{re.escape(package)}==([\w.]+)", spec)
        if match:
            return match.group(1)
    raise AssertionError(f"{package} is not pinned with == in pyproject.toml")


@dataclass(frozen=True)
class Dockerfile:
    """What the runtime image is, as the Dockerfile builds it."""

    env: dict[str, str]
    workdir: str
    user: str
    uid: str
    copied: set[str]
    """Paths of the repository the final stage copies into the working directory."""
    jar_profiles: set[str]
    jars_dest: str


def _dockerfile() -> Dockerfile:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]  # the runtime stage
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", final, re.M):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(line)))
    install = re.search(r"python -m cdc\.runtime\.jvm install (.+)", text)
    assert install is not None
    words = shlex.split(install.group(1))
    profiles = {words[i + 1] for i, word in enumerate(words) if word == "--profile"}
    uid = re.search(r"useradd --uid (\d+)", final)
    assert uid is not None
    return Dockerfile(
        env=env,
        workdir=re.findall(r"^WORKDIR (\S+)$", final, re.M)[-1],
        user=re.findall(r"^USER (\S+)$", final, re.M)[-1],
        uid=uid.group(1),
        copied={m.rstrip("/") for m in re.findall(r"^COPY (\S+) \./", final, re.M)},
        jar_profiles=profiles,
        jars_dest=words[words.index("--dest") + 1],
    )


def _values(env: str | None = None) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    if env:
        over = yaml.safe_load((CHART / f"values-{env}.yaml").read_text())
        values = merge_mappings(values, over)  # Helm merges values files the same way
    return values


# ----------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """A pod the chart runs: which file, which ``cdc`` command, with what around it."""

    kind: str
    name: str
    script: str
    """The entry point, relative to the image's working directory."""
    argv: list[str]
    """The ``cdc`` arguments the entry point runs."""
    pod: dict[str, Any]
    """The driver spec (Spark) or the container (CronJob)."""
    labels: dict[str, str]
    volumes: list[dict[str, Any]]
    spark: dict[str, Any] | None = None

    @property
    def env_names(self) -> set[str]:
        return {entry["name"] for entry in self.pod.get("env", [])}

    @property
    def mounts(self) -> dict[str, str]:
        return {m["name"]: m["mountPath"] for m in self.pod.get("volumeMounts", [])}


def _workloads(docs: list[dict[str, Any]]) -> Iterator[Workload]:
    home = _dockerfile().workdir + "/"
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] in SPARK_KINDS:
            spec = doc["spec"] if doc["kind"] == "SparkApplication" else doc["spec"]["template"]
            script = spec["mainApplicationFile"].removeprefix(f"local://{home}")
            # The Spark Operator labels a driver pod with its application's labels (a
            # scheduled one's go to each application it creates), the driver's own, and
            # spark-role=driver.
            labels = {**doc["metadata"]["labels"], **spec["driver"].get("labels", {})}
            yield Workload(
                doc["kind"],
                name,
                script,
                _SCRIPT_COMMANDS[script] + spec["arguments"],
                spec["driver"],
                {**labels, "spark-role": "driver"},
                spec.get("volumes", []),
                spark=spec,
            )
        elif doc["kind"] == "CronJob":
            pod = doc["spec"]["jobTemplate"]["spec"]["template"]
            (container,) = pod["spec"]["containers"]
            if doc["spec"].get("suspend"):  # the ops pod: it waits for `kubectl exec`
                assert container["command"][0] == "sleep", name
                script, argv = "", []
            else:
                assert container["command"][0] == "python", name
                script = container["command"][1].removeprefix(home)
                argv = _SCRIPT_COMMANDS[script] + container["args"]
            volumes = pod["spec"].get("volumes", [])
            yield Workload(
                doc["kind"], name, script, argv, container, pod["metadata"]["labels"], volumes
            )


def _command(argv: list[str]) -> str:
    """``sla check`` of ``["sla", "check", "--env", "prod"]``; ``ops`` of the ops pod's."""
    if not argv:
        return "ops"
    return next(c for c in _SECTIONS_READ if argv[: len(c.split())] == c.split())


def _settings_overrides(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]


@pytest.fixture(params=DEPLOYED_ENVS)
def env(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ----------------------------------------------------------------------------- the tools


def test_every_environment_renders_and_lints_clean(env: str) -> None:
    docs = render(env)
    assert {doc["kind"] for doc in docs} == {
        "SparkApplication",
        "ScheduledSparkApplication",
        "CronJob",
        "ConfigMap",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    }
    assert all(doc["metadata"]["namespace"] == "data" for doc in docs)
    linted = helm("lint", "--strict", str(CHART), "-f", str(CHART / f"values-{env}.yaml"))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "0 chart(s) failed" in linted.stdout


def test_every_rendered_resource_is_valid_for_kubernetes_and_the_operators(
    env: str, tmp_path: Path
) -> None:
    docs = render(env)
    checked = kubeconform(docs, tmp_path)
    assert checked.failures == {}, checked.output
    assert len(checked.results) == len(docs)


def test_a_misspelled_field_or_a_wrong_type_fails_validation(tmp_path: Path) -> None:
    docs = render("prod")
    app = copy.deepcopy(next(d for d in docs if d["kind"] == "SparkApplication"))
    app["metadata"]["name"] = "misspelled"
    app["spec"]["driver"]["memroy"] = app["spec"]["driver"].pop("memory")
    app["spec"]["executor"]["cores"] = "one"
    job = copy.deepcopy(next(d for d in docs if d["kind"] == "CronJob"))
    job["metadata"]["name"] = "wrong-type"
    job["spec"]["jobTemplate"]["spec"]["backoffLimit"] = "none"
    job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    rule = copy.deepcopy(next(d for d in docs if d["kind"] == "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = 60
    unknown = {
        "apiVersion": "sparkoperator.k8s.io/v1",
        "kind": "SparkApplication",
        "metadata": {"name": "no-such-version"},
        "spec": {},
    }

    failures = kubeconform([app, job, rule, unknown], tmp_path).failures

    status, message = failures["SparkApplication", "misspelled"]
    assert status == "statusInvalid"
    assert "/spec/driver: additional properties 'memroy' not allowed" in message
    assert "/spec/executor/cores: got string, want integer" in message
    status, message = failures["CronJob", "wrong-type"]
    assert status == "statusInvalid"
    assert "additional properties 'comand' not allowed" in message
    assert "/spec/jobTemplate/spec/backoffLimit': got string, want" in message
    status, message = failures["PrometheusRule", "cdc-sla"]
    assert status == "statusInvalid"
    assert "/spec/groups/0/rules/0/for': got number, want string" in message
    # A kind without a schema is an error, not a skip.
    assert failures["SparkApplication", "no-such-version"] == (
        "statusError",
        f"k8s {KUBERNETES_VERSIONS[0]}: could not find schema for SparkApplication",
    )


def test_a_misspelled_or_mistyped_value_stops_the_render() -> None:
    values = str(CHART / "values-prod.yaml")
    for setting, expected in (
        ("streaming.executor.memroy=4g", "additional properties 'memroy' not allowed"),
        ("streaming.executor.cores=one", "/streaming/executor/cores': got string, want integer"),
        ("streaming.driver.memory=4gb", "/streaming/driver/memory': '4gb' does not match"),
        ("jobs.publish.shedule=0 * * * *", "additional properties 'shedule' not allowed"),
        ("streaming.pipelines.Orders.driver.cores=1", "'Orders' does not match"),
    ):
        done = helm("template", "cdc", str(CHART), "-f", values, "--set", setting)
        assert done.returncode != 0, setting
        assert expected in done.stderr.replace("\n", " ").replace("at '", "'"), done.stderr
    unset = helm("template", "cdc", str(CHART))
    assert unset.returncode != 0
    assert "env is not set: install with -f values-dev.yaml or -f values-prod.yaml" in unset.stderr


def test_a_missing_tool_or_spec_folder_fails_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CDC_TOOLS_DIR", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"helm v4\.\d+\.\d+ is missing .*make tools"):
        tool("helm")
    monkeypatch.setenv("CDC_SPECS_DIR", str(tmp_path))
    with pytest.raises(pytest.fail.Exception) as failed:
        specs_dir("k8s-crds")
    assert str(failed.value) == (
        f"specification folder {tmp_path}/k8s-crds is missing"
        " (or set CDC_SPECS_DIR to the folder holding k8s-crds/)"
    )


# ----------------------------------------------------------------------------- agreement


def test_versions_agree_between_the_chart_the_package_and_the_pom(env: str) -> None:
    spark = _pom_property("spark.version")
    assert _pinned("pyspark") == spark == pyspark.__version__
    assert _pinned("delta-spark") == _pom_property("delta.version")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == _pyproject()["project"]["version"]
    kube_floor = re.match(r">=(\d+\.\d+\.\d+)", chart["kubeVersion"])
    assert kube_floor is not None and kube_floor.group(1) == KUBERNETES_VERSIONS[0]
    docs = render(env)
    spark_apps = [w.spark for w in _workloads(docs) if w.spark is not None]
    assert len(spark_apps) >= 2
    for spec in spark_apps:
        assert spec["sparkVersion"] == spark
        assert spec["image"] == f"ghcr.io/acme/cdc-service:{chart['appVersion']}"
    for workload in _workloads(docs):
        if workload.kind == "CronJob":
            assert workload.pod["image"] == f"ghcr.io/acme/cdc-service:{chart['appVersion']}"


def test_image_facts_in_the_chart_are_the_dockerfile_s() -> None:
    image = _values()["image"]
    docker = _dockerfile()
    assert image["home"] == docker.workdir
    assert image["jarsDir"] == docker.env["CDC_JARS_DIR"] == docker.jars_dest
    assert f"COPY --from=jars {docker.jars_dest} {docker.env['CDC_JARS_DIR']}" in (
        (REPO_ROOT / "Dockerfile").read_text()
    )
    assert image["configDir"] == docker.env["CDC_CONFIG_DIR"] == f"{docker.workdir}/config"
    assert str(image["uid"]) == docker.user == docker.uid
    assert {"config", "schemas", "streaming", "batch", "src"} <= docker.copied
    # The whole config folder: every file an environment's file includes is in the image.
    for env in ENVS:
        read_config(REPO_ROOT / "config" / f"{env}.yaml")  # refuses a missing include


def test_workloads_run_shipped_code_with_the_baked_jars(env: str) -> None:
    docker = _dockerfile()
    jars = docker.env["CDC_JARS_DIR"]
    for workload in _workloads(render(env)):
        if not workload.script:
            continue  # the ops pod runs what the runbook types
        assert (REPO_ROOT / workload.script).is_file(), workload.name
        assert workload.script.split("/")[0] in docker.copied, workload.name
        if workload.spark is None:
            continue
        conf = workload.spark["sparkConf"]
        assert "spark.master" not in conf
        agent = _values(env)["openlineage"]["agentJar"]
        for side, extra in (("driver", [agent]), ("executor", [])):
            classpath = conf[f"spark.{side}.extraClassPath"].split(":")
            # Each entry is a profile folder the image bakes (jvm/pom.xml profiles); the
            # OpenLineage agent runs on the driver only.
            assert classpath == [f"{jars}/spark/*", f"{jars}/s3/*", *extra], workload.name
            assert {entry.split("/")[-2] for entry in classpath} <= docker.jar_profiles
        # The service attaches the agent itself, with the config's lineage transport: no
        # listener nor transport (nor its credentials) in the Spark properties.
        assert not any(
            key.startswith(("spark.extraListeners", "spark.openlineage")) for key in conf
        )
        assert workload.pod["podSecurityContext"]["runAsUser"] == int(docker.uid)


def test_the_openlineage_agent_jar_is_the_pom_s_baked_into_the_image(tmp_path: Path) -> None:
    """The chart's agentJar is the file Maven copies for the POM's ``lineage`` profile into
    the image's JAR folder; without it the drivers get no agent and still render."""
    root = ET.parse(POM).getroot()
    profile = next(
        p
        for p in root.iterfind("m:profiles/m:profile", _NS)
        if p.findtext("m:id", "", _NS) == "lineage"
    )
    (dependency,) = profile.iterfind("m:dependencies/m:dependency", _NS)
    artifact = dependency.findtext("m:artifactId", "", _NS).replace(
        "${scala.binary}", _pom_property("scala.binary")
    )
    assert dependency.findtext("m:groupId", "", _NS) == "io.openlineage"
    jar = f"{artifact}-{dependency.findtext('m:version', '', _NS)}.jar"
    docker = _dockerfile()
    assert "lineage" in docker.jar_profiles
    assert _values()["openlineage"]["agentJar"] == f"{docker.env['CDC_JARS_DIR']}/lineage/{jar}"
    docs = render("prod", "--set", "openlineage.agentJar=")
    for workload in _workloads(docs):
        if workload.spark is not None:
            driver = workload.spark["sparkConf"]["spark.driver.extraClassPath"]
            assert "lineage" not in driver
    assert kubeconform(docs, tmp_path).failures == {}


def test_cluster_configs_leave_the_master_to_spark_submit() -> None:
    for env in DEPLOYED_ENVS:
        settings = load_settings(env, config_dir=REPO_ROOT / "config", environ={})
        assert settings.spark.master is None, env
        assert "spark.master" not in settings.spark.conf, env
    local = load_settings("local", config_dir=REPO_ROOT / "config", environ={})
    assert local.spark.master == "local[*]"


def test_every_enabled_pipeline_runs_as_one_streaming_app(env: str) -> None:
    from cdc.cli import _build_parser

    settings = load_settings(env, config_dir=REPO_ROOT / "config", environ={})
    apps = {
        w.labels["cdc/pipeline"]: w for w in _workloads(render(env)) if w.kind == "SparkApplication"
    }
    assert sorted(apps) == sorted(settings.selected(None))
    for pipeline, app in apps.items():
        assert app.script == "streaming/cdc_stream.py"
        parsed = _build_parser().parse_args(app.argv)  # _Parser raises on anything it refuses
        assert (parsed.command, parsed.env, parsed.pipeline) == ("run", env, pipeline)
        load_settings(env, _settings_overrides(app.argv), REPO_ROOT / "config", environ={})


def test_a_pipeline_s_settings_reach_its_app_and_the_model_checks_them() -> None:
    key = "streaming.pipelines.orders.settings.defaults\\.max_records_per_trigger"
    good = {
        w.labels.get("cdc/pipeline"): w
        for w in _workloads(render("prod", "--set", f"{key}=100000"))
    }
    overrides = _settings_overrides(good["orders"].argv)
    assert overrides == ["defaults.max_records_per_trigger=100000"]
    assert _settings_overrides(good["behavior"].argv) == []
    settings = load_settings("prod", overrides, REPO_ROOT / "config", environ={})
    assert settings.defaults.max_records_per_trigger == 100000
    typo = "streaming.pipelines.orders.settings.defaults\\.max_record_per_trigger"
    bad = {
        w.labels.get("cdc/pipeline"): w for w in _workloads(render("prod", "--set", f"{typo}=1"))
    }
    with pytest.raises(ConfigError, match=r"unknown key 'defaults\.max_record_per_trigger'"):
        load_settings(
            "prod", _settings_overrides(bad["orders"].argv), REPO_ROOT / "config", environ={}
        )


def test_the_config_file_is_mounted_where_the_image_reads_it(env: str) -> None:
    docs = render(env)
    (config_map,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "data" in d and f"{env}.yaml" in d["data"]
    ]
    # The environment's file and the shared pipelines it includes: the mount hides the image's.
    assert read_config(REPO_ROOT / "config" / f"{env}.yaml")["pipelines"]
    assert yaml.safe_load((REPO_ROOT / "config" / f"{env}.yaml").read_text())["include"] == (
        "pipelines.yaml"
    )
    assert config_map["data"] == {
        f"{env}.yaml": (REPO_ROOT / "config" / f"{env}.yaml").read_text().rstrip("\n"),
        "pipelines.yaml": (REPO_ROOT / "config" / "pipelines.yaml").read_text().rstrip("\n"),
    }
    config_dir = _dockerfile().env["CDC_CONFIG_DIR"]
    for workload in _workloads(docs):
        assert workload.mounts["config"] == config_dir, workload.name
        (volume,) = [v for v in workload.volumes if v["name"] == "config"]
        assert volume["configMap"]["name"] == config_map["metadata"]["name"]
        if workload.argv:
            assert workload.argv[workload.argv.index("--env") + 1] == env
    # Without a config file the image's own is used: no ConfigMap, no mount.
    baked = render(env, config=False)
    assert not [
        d for d in baked if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")
    ]
    assert all("config" not in w.mounts for w in _workloads(baked))


def test_a_config_file_without_the_file_it_includes_stops_the_render(tmp_path: Path) -> None:
    """The ConfigMap hides the image's config folder: an included file must come with it."""
    values = str(CHART / "values-prod.yaml")
    config = str(REPO_ROOT / "config" / "prod.yaml")
    done = helm("template", "cdc", str(CHART), "-f", values, "--set-file", f"config.file={config}")
    assert done.returncode != 0
    assert (
        "config.file includes pipelines.yaml, which the config mount would hide: add --set-file"
        " config.pipelines=config/pipelines.yaml"
    ) in done.stderr
    other = tmp_path / "prod.yaml"
    other.write_text("include: [pipelines.yaml, more.yaml]\n")
    done = helm(
        "template",
        "cdc",
        str(CHART),
        "-f",
        values,
        "--set-file",
        f"config.file={other}",
        "--set-file",
        f"config.pipelines={REPO_ROOT / 'config' / 'pipelines.yaml'}",
    )
    assert done.returncode != 0
    assert "config.file includes more.yaml: the chart ships only pipelines.yaml" in done.stderr


def test_a_change_of_the_shared_pipelines_resubmits_every_workload(tmp_path: Path) -> None:
    changed = tmp_path / "pipelines.yaml"
    changed.write_text(
        (REPO_ROOT / "config" / "pipelines.yaml").read_text().replace("[account_id]", "[id]")
    )

    def checksums(*extra: str) -> dict[str, list[str]]:
        """Per workload that runs by itself (not the ops pod), the config checksums its pods
        carry."""

        def found(node: Any) -> Iterator[str]:
            if isinstance(node, dict):
                if "checksum/config" in node:
                    yield node["checksum/config"]
                for value in node.values():
                    yield from found(value)
            elif isinstance(node, list):
                for value in node:
                    yield from found(value)

        docs = render("prod", *extra)
        names = {w.name for w in _workloads(docs) if w.argv}
        return {
            d["metadata"]["name"]: list(found(d)) for d in docs if d["metadata"]["name"] in names
        }

    before = checksums()
    assert before and all(len(sums) == 1 for sums in before.values()), before
    after = checksums("--set-file", f"config.pipelines={changed}")
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in before)


def test_the_ops_pod_never_runs_by_itself_and_has_what_the_commands_need(env: str) -> None:
    docs = render(env)
    (ops,) = [d for d in docs if d["metadata"]["name"] == "cdc-ops"]
    assert ops["kind"] == "CronJob" and ops["spec"]["suspend"] is True
    job = ops["spec"]["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    # It waits for `kubectl exec` as long as the job may live, then ends.
    assert container["command"] == ["sleep", str(job["activeDeadlineSeconds"])]
    (workload,) = [w for w in _workloads(docs) if w.name == "cdc-ops"]
    assert set(workload.mounts) == {"config", "checkpoints"}


def test_checkpoints_are_mounted_at_the_configured_root(env: str) -> None:
    settings = load_settings(env, config_dir=REPO_ROOT / "config", environ={})
    claim = _values(env)["checkpoints"]["claimName"]
    readers = set()
    for workload in _workloads(render(env)):
        if "checkpoints" in workload.mounts:
            assert workload.mounts["checkpoints"] == settings.checkpoints.root, workload.name
            (volume,) = [v for v in workload.volumes if v["name"] == "checkpoints"]
            assert volume["persistentVolumeClaim"] == {"claimName": claim}
            readers.add(_command(workload.argv))
    # The streams keep their offsets there; the SLA check reads them and its breach state;
    # the ops pod runs `cdc status` and `cdc replay` on them.
    assert readers == {"run", "sla check", "ops"}


def _secret_refs(raw: dict[str, Any], sections: tuple[str, ...]) -> set[str]:
    """Environment variables named by ``env:NAME`` references in the given config sections."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and node.startswith("env:"):
            found.add(node.removeprefix("env:"))
        elif isinstance(node, str):
            assert not node.startswith("file:"), f"{node}: the chart mounts no secret files"

    for section in sections:
        walk(raw.get(section, {}))
    return found


def test_each_workload_gets_the_secrets_its_command_reads_and_no_other(env: str) -> None:
    raw = read_config(REPO_ROOT / "config" / f"{env}.yaml")
    secrets = _values(env)["secrets"]
    declared = {name: ref for group in secrets.values() for name, ref in group.items()}
    for workload in _workloads(render(env)):
        needed = _secret_refs(raw, _SECTIONS_READ[_command(workload.argv)])
        assert workload.env_names == needed, workload.name
        for entry in workload.pod.get("env", []):
            # A reference to a Secret, never a value.
            assert set(entry) == {"name", "valueFrom"}, entry
            ref = declared[entry["name"]]
            assert entry["valueFrom"] == {
                "secretKeyRef": {"name": ref["secret"], "key": ref["key"]}
            }


def test_prometheus_scrapes_the_port_each_driver_serves_metrics_on(env: str) -> None:
    settings = load_settings(env, config_dir=REPO_ROOT / "config", environ={})
    assert settings.metrics.enabled and settings.metrics.host == "0.0.0.0"
    docs = render(env)
    (service,) = [d for d in docs if d["kind"] == "Service"]
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    (rules,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    port = settings.metrics.port
    assert service["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": port}]
    selector = service["spec"]["selector"].items()
    for workload in _workloads(docs):
        selected = selector <= workload.labels.items()
        # Only the streaming drivers serve metrics: a maintenance driver would be a target
        # that never answers (CdcDriverDown).
        assert selected == (workload.kind == "SparkApplication"), workload.name
        if workload.kind == "SparkApplication":
            assert {"name": "metrics", "protocol": "TCP", "containerPort": port} in workload.pod[
                "ports"
            ]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    # The scrape job's name is the Service label jobLabel names, whatever the release is
    # called: the rules' CdcDriverDown selects that job.
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    exprs = [rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"]]
    assert f'up{{job="{job}"}} == 0' in exprs


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


def test_batch_jobs_have_valid_schedules_and_run_real_commands(env: str) -> None:
    from cdc.cli import _build_parser

    docs = render(env)
    scheduled = [d for d in docs if d["kind"] in ("CronJob", "ScheduledSparkApplication")]
    assert all(d["spec"]["timeZone"] == "Etc/UTC" for d in scheduled)
    schedules = {
        d["metadata"]["labels"]["cdc/job"]: d["spec"]["schedule"]
        for d in scheduled
        if not d["spec"].get("suspend")
    }
    assert schedules == {
        "maintain-optimize": "0 3 * * *",  # daily
        "maintain-vacuum": "0 4 * * 0",  # weekly
        "sla-check": "*/5 * * * *",
        "maintain-health": "30 5 * * *",
        "dr-snapshot": "0 2 * * *",  # daily
        "publish": "45 * * * *",  # hourly
        "gold-build": "30 * * * *",  # hourly, before the publish
    }
    for name, schedule in schedules.items():
        fields = schedule.split()
        assert len(fields) == 5, name
        assert all(_cron_field_ok(f, *r) for f, r in zip(fields, _CRON_RANGES, strict=True)), name
    commands = {}
    for workload in _workloads(docs):
        if not workload.argv:
            continue  # the ops pod
        parsed = _build_parser().parse_args(workload.argv)  # _Parser raises on what it refuses
        assert parsed.env == env, workload.name
        if "cdc/job" in workload.labels:
            commands[workload.labels["cdc/job"]] = workload.argv[: workload.argv.index("--env")]
    assert commands == {
        "maintain-optimize": ["maintain", "optimize"],
        "maintain-vacuum": ["maintain", "vacuum"],
        "sla-check": ["sla", "check"],
        "maintain-health": ["maintain", "health"],
        "dr-snapshot": ["dr", "snapshot"],
        "publish": ["publish"],
        "gold-build": ["gold", "build"],
    }


# ----------------------------------------------------------------------------- the code


def test_a_driver_without_master_outside_spark_submit_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cdc.runtime.spark import build_session

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


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_the_clusters_write_with_delta_spark_and_the_image_can_reach_s3(env: str) -> None:
    cluster = load_settings(env, config_dir=REPO_ROOT / "config", environ={})
    assert cluster.lake.writer == "delta-spark"  # dev rehearses prod's writer
    assert cluster.lake.root.startswith("s3://")
    # The image bakes the S3A JARs; their Hadoop is the pyspark wheel's.
    assert "s3" in _dockerfile().jar_profiles
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


def _runbook_commands(text: str, names: set[str]) -> list[str]:
    """The ``cdc <name> ...`` commands of a Markdown document's code (blocks and spans)."""
    text = text.replace("\\\n", " ")
    blocks = re.findall(r"```\w*\n(.*?)```", text, re.S)
    prose = re.sub(r"```\w*\n.*?```", "", text, flags=re.S).replace("\n", " ")
    snippets = [line for block in blocks for line in block.splitlines()]
    snippets += re.findall(r"`([^`]+)`", prose)
    commands = []
    for snippet in snippets:
        for match in re.finditer(rf"(?:^|\s)cdc ((?:{'|'.join(names)})\b.*)", snippet):
            command = re.split(r"\s+#", match.group(1))[0].strip()
            # A command with options, written in full (not `cdc <command> --help`).
            if "--" in command and "<" not in command and "|" not in command.split()[0]:
                commands.append(command)
    return commands


def test_the_operations_runbook_types_commands_the_cli_accepts() -> None:
    from cdc.cli import _build_parser

    parser = _build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    runbook = (REPO_ROOT / "docs/runbooks/operations.md").read_text()
    commands = _runbook_commands(runbook, set(sub.choices))
    assert len(commands) >= 8
    for command in commands:
        parsed = parser.parse_args(shlex.split(command))  # raises on what it refuses
        assert parsed.env == "prod", command
