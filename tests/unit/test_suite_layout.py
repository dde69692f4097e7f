"""The test suite's own layout: helpers live in tests/support, and every slow tier is marked.

* A module of the suite (or of the benchmarks) imports from ``tests.support`` only: never
  from a test module, a ``conftest`` or a helper kept beside the tests, so that a helper has
  one home and a test module can be moved or deleted without breaking another.
* Every module under ``tests/integration`` and ``tests/faults`` that holds tests marks them
  all ``integration`` (a module-level ``pytestmark``), so the unit tier
  (``-m "not integration and not slow"``) needs no broker, Spark session or server.

Both are read from the source (AST), so a new cross-import or an unmarked module fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.paths import REPO_ROOT

SUPPORT = "tests.support"
MARKED_TIERS = ("integration", "faults")


def _modules(*roots: Path) -> Iterator[Path]:
    for root in roots:
        yield from sorted(root.rglob("*.py"))


def _imported(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """``(line, module)`` of every import in ``tree``, nested ones included; ``from tests
    import x`` names ``tests.x``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tests":
                for alias in node.names:
                    yield node.lineno, f"tests.{alias.name}"
            else:
                yield node.lineno, node.module


def cross_imports(root: Path, *folders: str) -> list[str]:
    """Imports of a ``tests`` module outside ``tests.support``, as ``path:line: module``."""
    found = []
    for path in _modules(*(root / folder for folder in folders)):
        tree = ast.parse(path.read_text(), str(path))
        for line, module in _imported(tree):
            inside = module == SUPPORT or module.startswith(SUPPORT + ".")
            if (module == "tests" or module.startswith("tests.")) and not inside:
                found.append(f"{path.relative_to(root)}:{line}: {module}")
    return found


def _marks(value: ast.expr) -> set[str]:
    """Names of the ``pytest.mark.<name>`` in a ``pytestmark`` value (one mark or a list)."""
    items = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
    names = set()
    for item in items:
        if isinstance(item, ast.Call):  # pytest.mark.x(...)
            item = item.func
        if (
            isinstance(item, ast.Attribute)
            and isinstance(item.value, ast.Attribute)
            and item.value.attr == "mark"
        ):
            names.add(item.attr)
    return names


def unmarked_modules(root: Path, *folders: str) -> list[str]:
    """Modules holding tests (``test_*`` functions or classes) whose module-level
    ``pytestmark`` does not include ``integration``."""
    found = []
    for path in _modules(*(root / folder for folder in folders)):
        tree = ast.parse(path.read_text(), str(path))
        holds_tests = any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.name.lower().startswith("test")
            for node in tree.body
        )
        marks: set[str] = set()
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets):
                assert isinstance(node, ast.Assign)
                marks |= _marks(node.value)
        if holds_tests and "integration" not in marks:
            found.append(str(path.relative_to(root)))
    return found


def test_no_module_imports_a_test_module_or_a_helper_outside_tests_support() -> None:
    assert cross_imports(REPO_ROOT, "tests", "benchmarks") == []


def test_every_integration_and_fault_module_is_marked_integration() -> None:
    assert unmarked_modules(REPO_ROOT, *(f"tests/{tier}" for tier in MARKED_TIERS)) == []


def test_the_checks_see_a_cross_import_and_an_unmarked_module(tmp_path: Path) -> None:
    """The two checks above on a small tree holding one of each mistake (and allowed forms)."""
    (tmp_path / "tests" / "integration").mkdir(parents=True)
    (tmp_path / "tests" / "integration" / "test_a.py").write_text(
        "import pytest\n"
        "from tests.support.kafka import produce\n"
        "from tests.integration.test_b import helper\n"
        "pytestmark = [pytest.mark.integration, pytest.mark.slow]\n"
        "def test_a():\n"
        "    from tests import conftest\n"
    )
    (tmp_path / "tests" / "integration" / "test_b.py").write_text(
        "import pytest\n"
        "import tests.support.paths\n"
        "pytestmark = pytest.mark.slow\n"
        "def helper(): ...\n"
        "def test_b(): ...\n"
    )
    (tmp_path / "tests" / "integration" / "helpers.py").write_text("def not_a_test(): ...\n")
    assert cross_imports(tmp_path, "tests") == [
        "tests/integration/test_a.py:3: tests.integration.test_b",
        "tests/integration/test_a.py:6: tests.conftest",
    ]
    assert unmarked_modules(tmp_path, "tests/integration") == ["tests/integration/test_b.py"]
