"""The access policy in Lake Formation, applied to moto's server through ``cdc governance``.

moto keeps Lake Formation's grants, LF-tags (on databases, tables and columns) and column
grants; its data cells filters come from the tests' moto extension
(``tests/support/moto_lakeformation.py``), and every request is validated by botocore. The
shipped local policy, with a Lake Formation target in moto's account, is applied; then a
grant is changed behind its back and ``check`` must say so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.support.moto_server import moto_server
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/cdc-local-"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


LAKE_FORMATION = {
    "databases": {
        layer: f"cdc_local_{layer}" for layer in ("bronze", "quarantine", "silver", "gold")
    },
    "principals": {
        audience: ROLE + audience.replace("_", "-")
        for audience in (
            "engineer",
            "data_scientist",
            "analyst_emea",
            "analyst_amer",
            "analyst_apac",
        )
    },
}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto"), lakeformation=True) as url:
        yield url


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    policy = yaml.safe_load((REPO_ROOT / "config/governance/local.yaml").read_text())
    policy["targets"]["lakeformation"] = LAKE_FORMATION
    path = tmp_path_factory.mktemp("policy") / "local.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@pytest.fixture()
def lf(moto: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return boto3.client("lakeformation", region_name=REGION, endpoint_url=moto)


def cdc(moto: str, command: str, policy: Path) -> subprocess.CompletedProcess[str]:
    """``cdc governance <command> --target lakeformation`` against moto."""
    env = {
        **os.environ,
        **AWS_ENV,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)]),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cdc.cli",
            "governance",
            command,
            "--target",
            "lakeformation",
            "--set",
            f"governance.aws_endpoint_url={moto}",
            "--set",
            f"governance.aws_region={REGION}",
            "--set",
            f"governance.policy={policy}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=180,
    )


def grants(lf: Any, audience: str) -> list[dict[str, Any]]:
    principal = {"DataLakePrincipalIdentifier": ROLE + audience.replace("_", "-")}
    found = lf.list_permissions()["PrincipalResourcePermissions"]
    return [
        {"Resource": g["Resource"], "Permissions": sorted(g["Permissions"])}
        for g in found
        if g["Principal"] == principal
    ]


def tags(lf: Any, resource: dict[str, Any], field: str) -> Any:
    return lf.get_resource_lf_tags(Resource=resource, ShowAssignedLFTags=True).get(field, [])


def values(found: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {t["TagKey"]: t["TagValues"] for t in found}


def test_moto_holds_what_the_policy_asks_and_check_catches_a_grant_changed_behind_its_back(
    moto: str, lf: Any, policy_file: Path
) -> None:
    planned = cdc(moto, "plan", policy_file)
    assert planned.returncode == 0, planned.stderr
    assert "+ lf-tag cdc_pii" in planned.stdout
    assert (
        "cannot mask values: the masked columns are excluded for data_scientist" in planned.stdout
    )
    applied = cdc(moto, "apply", policy_file)
    assert applied.returncode == 0, applied.stderr
    in_sync = cdc(moto, "check", policy_file)
    assert in_sync.returncode == 0, in_sync.stdout + in_sync.stderr
    assert "lakeformation: in sync with the policy" in in_sync.stdout

    # LF-tags: the layer on each database, pii=no on tables, pii=yes on the tagged columns.
    defined = {t["TagKey"]: sorted(t["TagValues"]) for t in lf.list_lf_tags()["LFTags"]}
    assert defined == {
        "cdc_layer": ["bronze", "gold", "quarantine", "silver"],
        "cdc_pii": ["no", "yes"],
    }
    silver = {"Database": {"Name": "cdc_local_silver"}}
    assert values(tags(lf, silver, "LFTagOnDatabase")) == {"cdc_layer": ["silver"]}
    contact = {"DatabaseName": "cdc_local_silver", "Name": "dim_contact"}
    assert values(tags(lf, {"Table": contact}, "LFTagsOnTable")) == {"cdc_pii": ["no"]}
    columns = ["contact_id", "account_id", "email", "first_name", "last_name", "phone"]
    with_columns = {"TableWithColumns": {**contact, "ColumnNames": columns}}
    on_columns = tags(lf, with_columns, "LFTagsOnColumns")
    assert {c["Name"]: values(c["LFTags"]) for c in on_columns} == {
        name: {"cdc_pii": ["yes"]} for name in ("email", "first_name", "last_name", "phone")
    }

    # Grants: tag-based for whole layers, column-level for named tables, filters for rows.
    engineer = grants(lf, "engineer")
    assert {
        "Resource": {
            "LFTagPolicy": {
                "ResourceType": "TABLE",
                "Expression": [
                    {"TagKey": "cdc_layer", "TagValues": ["bronze", "quarantine", "silver", "gold"]}
                ],
            }
        },
        "Permissions": ["DESCRIBE", "SELECT"],
    } in engineer
    scientist = grants(lf, "data_scientist")
    silver_tables = {
        "LFTagPolicy": {
            "ResourceType": "TABLE",
            "Expression": [
                {"TagKey": "cdc_layer", "TagValues": ["silver"]},
                {"TagKey": "cdc_pii", "TagValues": ["no"]},
            ],
        }
    }
    assert {"Resource": silver_tables, "Permissions": ["DESCRIBE", "SELECT"]} in scientist
    customer_360 = {
        "TableWithColumns": {
            "DatabaseName": "cdc_local_gold",
            "Name": "customer_360",
            "ColumnWildcard": {"ExcludedColumnNames": ["owner_email"]},
        }
    }
    assert {"Resource": customer_360, "Permissions": ["SELECT"]} in scientist
    emea = grants(lf, "analyst_emea")
    emea_filter = {
        "DataCellsFilter": {
            "TableCatalogId": ACCOUNT,
            "DatabaseName": "cdc_local_gold",
            "TableName": "customer_360",
            "Name": "cdc_analyst_emea",
        }
    }
    assert {"Resource": emea_filter, "Permissions": ["SELECT"]} in emea
    filters = {
        (f["TableName"], f["Name"]): f for f in lf.list_data_cells_filter()["DataCellsFilters"]
    }
    assert filters["customer_360", "cdc_analyst_emea"]["RowFilter"] == {
        "FilterExpression": "region = 'EMEA'"
    }
    assert filters["customer_360", "cdc_analyst_emea"]["ColumnWildcard"] == {
        "ExcludedColumnNames": ["owner_email"]
    }
    assert sorted(name for _, name in filters) == sorted(
        f"cdc_analyst_{r}" for r in ("emea", "amer", "apac") for _ in ("360", "revenue")
    )

    # Behind the policy's back: a grant revoked, another added, a column's tag removed.
    principal = {"DataLakePrincipalIdentifier": ROLE + "data-scientist"}
    lf.revoke_permissions(Principal=principal, Resource=customer_360, Permissions=["SELECT"])
    lf.grant_permissions(
        Principal={"DataLakePrincipalIdentifier": ROLE + "analyst-emea"},
        Resource={"Table": contact},
        Permissions=["SELECT"],
    )
    email = {"TableWithColumns": {**contact, "ColumnNames": ["email"]}}
    lf.remove_lf_tags_from_resource(
        Resource=email, LFTags=[{"CatalogId": ACCOUNT, "TagKey": "cdc_pii", "TagValues": ["yes"]}]
    )
    drift = cdc(moto, "check", policy_file)
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "- grant analyst_emea on table cdc_local_silver.dim_contact (SELECT)" in drift.stdout
    assert (
        "+ grant data_scientist on table cdc_local_gold.customer_360 except owner_email"
        in drift.stdout
    )
    assert "+ column tags cdc_local_silver.dim_contact.email" in drift.stdout
    restored = cdc(moto, "apply", policy_file)
    assert restored.returncode == 0, restored.stderr
    assert cdc(moto, "check", policy_file).returncode == 0
    assert {"Resource": customer_360, "Permissions": ["SELECT"]} in grants(lf, "data_scientist")
    assert not [g for g in grants(lf, "analyst_emea") if g["Resource"].get("Table") == contact]


def test_an_unreachable_endpoint_is_one_line(policy_file: Path) -> None:
    done = cdc("http://127.0.0.1:9", "check", policy_file)
    assert done.returncode == 2
    assert done.stderr.startswith("cdc: error: ")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
