"""The CLI documentation keeps up with the Typer app.

Fails when ``docs/cli-reference.md`` differs from what ``scripts/cli_reference.py`` generates
now, and when a command of ``iotrust`` is not mentioned in ``docs/operator-guide.md``. It does
not check the prose of the guide, only that every command is in it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"
REFERENCE = ROOT / "docs" / "cli-reference.md"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference",
                                                  ROOT / "scripts" / "cli_reference.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("cli_reference", module)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current() -> None:
    generated = _generator().render()
    current = REFERENCE.read_text(encoding="utf-8")
    assert current == generated, (
        "docs/cli-reference.md is stale: run .venv/bin/python scripts/cli_reference.py")


def test_the_walk_finds_the_known_commands() -> None:
    names = {c.name for c in _generator().leaf_commands()}
    # A few commands from different modules: the walk reaches nested groups and installed ones.
    for expected in ("iotrust init", "iotrust voucher import", "iotrust devices release",
                     "iotrust ca retire-old", "iotrust policy group add", "iotrust audit suppress"):
        assert expected in names, expected
    assert len(names) > 50


def test_every_command_is_in_the_operator_guide() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    missing = []
    for command in _generator().leaf_commands():
        # `iotrust devices list` must not be satisfied by `iotrust devices listing`.
        pattern = re.escape(command.name) + r"(?![\w-])"
        if not re.search(pattern, guide):
            missing.append(command.name)
    assert not missing, f"docs/operator-guide.md does not mention: {', '.join(missing)}"
