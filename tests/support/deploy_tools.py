"""The pinned helm and kubeconform (``deploy/tools.env``), and the chart rendered by them.

``make tools`` builds both with ``go install`` into ``$CDC_TOOLS_DIR/<name>-<version>/``
(default ``~/.cache/cdc-service/tools``). A missing tool fails the test that needs it, in one
line saying how to install it: the deployment is checked by the tools users run, or not at all.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.k8s_schemas import write_schemas
from tests.support.paths import REPO_ROOT

__all__ = [
    "CHART",
    "KUBERNETES_VERSIONS",
    "Validation",
    "helm",
    "kubeconform",
    "render",
    "render_text",
    "tool",
]

CHART = REPO_ROOT / "deploy" / "helm" / "cdc-service"
TOOLS_ENV = REPO_ROOT / "deploy" / "tools.env"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""The oldest Kubernetes the chart supports (``kubeVersion`` in Chart.yaml) and the newest
``kubernetes-validate`` ships schemas for: every rendered resource is validated against both."""


def _pins() -> dict[str, str]:
    pins = {}
    for line in TOOLS_ENV.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            pins[name.strip()] = value.strip()
    return pins


def tool(name: str) -> Path:
    """The pinned binary ``name`` (``helm``, ``kubeconform``); missing: the test fails."""
    version = _pins()[f"{name.upper()}_VERSION"]
    folder = Path(os.environ.get("CDC_TOOLS_DIR") or Path.home() / ".cache/cdc-service/tools")
    binary = folder / f"{name}-{version}" / name
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"{name} {version} is missing ({binary}): run `make tools` (it needs Go)",
            pytrace=False,
        )
    return binary


def _run(
    binary: Path, args: Sequence[str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="cdc-helm-home-") as home:
        # helm reads and writes its config, cache and data folders: keep the user's out of it.
        env = {
            **os.environ,
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_DATA_HOME": f"{home}/data",
        }
        return subprocess.run(
            [str(binary), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
            cwd=REPO_ROOT,
        )


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm in the repository root."""
    return _run(tool("helm"), args)


def _env_args(env: str, config: bool) -> list[str]:
    args = ["-f", str(CHART / f"values-{env}.yaml")]
    if config:
        args += ["--set-file", f"config.file={REPO_ROOT / 'config' / f'{env}.yaml'}"]
        args += ["--set-file", f"config.pipelines={REPO_ROOT / 'config' / 'pipelines.yaml'}"]
    return args


@functools.cache
def render_text(env: str, *extra: str, config: bool = True) -> str:
    """``helm template`` of the chart for ``env`` (its values file, its config file).

    Args:
        env: ``dev`` or ``prod``.
        *extra: more helm arguments (``--set key=value``).
        config: pass config/<env>.yaml as ``config.file`` and config/pipelines.yaml as
            ``config.pipelines`` (what the runbook's install does).

    Returns:
        The rendered manifests.
    """
    done = helm(
        "template",
        "cdc",
        str(CHART),
        "--namespace",
        "data",
        "--kube-version",
        KUBERNETES_VERSIONS[0],
        *_env_args(env, config),
        *extra,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(env: str, *extra: str, config: bool = True) -> list[dict[str, Any]]:
    """The rendered resources of :func:`render_text`, parsed (a fresh copy each call)."""
    text = render_text(env, *extra, config=config)
    return [doc for doc in yaml.safe_load_all(text) if doc]


@dataclass(frozen=True)
class Validation:
    """kubeconform's verdict on each resource: ``(kind, name) -> (status, message)``."""

    results: dict[tuple[str, str], tuple[str, str]]
    output: str

    @property
    def failures(self) -> dict[tuple[str, str], tuple[str, str]]:
        return {key: v for key, v in self.results.items() if v[0] != "statusValid"}


def kubeconform(
    docs: Iterable[Mapping[str, Any]], workdir: Path, versions: Iterable[str] = KUBERNETES_VERSIONS
) -> Validation:
    """Validate ``docs`` with the pinned kubeconform, ``-strict``, once per Kubernetes version.

    Every resource needs a schema (no ``-ignore-missing-schemas``): a kind kubeconform has no
    schema for is an error, not a skip.

    Args:
        docs: Kubernetes resources.
        workdir: an empty folder for the schemas.
        versions: the Kubernetes versions to validate against.

    Returns:
        The worst verdict per resource over the versions.
    """
    docs = list(docs)
    versions = list(versions)
    locations = write_schemas(workdir, docs, versions)
    stdin = yaml.safe_dump_all(docs, sort_keys=False)
    results: dict[tuple[str, str], tuple[str, str]] = {}
    outputs = []
    for version in versions:
        # One worker: each worker compiles the (large) schemas again; on 2 cores -n 1 is 4x
        # faster than the default 4.
        args = ["-strict", "-n", "1", "-output", "json", "-verbose", "-kubernetes-version", version]
        for location in locations:
            args += ["-schema-location", location]
        done = _run(tool("kubeconform"), [*args, "-"], stdin=stdin)
        outputs.append(done.stdout + done.stderr)
        report = json.loads(done.stdout)
        for resource in report["resources"]:
            key = (resource["kind"], resource["name"])
            message = resource.get("msg", "")
            for error in resource.get("validationErrors") or ():
                message += f" [{error['path']}: {error['msg']}]"
            if results.get(key, ("statusValid", ""))[0] == "statusValid":
                results[key] = (resource["status"], f"k8s {version}: {message}".strip())
        assert len(report["resources"]) == len(docs), done.stdout + done.stderr
    return Validation(results, "\n".join(outputs))
