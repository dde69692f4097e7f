"""JSON schemas for kubeconform, written at test time into a temporary folder.

Two sources, neither copied into the repository:

* Kubernetes' built-in kinds from the PyPI package ``kubernetes-validate`` (one folder per
  Kubernetes version, ``v<version>-local`` and ``v<version>-local-strict``, files named
  ``<kind>-<group>-<version>.json`` as kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}``
  spells them). Their ``$ref`` s point at ``/api/_definitions.json`` under an
  ``https://kubernetes.io`` ``$id``, which kubeconform would fetch from the network; the copies
  written here drop the ``$id`` and name the definitions file beside them instead.
* The Spark Operator's and the Prometheus Operator's CustomResourceDefinitions from the shared
  specifications (``k8s-crds``): each served version's ``openAPIV3Schema`` becomes
  ``<group>/<kind>_<version>.json``, made strict the way kubeconform's own
  ``openapi2jsonschema.py`` does it (an object with ``properties`` and no
  ``additionalProperties`` allows no other key, unless it preserves unknown fields).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.shared_specs import specs_dir

__all__ = ["kubernetes_schema_root", "schema_locations", "write_schemas"]

_DEFINITIONS = "_definitions.json"
_REMOTE_DEFINITIONS = f"/api/{_DEFINITIONS}#"
_CRD_FOLDER = "k8s-crds"


def kubernetes_schema_root() -> Path:
    """The folder of per-version schemas that ``kubernetes-validate`` ships."""
    spec = importlib.util.find_spec("kubernetes_validate")
    if spec is None or spec.origin is None:
        pytest.fail(
            "kubernetes-validate is not installed: pip install -e '.[test]' (make install)",
            pytrace=False,
        )
    return Path(spec.origin).parent / "kubernetes-json-schema"


def _kind_file(api_version: str, kind: str) -> str:
    """``cronjob-batch-v1.json``: kubeconform's and kubernetes-validate's file name of a kind."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def _local_refs(node: Any) -> Any:
    """``node`` with its references to the remote definitions file made relative."""
    if isinstance(node, dict):
        return {
            key: (
                value.replace(_REMOTE_DEFINITIONS, f"{_DEFINITIONS}#")
                if key == "$ref" and isinstance(value, str)
                else _local_refs(value)
            )
            for key, value in node.items()
            if key != "$id"
        }
    if isinstance(node, list):
        return [_local_refs(item) for item in node]
    return node


def _write_kubernetes(dest: Path, version: str, kinds: Iterable[tuple[str, str]]) -> None:
    root = kubernetes_schema_root()
    for variant in ("", "-strict"):
        source = root / f"v{version}-local{variant}"
        if not source.is_dir():
            shipped = sorted(p.name for p in root.iterdir() if not p.name.endswith("-strict"))
            pytest.fail(
                f"kubernetes-validate has no schemas for Kubernetes {version} (it has: "
                f"{', '.join(shipped)})",
                pytrace=False,
            )
        target = dest / "kubernetes" / f"v{version}-local{variant}"
        target.mkdir(parents=True, exist_ok=True)
        for name in {_DEFINITIONS, *(_kind_file(api, kind) for api, kind in kinds)}:
            if (source / name).is_file():  # a kind it lacks stays missing: kubeconform fails it
                schema = json.loads((source / name).read_text())
                (target / name).write_text(json.dumps(_local_refs(schema)))


def _strict(node: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as a strict JSON schema (what kubeconform expects)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _write_crds(dest: Path) -> None:
    for path in sorted(specs_dir(_CRD_FOLDER).glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"].lower()
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            schema = _strict(version["schema"]["openAPIV3Schema"])
            target = dest / "crds" / group / f"{kind}_{version['name']}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(schema))


def schema_locations(dest: Path) -> list[str]:
    """kubeconform's ``-schema-location`` templates for what :func:`write_schemas` wrote."""
    return [
        f"{dest}/kubernetes/{{{{ .NormalizedKubernetesVersion }}}}-local{{{{ .StrictSuffix }}}}"
        "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
        f"{dest}/crds/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
    ]


def write_schemas(
    dest: Path, docs: Iterable[Mapping[str, Any]], kubernetes_versions: Iterable[str]
) -> list[str]:
    """Write the schemas ``docs`` need for each Kubernetes version, and every CRD's.

    Args:
        dest: an empty folder.
        docs: the resources to validate (their ``apiVersion`` and ``kind`` pick the schemas).
        kubernetes_versions: e.g. ``["1.30.0", "1.37.0"]``.

    Returns:
        The ``-schema-location`` templates to give kubeconform, in order.
    """
    kinds = {(str(doc["apiVersion"]), str(doc["kind"])) for doc in docs}
    for version in kubernetes_versions:
        _write_kubernetes(dest, version, kinds)
    _write_crds(dest)
    return schema_locations(dest)
