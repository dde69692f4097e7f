"""Schema changes mid-stream, by policy, on both writers (issue 25, item 2).

The contacts table's value subject gets new registry versions while the pipeline runs on a
real broker: v4 adds two columns (the tables evolve, old rows read null), v5 drops
``job_title`` (breaking: under ``fail`` the batch stops in one line naming the change and the
version, and nothing lands; under ``ignore`` the table keeps ``job_title``, null in new rows),
v6 widens ``score`` from int to long (the tables widen the column first, bronze's field
inside the value struct and silver's column; old rows read as the wider type, and values the
int could not hold land).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from cdc.config.lake import table_paths
from cdc.ingest.contracts import load_contracts
from cdc.ingest.produce import produce_file
from cdc.ingest.registry import FileRegistry
from cdc.pipeline.queries import PipelineFailedError, run_pipelines
from tests.support.envelopes import change
from tests.support.local_settings import make_settings
from tests.support.paths import CONTRACTS_PATH, REGISTRY_PATH
from tests.support.tables import WRITERS, read_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUBJECT = "crm.contacts-value"


def new_version(root: Path, edit: Any, schema_id: int) -> int:
    """Add the next version of the contacts value subject: the latest, its row edited."""
    index = json.loads((root / "index.json").read_text())
    versions = index["subjects"][SUBJECT]
    latest = max(v["version"] for v in versions)
    schema = json.loads((root / SUBJECT / f"v{latest}.avsc").read_text())
    schema = copy.deepcopy(schema)
    row = next(f for f in schema["fields"] if f["name"] == "before")["type"][1]
    row["fields"] = edit(row["fields"])
    (root / SUBJECT / f"v{latest + 1}.avsc").write_text(json.dumps(schema))
    versions.append({"version": latest + 1, "id": schema_id})
    (root / "index.json").write_text(json.dumps(index))
    return latest + 1


def send(bootstrap: str, root: Path, tmp: Path, lines: list[dict[str, Any]], n: int) -> None:
    path = tmp / f"batch-{n}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    registry = FileRegistry.load(root)
    report = produce_file(bootstrap, registry, load_contracts(CONTRACTS_PATH), "crm.contacts", path)
    assert report.sent == len(lines)


@pytest.mark.parametrize("writer", WRITERS)
def test_added_columns_evolve_and_a_drop_follows_the_policy(
    spark: Any, fresh_kafka: str, tmp_path: Path, writer: str
) -> None:
    root = tmp_path / "avro"
    shutil.copytree(REGISTRY_PATH, root)

    def settings_with(*extra: str) -> Any:
        return make_settings(
            fresh_kafka, tmp_path, f"lake.writer={writer}", f"registry.path={root}", *extra
        )

    settings = settings_with()
    paths = table_paths(settings, settings.pipeline("crm_contacts"))
    c1 = change("c1", "c", 1000, email="ann@acme.io")
    c1["value"]["after"]["job_title"] = "cto"
    send(fresh_kafka, root, tmp_path, [c1], 1)
    run_pipelines(spark, settings, ["crm_contacts"], available_now=True)

    def added(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            *fields,
            {"name": "loyalty_tier", "type": ["null", "string"], "default": None},
            {"name": "score", "type": ["null", "int"], "default": None},
        ]

    assert new_version(root, added, 901) == 4
    v4 = change("c2", "c", 2000, email="bob@acme.io")
    v4["value"]["after"] |= {"loyalty_tier": "gold", "score": 7, "job_title": "cfo"}
    send(fresh_kafka, root, tmp_path, [v4], 2)
    run_pipelines(spark, settings_with(), ["crm_contacts"], available_now=True)
    silver = read_table(paths["silver"]).sort("contact_id")
    assert silver.select("contact_id", "loyalty_tier", "score").rows() == [
        ("c1", None, None),
        ("c2", "gold", 7),
    ]
    bronze = read_table(paths["bronze"])
    tiers = bronze.select(pl.col("value").struct.field("after").struct.field("loyalty_tier"))
    assert sorted(tiers.to_series().to_list(), key=str) == [None, "gold"]

    def dropped(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [f for f in fields if f["name"] != "job_title"]

    assert new_version(root, dropped, 902) == 5
    v5 = change("c3", "c", 3000, email="cy@acme.io")
    v5["value"]["after"].pop("job_title", None)
    v5["value"]["after"] |= {"loyalty_tier": None, "score": None}
    send(fresh_kafka, root, tmp_path, [v5], 3)
    bronze_before = read_table(paths["bronze"]).height
    with pytest.raises(PipelineFailedError) as failed:
        run_pipelines(spark, settings_with(), ["crm_contacts"], available_now=True)
    assert str(failed.value).endswith(
        "pipeline crm_contacts: crm.contacts-value v5 (id 902) drops 'job_title' (string) that"
        " silver/dim_contact holds; schema_changes.breaking is fail, so nothing was written"
        " (set it to ignore to keep the table's columns, or make the change compatible)"
    )
    assert read_table(paths["bronze"]).height == bronze_before  # nothing landed

    ignoring = settings_with("defaults.schema_changes.breaking=ignore")
    run_pipelines(spark, ignoring, ["crm_contacts"], available_now=True)
    silver = read_table(paths["silver"]).sort("contact_id")
    assert silver.select("contact_id", "job_title").rows() == [
        ("c1", "cto"),
        ("c2", "cfo"),
        ("c3", None),
    ]

    def widened(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [f | {"type": ["null", "long"]} if f["name"] == "score" else f for f in fields]

    assert new_version(root, widened, 903) == 6
    v6 = change("c4", "c", 4000, email="dee@acme.io")
    v6["value"]["after"].pop("job_title", None)
    v6["value"]["after"] |= {"loyalty_tier": None, "score": 2**40}
    v6_update = change("c2", "u", 5000, email="bob@acme.io")
    v6_update["value"]["after"].pop("job_title", None)
    v6_update["value"]["after"] |= {"loyalty_tier": "gold", "score": -(2**40)}
    send(fresh_kafka, root, tmp_path, [v6, v6_update], 4)
    run_pipelines(spark, ignoring, ["crm_contacts"], available_now=True)
    # The tables widened first (bronze's field in the value struct, silver's column), then the
    # batch landed: old rows read as the wider type, new ones hold what the int could not.
    silver = read_table(paths["silver"]).sort("contact_id", "valid_from")
    assert silver.schema["score"] == pl.Int64
    assert silver.select("contact_id", "score", "is_current").rows() == [
        ("c1", None, True),
        ("c2", 7, False),
        ("c2", -(2**40), True),
        ("c3", None, True),
        ("c4", 2**40, True),
    ]
    bronze = read_table(paths["bronze"])
    scores = bronze.select(pl.col("value").struct.field("after").struct.field("score"))
    assert scores.to_series().dtype == pl.Int64
    assert sorted(scores.to_series().drop_nulls().to_list()) == [-(2**40), 7, 2**40]
    # The rewrite kept each table the table the checkpoint knows (its id): the next run goes on.
    later = change("c5", "c", 6000, email="eve@acme.io")
    later["value"]["after"].pop("job_title", None)
    later["value"]["after"] |= {"loyalty_tier": None, "score": 2**41}
    send(fresh_kafka, root, tmp_path, [later], 5)
    run_pipelines(spark, ignoring, ["crm_contacts"], available_now=True)
    silver = read_table(paths["silver"]).filter(pl.col("contact_id") == "c5")
    assert silver.select("score").to_series().to_list() == [2**41]
