"""docs/guides/connect-your-topics.md, run as written on a table the project does not have.

The guide's fenced blocks, in document order:

* ```` ```<lang> create:<path> ````: a new file of the project, holding the block's text;
* ```` ```<lang> merge:<path> ````: a mapping whose keys are added to an existing JSON or YAML
  file of the project (nested mappings merged key by key);
* ```` ```console ````: ``$ cdc ...`` commands, each followed by the lines it must print, in
  that order among the rest of its output (``<...>`` stands for any text on a line); each
  must exit 0;
* ```` ```python ```` followed by ```` ```text ````: a script run in the project folder and
  exactly what it prints (``<...>`` as above).

Blocks of other kinds (starting the broker, the HTTP registry's settings) are not run. The
project is a copy of the repository's ``config/`` and ``schemas/`` in a temporary folder
(``--env local``: lake and checkpoints under its ``var/``); the broker is the session's,
given as ``CDC_KAFKA_BOOTSTRAP_SERVERS`` where the guide starts ``cdc broker``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cdc.config.settings import merge_mappings
from tests.support.paths import REGISTRY_PATH, REPO_ROOT

pytestmark = pytest.mark.integration

GUIDE = REPO_ROOT / "docs" / "guides" / "connect-your-topics.md"
_FENCE = re.compile(r"^```(\S+)(?: (\S+))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_ANY = re.compile(r"<[^<>\n]+>")


@dataclass(frozen=True)
class Block:
    """One fenced block of the guide: its language, its action (``create:<path>``...), text."""

    lang: str
    action: str
    text: str

    @property
    def path(self) -> str:
        return self.action.split(":", 1)[1]


def blocks() -> list[Block]:
    found = _FENCE.findall(GUIDE.read_text())
    return [Block(lang, action or "", text) for lang, action, text in found]


def apply_files(project: Path, found: list[Block]) -> None:
    """The guide's ``create:`` and ``merge:`` blocks, applied to ``project``."""
    for block in found:
        target = project / block.path if ":" in block.action else None
        if block.action.startswith("create:"):
            assert target is not None and not target.exists(), f"{block.path} exists already"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
        elif block.action.startswith("merge:"):
            assert target is not None and target.is_file(), f"{block.path} is not a file"
            if block.lang == "json":
                data = merge_mappings(json.loads(target.read_text()), json.loads(block.text))
                target.write_text(json.dumps(data, indent=2) + "\n")
            else:
                added = yaml.safe_load(block.text)
                data = merge_mappings(yaml.safe_load(target.read_text()), added)
                target.write_text(yaml.safe_dump(data, sort_keys=False))


def _pattern(expected: str) -> re.Pattern[str]:
    parts = _ANY.split(expected)
    return re.compile(".+?".join(re.escape(part) for part in parts) + r"\Z")


def assert_prints(output: str, expected: list[str], what: str) -> None:
    """Each expected line matches a line of ``output``, in order (other lines may come between)."""
    lines = output.splitlines()
    at = 0
    for line in expected:
        pattern = _pattern(line)
        while at < len(lines) and not pattern.match(lines[at]):
            at += 1
        assert at < len(lines), f"{what}: no line {line!r} (in order) in:\n{output}"
        at += 1


def console_steps(block: Block) -> list[tuple[str, list[str]]]:
    """``(command, expected lines)`` of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.strip():
            assert steps, f"output before any command in {block.text!r}"
            steps[-1][1].append(line)
    return steps


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A project folder: the repository's config and schemas, and nothing else."""
    root = tmp_path / "project"
    for folder in ("config", "schemas"):
        shutil.copytree(REPO_ROOT / folder, root / folder)
    return root


def _environ(bootstrap: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    return {**env, "CDC_KAFKA_BOOTSTRAP_SERVERS": bootstrap}


def test_the_guide_adds_files_the_project_does_not_have_and_ids_no_subject_uses(
    project: Path,
) -> None:
    found = blocks()
    actions = [b.action.split(":")[0] for b in found if ":" in b.action]
    assert actions.count("create") == 3 and actions.count("merge") == 3
    index = json.loads((REGISTRY_PATH / "index.json").read_text())
    used = {v["id"] for versions in index["subjects"].values() for v in versions}
    added = json.loads(next(b.text for b in found if b.path.endswith("index.json")))
    new_ids = {v["id"] for versions in added["subjects"].values() for v in versions}
    assert not new_ids & used and not set(added["subjects"]) & set(index["subjects"])
    assert min(new_ids) == max(used) + 1  # "the next ids no subject uses"
    stated = re.search(r"the shipped subjects use 1 to (\d+)", GUIDE.read_text())
    assert stated is not None and int(stated.group(1)) == max(used)
    apply_files(project, found)  # every merge target exists, no create overwrites


@pytest.mark.slow
def test_the_guide_run_as_written_gives_the_outcome_it_states(
    project: Path, fresh_kafka: str
) -> None:
    found = blocks()
    apply_files(project, found)
    env = _environ(fresh_kafka)
    ran: list[str] = []
    for i, block in enumerate(found):
        if block.lang == "console":
            for command, expected in console_steps(block):
                argv = shlex.split(command)
                assert argv[0] == "cdc", command
                done = subprocess.run(
                    [sys.executable, "-m", "cdc.cli", *argv[1:]],
                    cwd=project,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                output = done.stdout + done.stderr
                assert done.returncode == 0, f"$ {command}\n{output}"
                assert_prints(output, expected, f"$ {command}")
                ran.append(" ".join(argv[:2]))
        elif block.lang == "python":
            shown = found[i + 1]
            assert shown.lang == "text", "a python block is followed by what it prints"
            done = subprocess.run(
                [sys.executable, "-c", block.text],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            printed = done.stdout.splitlines()
            wanted = shown.text.splitlines()
            assert len(printed) == len(wanted), done.stdout
            for got, line in zip(printed, wanted, strict=True):
                assert _pattern(line).match(got), f"{got!r} is not {line!r}"
            ran.append("python")
    assert ran == [
        "cdc schemas",
        "cdc produce",
        "cdc run",
        "cdc status",
        "python",
        "cdc verify",
        "python",
    ]
