"""docs/threat-model.md names only tests that exist, and every threat names a test or a gap.

The table in §4 of the threat model is parsed: each row's last cell holds test ids in backticks
(``tests/<file>.py::<test>``) and/or the word ``gap``. A test id exists when the file exists and
defines that test function at module level or in a ``Test*`` class (read with ``ast``, without
importing or collecting anything). Parametrized ids (``[...]``) are checked by their function.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "threat-model.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py::[\w]+(?:\[[^\]`]*\])?)`")
ROW = re.compile(r"^\|\s*(T\d+)\s*\|")


def _rows() -> list[tuple[str, list[str]]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((match.group(1), cells))
    return rows


@cache
def _tests_in(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.update(n.name for n in node.body
                         if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return frozenset(n for n in names if n.startswith("test"))


def _exists(test_id: str) -> bool:
    file_part, _, name = test_id.partition("::")
    name = name.split("[", 1)[0]
    path = ROOT / file_part
    return path.is_file() and name in _tests_in(path)


def test_the_table_is_there_and_ids_are_unique() -> None:
    ids = [row_id for row_id, _ in _rows()]
    assert len(ids) >= 30, "the threat table is missing or was truncated"
    assert len(ids) == len(set(ids)), "duplicate threat ids"


@pytest.mark.parametrize("row", _rows(), ids=lambda row: row[0])
def test_each_threat_names_existing_tests_or_a_gap(row: tuple[str, list[str]]) -> None:
    row_id, cells = row
    assert len(cells) == 7, f"{row_id}: expected 7 cells, got {len(cells)}"
    tests_cell = cells[-1]
    named = TEST_ID.findall(tests_cell)
    assert named or re.search(r"\bgap\b", tests_cell), \
        f"{row_id}: names no test and does not say 'gap'"
    missing = [t for t in named if not _exists(t)]
    assert not missing, f"{row_id}: these tests do not exist: {missing}"


def test_every_test_id_in_the_document_exists() -> None:
    named = TEST_ID.findall(DOC.read_text(encoding="utf-8"))
    missing = sorted({t for t in named if not _exists(t)})
    assert not missing, f"the threat model names tests that do not exist: {missing}"


def test_the_checker_can_fail() -> None:
    assert not _exists("tests/unit/test_threat_model_refs.py::test_no_such_test")
    assert not _exists("tests/no/such_file.py::test_x")
    assert _exists("tests/unit/test_threat_model_refs.py::test_the_checker_can_fail")
