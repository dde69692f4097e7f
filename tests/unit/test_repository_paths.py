"""Files the code finds from its own location in the repository (a move of a module one
package deeper must move its ``parents[...]`` with it)."""

from __future__ import annotations

from cdc.runtime import jvm
from cdc_demo import data
from tests.support.paths import REPO_ROOT


def test_the_pinned_jars_pom_is_found_from_the_jvm_module() -> None:
    assert jvm._DEFAULT_POM == REPO_ROOT / "jvm" / "pom.xml"
    assert jvm._DEFAULT_POM.is_file()


def test_the_demo_registry_is_the_repositorys() -> None:
    registry = data._default_registry()
    assert registry.root == REPO_ROOT / "schemas" / "avro"
    assert registry.latest("crm.contacts-value").schema_id > 0
