"""The configuration reference, generated from the settings model (:mod:`cdc.config.settings`).

``python -m cdc.config.reference`` prints it; ``--write PATH`` writes it
(``docs/reference/configuration.md``, what ``make docs`` does) and ``--check PATH`` exits 1
when the file differs from what the model gives. Every key of every section is listed with
its type, default, allowed values, whether it may be a secret reference
(:class:`~cdc.config.settings.Secret`) and its description (the field's docstring).
"""

from __future__ import annotations

import argparse
import enum
import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from cdc.config.settings import Secret, Settings

__all__ = ["Key", "keys", "main", "render"]

_TITLE = "Configuration reference"


@dataclass(frozen=True)
class Key:
    """One setting as the reference lists it."""

    path: str
    """Dotted, from its section: ``client``, ``sla.freshness_seconds``, ``expectations[].name``."""
    type: str
    default: str
    allowed: str
    secret: str
    """``yes``, ``values`` (each value of the map may be one) or empty."""
    description: str


def _arms(annotation: Any) -> list[Any]:
    """The members of a union (``X | None`` gives ``[X, None]``); a lone type is one arm."""
    if get_origin(annotation) in (Union, types.UnionType):
        return list(get_args(annotation))
    return [annotation]


def _strip(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def _marker(annotation: Any) -> Secret | None:
    if get_origin(annotation) is not Annotated:
        return None
    return next((m for m in get_args(annotation)[1:] if isinstance(m, Secret)), None)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """Settings models inside ``annotation`` (an arm of a union, a list's items)."""
    found: list[type[BaseModel]] = []
    for arm in _arms(_strip(annotation)):
        arm = _strip(arm)
        if isinstance(arm, type) and issubclass(arm, BaseModel):
            found.append(arm)
        elif get_origin(arm) in (list, tuple):
            for item in get_args(arm):
                if item is not Ellipsis:
                    found.extend(_models(item))
    return found


def _type_name(annotation: Any) -> str:
    annotation = _strip(annotation)
    arms = _arms(annotation)
    if len(arms) > 1:
        names = [_type_name(arm) for arm in arms if arm is not type(None)]
        text = " or ".join(dict.fromkeys(names))
        return f"{text} or null" if type(None) in arms else text
    origin = get_origin(annotation)
    if origin is Literal:
        return "string"
    if origin is dict:
        _, value = get_args(annotation)
        return f"map of string to {_type_name(value)}"
    if origin in (list, tuple):
        item = " or ".join(_type_name(a) for a in get_args(annotation) if a is not Ellipsis)
        return f"list of ({item})" if " or " in item else f"list of {item}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return {
        str: "string",
        int: "integer",
        float: "number",
        Decimal: "number",
        bool: "boolean",
        Path: "path",
    }.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _literal(value: Any) -> str:
    """A value as it is written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict | list | tuple) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{_literal(value)}`"


def _allowed(field: FieldInfo, annotation: Any) -> str:
    parts: list[str] = []
    for arm in _arms(_strip(annotation)):
        if get_origin(_strip(arm)) is Literal:
            parts.append(", ".join(f"`{v}`" for v in get_args(_strip(arm))))
    bounds = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    for meta in field.metadata:
        for attr, sign in bounds.items():
            if getattr(meta, attr, None) is not None:
                parts.append(f"{sign} {_literal(getattr(meta, attr))}")
        if getattr(meta, "min_length", None):
            least = meta.min_length  # type: ignore[attr-defined]
            parts.append("not empty" if least == 1 else f"at least {least} long")
        if getattr(meta, "pattern", None):
            parts.append(f"matches `{meta.pattern}`")  # type: ignore[attr-defined]
    return "; ".join(parts)


def _secret(annotation: Any) -> str:
    """``yes`` (the value may be a secret reference), ``values`` (each value of the map may),
    or empty (see :class:`cdc.config.settings.Secret`)."""
    marker = _marker(annotation)
    if marker is None:
        return ""
    return "values" if marker.carries == "entries" else "yes"


def _prose(text: str | None) -> str:
    """A docstring as one Markdown line (reST roles and double backquotes made Markdown)."""
    if not text:
        return ""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    return " ".join(text.split()).replace("|", "\\|")


def keys(model: type[BaseModel], prefix: str = "") -> Iterator[Key]:
    """Every key of ``model``, nested models' keys after their own (dotted paths).

    Args:
        model: a settings model, e.g. :class:`~cdc.config.settings.KafkaSettings`.
        prefix: put before each path (``sla.``, ``expectations[].``).

    Yields:
        One :class:`Key` per setting.
    """
    # The annotations as written (pydantic moves a top-level Annotated's metadata off
    # ``field.annotation``, and leaves a forward reference unresolved there until it rebuilds).
    hints = get_type_hints(model, include_extras=True)
    for name, field in model.model_fields.items():
        annotation = hints[name]
        nested = _models(annotation)
        yield Key(
            path=prefix + name,
            type=_type_name(annotation),
            default=_default(field),
            allowed=_allowed(field, annotation),
            secret=_secret(annotation),
            description=_prose(field.description),
        )
        listed = any(get_origin(_strip(a)) in (list, tuple) for a in _arms(_strip(annotation)))
        for sub in nested:
            yield from keys(sub, f"{prefix}{name}{'[]' if listed else ''}.")


def _table(rows: Sequence[Key]) -> list[str]:
    lines = [
        "| key | type | default | allowed values | secret reference | description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in rows:
        cells = (f"`{key.path}`", key.type, key.default, key.allowed, key.secret, key.description)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render() -> str:
    """The whole reference as Markdown."""
    # The sections: the top-level keys that are models (not ``env``, not ``pipelines``).
    sections = {
        name: field
        for name, field in Settings.model_fields.items()
        if get_origin(field.annotation) is not dict and _models(field.annotation)
    }
    _, pipeline = get_args(Settings.model_fields["pipelines"].annotation)
    lines = [
        f"# {_TITLE}",
        "",
        "<!-- Generated from the settings model (src/cdc/config/settings.py) by"
        " `python -m cdc.config.reference --write docs/reference/configuration.md`"
        " (`make docs`); tests/unit/test_config_reference.py fails while it is stale."
        " Do not edit by hand. -->",
        "",
        _prose(Settings.__doc__).rstrip(".") + ": `config/<env>.yaml`, one file per environment"
        " (`local`, `dev`, `prod`), read by every `cdc` command with `--env`.",
        "",
        "- Precedence, lowest first: the files the environment's file includes (`include`),"
        " the file, `CDC_<SECTION>_<KEY>` environment variables"
        " (a section's own keys, e.g. `CDC_KAFKA_BOOTSTRAP_SERVERS`), then"
        " `--set dotted.key=value` (values parsed as YAML; in a map of dotted names such as"
        " `kafka.client`, the rest of the key is one name: `--set"
        " kafka.client.sasl.password=env:KAFKA_PASSWORD`).",
        "- Every section rejects an unknown key and lists the valid ones; the whole"
        " configuration is validated when a command starts.",
        "- A key marked *secret reference* takes `env:NAME`, `file:/path` or"
        " `aws-sm:secret-id#key` instead of the value (*values*: each value of the map may);"
        " the reference is resolved only when a client is built, and neither it nor the"
        " secret ever appears in logs, errors or `repr`.",
        "- Relative paths are taken from the config folder's parent (the project, or the"
        " image's `/opt/cdc`).",
        "",
        "## Top level",
        "",
        "| key | what |",
        "| --- | --- |",
        "| `env` | the environment's name; set from `--env` when the file leaves it out |",
        "| `include` | files of the config folder this file extends, a name or a list"
        " (`pipelines.yaml`: the pipelines every environment shares); a mapping of this file"
        " merges into theirs key by key, any other value replaces; read only in an"
        " environment's file |",
    ]
    for name, field in sections.items():
        (model,) = _models(field.annotation)
        need = "required" if field.is_required() else "optional"
        lines.append(f"| [`{name}`](#{name}) | {need}: {_prose(model.__doc__).split('. ')[0]} |")
    lines.append("| [`pipelines`](#pipelinesname) | required: one entry per pipeline, by name |")
    for name, field in sections.items():
        (model,) = _models(field.annotation)
        lines += ["", f"## {name}", "", _prose(model.__doc__), "", *_table(list(keys(model)))]
    model = pipeline
    lines += [
        "",
        "## pipelines.\\<name\\>",
        "",
        _prose(model.__doc__).rstrip(".")
        + ". The name (letters, digits, `_`, starting with a letter, at most 64 characters)"
        " names its checkpoint folder and its streaming application.",
        "",
        *_table(list(keys(model))),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cdc.config.reference [--write PATH | --check PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m cdc.config.reference", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", type=Path, metavar="PATH", help="write the reference there")
    mode.add_argument(
        "--check", type=Path, metavar="PATH", help="exit 1 when PATH is not the current reference"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        return 0
    if args.check:
        current = args.check.read_text() if args.check.is_file() else ""
        if current != text:
            print(
                f"{args.check} is not the current configuration reference: run"
                f" `python -m cdc.config.reference --write {args.check}` (make docs)",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
