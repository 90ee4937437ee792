"""The code's shape (docs/architecture.md, "Files, one job each"): no Python file of the project (the
package, its scripts, benchmarks and tests) over 400 lines, no function or method over 60."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("corewarding", "scripts", "benchmarks", "tests")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _files() -> list[Path]:
    files = [p for folder in FOLDERS for p in (REPO / folder).rglob("*.py")] + sorted(REPO.glob("*.py"))
    return sorted(p for p in files if "__pycache__" not in p.parts)


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _files() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, long


def test_no_function_is_over_60_lines():
    long = {}
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = lines
    assert not long, long
    folders = {p.relative_to(REPO).parts[0] for p in _files()}
    assert set(FOLDERS) <= folders and len(_files()) >= 180  # the walk found every folder
