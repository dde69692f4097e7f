"""docs/reference/configuration.md is generated from the settings model and kept current."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from cdc.config.reference import Key, keys, main, render
from cdc.config.settings import Secret, Settings, read_config
from tests.support.paths import REPO_ROOT

REFERENCE = REPO_ROOT / "docs" / "reference" / "configuration.md"


def _all_keys() -> dict[str, Key]:
    """Every key of the reference, by its full dotted path (``pipelines.*.`` for a pipeline's)."""
    found: dict[str, Key] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if name == "pipelines":
            model = Settings.model_fields["pipelines"].annotation.__args__[1]  # type: ignore[union-attr]
            found.update({f"pipelines.*.{k.path}": k for k in keys(model)})
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update({f"{name}.{k.path}": k for k in keys(annotation)})
    return found


def test_the_reference_is_current() -> None:
    assert REFERENCE.read_text() == render(), (
        "docs/reference/configuration.md is stale: run `make docs`"
        " (python -m cdc.config.reference --write docs/reference/configuration.md)"
    )


def test_the_command_writes_the_reference_and_checks_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "reference" / "configuration.md"
    assert main(["--write", str(target)]) == 0
    assert target.read_text() == render()
    assert main(["--check", str(target)]) == 0
    target.write_text(render().replace("| `port` |", "| `prot` |", 1))
    assert main(["--check", str(target)]) == 1
    assert capsys.readouterr().err == (
        f"{target} is not the current configuration reference: run"
        f" `python -m cdc.config.reference --write {target}` (make docs)\n"
    )
    assert main(["--check", str(tmp_path / "missing.md")]) == 1


def test_every_key_of_every_section_has_a_type_a_default_and_a_description() -> None:
    found = _all_keys()
    for path, key in found.items():
        assert key.description, f"{path}: give the field a docstring"
        assert key.type and key.default, path
    for section in (
        "kafka",
        "registry",
        "lake",
        "checkpoints",
        "spark",
        "metrics",
        "notify",
        "maintenance",
        "dr",
        "gold",
        "warehouse",
        "defaults",
    ):
        assert f"\n## {section}\n" in render(), section
    assert "\n## pipelines.\\<name\\>\n" in render()
    # Nested models are listed key by key.
    assert {
        "defaults.sla.freshness_seconds",
        "pipelines.*.expectations[].range.min",
        "pipelines.*.sequence_by[].kind",
        "pipelines.*.zorder.silver",
    } <= set(found)


def test_every_key_the_shipped_configs_use_is_in_the_reference() -> None:
    documented = _all_keys()
    # Maps whose entries are names of another system's settings (librdkafka, Spark, Hadoop).
    maps = {path for path, key in documented.items() if key.type.startswith("map of")}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}.{key}"
            assert path in documented, path
            if isinstance(value, dict) and path not in maps:
                walk(value, path)
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, dict):
                        walk(item, f"{path}[]")

    for env in ("local", "dev", "prod"):
        raw = read_config(REPO_ROOT / "config" / f"{env}.yaml")
        for section, body in raw.items():
            if section == "pipelines":
                for pipeline in body.values():
                    walk(pipeline, "pipelines.*")
            elif section != "env":
                walk(body, section)


def test_the_reference_renders_types_defaults_constraints_and_secrets() -> None:
    class Example(BaseModel):
        model_config = ConfigDict(use_attribute_docstrings=True)

        mode: Literal["a", "b"] = "a"
        """The mode."""
        size: int = Field(default=128, gt=0, le=1024)
        """How big, in ``bytes``."""
        token: Annotated[str | None, Secret("value")] = None
        """A token; see :func:`cdc.config.settings.resolve_secret`."""
        options: Annotated[dict[str, str], Secret("entries")] = Field(default_factory=dict)
        """Client options | with a pipe."""
        names: Annotated[tuple[str, ...], Field(min_length=1)]
        """At least one name."""

    assert list(keys(Example)) == [
        Key("mode", "string", '`"a"`', "`a`, `b`", "", "The mode."),
        Key("size", "integer", "`128`", "> 0; ≤ 1024", "", "How big, in `bytes`."),
        Key(
            "token",
            "string or null",
            "`null`",
            "",
            "yes",
            "A token; see `cdc.config.settings.resolve_secret`.",
        ),
        Key(
            "options",
            "map of string to string",
            "`{}`",
            "",
            "values",
            "Client options \\| with a pipe.",
        ),
        Key("names", "list of string", "required", "not empty", "", "At least one name."),
    ]


def _resolved_fields() -> set[str]:
    """Names of the settings the code passes to ``resolve_secret`` (directly or per value)."""

    def resolved(node: ast.AST) -> Iterator[ast.expr]:
        for call in ast.walk(node):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id == "resolve_secret"
            ):
                yield call.args[0]

    names: set[str] = set()
    for path in (REPO_ROOT / "src" / "cdc").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for arg in resolved(tree):
            if isinstance(arg, ast.Attribute):  # resolve_secret(self.password)
                names.add(arg.attr)
        # resolve_secret(v) for k, v in self.client.items(): the map is the setting.
        for comp in ast.walk(tree):
            if not isinstance(comp, ast.DictComp | ast.ListComp | ast.SetComp | ast.GeneratorExp):
                continue
            loops = {}
            for gen in comp.generators:
                func = gen.iter.func if isinstance(gen.iter, ast.Call) else None
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute):
                    loops.update(
                        {
                            n.id: func.value.attr
                            for n in ast.walk(gen.target)
                            if isinstance(n, ast.Name)
                        }
                    )
            for arg in resolved(comp):
                if isinstance(arg, ast.Name):
                    assert arg.id in loops, f"{path}: resolve_secret({arg.id}) of what setting?"
                    names.add(loops[arg.id])
    return names


def test_the_settings_marked_secret_are_the_ones_the_code_resolves() -> None:
    marked = {path.rsplit(".", 1)[-1] for path, key in _all_keys().items() if key.secret}
    assert (
        marked
        == _resolved_fields()
        == {
            "client",
            "java_client",
            "url",
            "storage_options",
            "manifest_key",
            "dsn",
            "password",
            "slack_webhook_url",
            "api_key",
        }
    )
