"""docs/ARCHITECTURE.md names `file.py:function` places: each must exist, so the map cannot rot."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
REFERENCE = re.compile(r"`([\w/]+\.py):([\w.]+)`")


def _defined_names(path: Path) -> set[str]:
    """Top-level functions and classes, and Class.method for their methods."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return names


REFERENCES = sorted(set(REFERENCE.findall(DOC.read_text())))


def test_the_doc_names_places():
    assert len(REFERENCES) > 40


@pytest.mark.parametrize("path, name", REFERENCES, ids=[f"{p}:{n}" for p, n in REFERENCES])
def test_each_named_function_exists(path, name):
    file = ROOT / path
    assert file.is_file(), f"docs/ARCHITECTURE.md names {path}, which does not exist"
    assert name in _defined_names(file), f"docs/ARCHITECTURE.md names {path}:{name}, which is not defined there"


def test_the_table_sections_are_spec_sections():
    spec_sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "SPEC.md").read_text(), re.M))
    table_sections = set(re.findall(r"^\| (\d+) ", DOC.read_text(), re.M))
    assert table_sections and table_sections <= spec_sections
