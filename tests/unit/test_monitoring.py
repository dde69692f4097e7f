"""The alert rules and the Grafana dashboard the Helm chart deploys, checked with promtool.

Both are read from the chart as helm renders it (the PrometheusRule and the dashboard's
ConfigMap), so what is tested is what a cluster receives. promtool (Debian's ``prometheus``
package, installed by .ci/run) parses every expression and runs the rules' unit tests
(deploy/helm/tests/alert-rules.test.yml); its absence fails the suite, it never skips it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from cdc.ops.metrics import METRIC_NAMES
from tests.support.deploy_tools import render
from tests.support.paths import REPO_ROOT

RULE_TESTS = REPO_ROOT / "deploy" / "helm" / "tests" / "alert-rules.test.yml"
_SERIES = re.compile(r"\b(cdc_[a-z0-9_]+|up)\b")
_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: .ci/run installs Debian's prometheus package"
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _rule_groups() -> list[dict[str, Any]]:
    (rule,) = [d for d in render("prod") if d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def _dashboard() -> dict[str, Any]:
    """The dashboard of the ConfigMap Grafana's sidecar picks up (by its label)."""
    (config_map,) = [
        d
        for d in render("prod")
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
    ]
    (text,) = config_map["data"].values()
    dashboard: dict[str, Any] = json.loads(text)
    return dashboard


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _rule_groups() for rule in group["rules"]]


def _exported(expr: str) -> set[str]:
    """The service's metrics an expression names (histogram series to their family)."""
    names = set()
    for name in _SERIES.findall(expr):
        if name == "up":
            continue
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in METRIC_NAMES:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_alert_rules_pass_their_promtool_tests(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": _rule_groups()}))
    shutil.copy(RULE_TESTS, tmp_path)
    checked = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    cases: dict[str, set[bool]] = {}
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    alerts = {rule["alert"] for rule in _rules()}
    assert alerts == {
        "CdcFreshnessBreach",
        "CdcNoRecords",
        "CdcLagGrowing",
        "CdcQuarantineSpike",
        "CdcQueryDown",
        "CdcDriverDown",
        "CdcScd2InvariantViolated",
    }
    assert {name: cases.get(name) for name in alerts} == {name: {True, False} for name in alerts}


def test_rules_name_only_metrics_the_service_exports() -> None:
    for rule in _rules():
        assert _exported(rule["expr"]) <= set(METRIC_NAMES), rule["alert"]


def _dashboard_exprs() -> list[tuple[str, str]]:
    dash = _dashboard()
    return [
        (panel["title"], target["expr"])
        for panel in dash["panels"]
        for target in panel.get("targets", [])
    ]


def test_dashboard_expressions_are_promql_over_exported_metrics(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    titles = {title for title, _ in exprs}
    for needed in ("Throughput", "lag", "Freshness", "phase", "Quarantine", "MERGE"):
        assert any(needed in title for title in titles), needed
    # Grafana's variables become what they stand for; promtool then parses each expression
    # as a recording rule.
    rules = []
    for i, (title, expr) in enumerate(exprs):
        assert _exported(expr) <= set(METRIC_NAMES), (title, expr)
        assert _exported(expr), (title, expr)  # every panel shows the service's own series
        concrete = expr.replace("$__rate_interval", "1m").replace("$pipeline", ".*")
        assert "$" not in concrete, expr
        rules.append({"record": f"dashboard:panel_{i}", "expr": concrete})
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    checked = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
