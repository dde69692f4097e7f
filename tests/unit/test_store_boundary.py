"""``cdc.store`` is the only way to a Delta table: no other module of ``src/`` (nor the
``batch/`` and ``streaming/`` entry points) imports ``deltalake`` or delta-spark's ``delta``,
reads or writes Delta through Spark or Polars, names a table's log, or polls
``DeltaTable.isDeltaTable`` (which caches a negative answer). An AST scan, so comments and
docstrings may still talk about them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

STORE = REPO_ROOT / "src" / "cdc" / "store"
SCANNED = ("src", "batch", "streaming")
DELTA_PACKAGES = ("deltalake", "delta")
POLARS_DELTA = {"scan_delta", "read_delta", "write_delta"}


def _sources() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (REPO_ROOT / folder).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def violations(code: str, path: Path) -> Iterator[str]:
    """What in one source file (``code``, at ``path``) opens or writes a Delta table outside
    the store."""
    tree = ast.parse(code, filename=str(path))
    in_store = path.is_relative_to(STORE)
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO_ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute) and node.attr == "isDeltaTable":
            yield f"{where}: DeltaTable.isDeltaTable"  # not even in the store
        if in_store:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in DELTA_PACKAGES:
                    yield f"{where}: import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in DELTA_PACKAGES:
                yield f"{where}: from {node.module} import ..."
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            first = node.args[0] if node.args else None
            if (
                node.func.attr == "format"
                and isinstance(first, ast.Constant)
                and str(first.value).lower() == "delta"
            ):
                yield f'{where}: format("delta")'
            if node.func.attr in POLARS_DELTA:
                yield f"{where}: {node.func.attr}"
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and ("_delta_log" in node.value or "delta.`" in node.value)
        ):
            yield f"{where}: a Delta log path or a Spark SQL table path: {node.value[:40]!r}"


def test_only_the_store_opens_or_writes_delta_tables() -> None:
    sources = _sources()
    assert len(sources) > 50 and any(p.is_relative_to(STORE) for p in sources)
    found = [v for path in sources for v in violations(path.read_text(), path)]
    assert found == []


@pytest.mark.parametrize(
    "code",
    [
        "import deltalake",
        "from deltalake import DeltaTable",
        "from deltalake.exceptions import DeltaError",
        "def f():\n    from delta.tables import DeltaTable",
        "import delta.tables",
        "df.write.format('delta').save(p)",
        'spark.read.format("DELTA").load(p)',
        "pl.scan_delta(p)",
        "pl.read_delta(p)",
        "spark.sql(f'OPTIMIZE delta.`{p}`')",
        "log = root / '_delta_log'",
        "DeltaTable.isDeltaTable(spark, p)",
    ],
)
def test_the_scan_finds_each_way_around_the_store(code: str) -> None:
    source = f'"""A module that mentions _delta_log in its docstring."""\n{code}\n'
    assert len(list(violations(source, REPO_ROOT / "src" / "cdc" / "probe.py"))) == 1
    in_store = list(violations(source, STORE / "probe.py"))
    assert len(in_store) == (1 if "isDeltaTable" in code else 0)
