"""OpenLineage events checked against the spec's JSON schemas (``openlineage/`` of the shared
specifications: ``OpenLineage.json`` and ``facets/*.json``).

An event is valid when it validates against ``OpenLineage.json`` (a ``RunEvent``) and each
facet whose ``_schemaURL`` names a facet schema of the folder validates against that
definition (formats checked: uuid, date-time). A facet schema the folder does not hold (the
Spark agent's own ``spark_*`` facets) is held to the core's ``BaseFacet`` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from tests.support.shared_specs import specs_dir

__all__ = ["facets_of", "read_events", "schema_problems", "validate_event"]

_CORE = "https://openlineage.io/spec/2-0-2/OpenLineage.json"


@cache
def _registry() -> tuple[Registry, dict[str, Any]]:
    folder = specs_dir("openlineage")
    documents = [json.loads((folder / "OpenLineage.json").read_text())]
    documents += [json.loads(p.read_text()) for p in sorted((folder / "facets").glob("*.json"))]
    resources = [(d["$id"], Resource.from_contents(d)) for d in documents]
    return Registry().with_resources(resources), {d["$id"]: d for d in documents}


def _validator(ref: str) -> Draft202012Validator:
    registry, _ = _registry()
    return Draft202012Validator(
        {"$ref": ref}, registry=registry, format_checker=FormatChecker()
    )


def facets_of(event: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every facet of an event: ``(where, facet)``."""
    for key in ("run", "job"):
        for name, facet in ((event.get(key) or {}).get("facets") or {}).items():
            yield f"{key}.{name}", facet
    for side in ("inputs", "outputs"):
        for i, dataset in enumerate(event.get(side) or []):
            for group in ("facets", "inputFacets", "outputFacets"):
                for name, facet in (dataset.get(group) or {}).items():
                    yield f"{side}[{i}].{group}.{name}", facet


def schema_problems(event: dict[str, Any]) -> list[str]:
    """What in ``event`` breaks the spec (empty: valid)."""
    _, documents = _registry()
    problems = [
        f"event: {e.message} at {'/'.join(map(str, e.absolute_path))}"
        for e in _validator(f"{_CORE}#/$defs/RunEvent").iter_errors(event)
    ]
    for where, facet in facets_of(event):
        url = str(facet.get("_schemaURL", ""))
        schema_id = url.split("#", 1)[0]
        if schema_id in documents and schema_id != _CORE:
            problems += [
                f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path))}"
                for e in _validator(url).iter_errors(facet)
            ]
    return problems


def validate_event(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` if it is a valid OpenLineage run event; fails the test otherwise."""
    problems = schema_problems(event)
    assert not problems, "\n".join(problems) + "\n" + json.dumps(event, indent=1)[:4000]
    return event


def read_events(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The events of JSON-lines files (the file transport's), in file order."""
    events = []
    for path in paths:
        if path.exists():
            events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return events
