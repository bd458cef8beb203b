"""docs/input-checks.md: every test its table names exists, and every row names at least one.

A test id is `tests/<file>.py::<function>` or `tests/<file>.py::<Class>::<method>` (a
parametrised id's `[...]` is ignored); it is resolved by parsing the file, not by importing it."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "input-checks.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)(?:\[[^\]`]*\])?`")


def table_rows(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(input class, [(file, name)]) for each body row of the document's table."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "input":              # the header
            continue
        rows.append((cells[0], TEST_ID.findall(cells[-1])))
    return rows


def defined_tests(path: Path) -> set[str]:
    """'name' for each module-level test function and 'Class::method' for each test method."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{m.name}" for m in node.body
                      if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def test_every_row_names_tests_that_exist():
    rows = table_rows(DOC.read_text(encoding="utf-8"))
    assert len(rows) >= 10, "the table of input classes was not found"
    missing, cache = [], {}
    for name, ids in rows:
        assert ids, f"row {name!r} names no test"
        for file, test in ids:
            path = REPO / file
            if file not in cache:
                cache[file] = defined_tests(path) if path.is_file() else set()
            is_test = test.split("::")[-1].startswith("test")
            if not is_test or test not in cache[file]:
                missing.append(f"{file}::{test}")
    assert not missing, f"docs/input-checks.md names tests that do not exist: {missing}"


def test_the_parser_finds_ids_and_misses(tmp_path):
    text = ("| input | what | where | tests |\n|---|---|---|---|\n"
            "| a | x | y | `tests/test_a.py::test_one[p-1]`, `tests/test_a.py::TestK::test_two` |\n"
            "| b | x | y | none |\n")
    rows = table_rows(text)
    assert rows == [("a", [("tests/test_a.py", "test_one"), ("tests/test_a.py", "TestK::test_two")]), ("b", [])]
    source = tmp_path / "test_a.py"
    source.write_text("def test_one():\n    pass\n\nclass TestK:\n    def test_two(self):\n        pass\n")
    assert defined_tests(source) == {"test_one", "TestK::test_two"}


@pytest.mark.parametrize("status", ["2 for bad input", "1 for a run", "3 only for a bug"])
def test_the_exit_statuses_are_stated(status):
    assert status in DOC.read_text(encoding="utf-8")
