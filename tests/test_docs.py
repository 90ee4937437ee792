"""The documentation in docs/ stays true: the configuration reference is the YAML's, every key is
in it, and user-facing pages name only paths a user has."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_DOCS = [REPO / "README.md", REPO / "data" / "README.md", REPO / "Co-rewarding-I" / "README.md",
             REPO / "Co-rewarding-II" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_up_to_date():
    reference = load_script("config_reference")
    assert reference.main(["--check"]) == 0, "run: python scripts/config_reference.py"
    keys = [key for key, _, _ in reference.yaml_keys()]
    assert len(keys) == len(set(keys)) > 100
    rows = [line.split(" | ") for line in (REPO / "docs" / "config.md").read_text().splitlines() if line.startswith("| `")]
    assert len(rows) == len(keys) and all(row[2].strip(" |") for row in rows)  # every key says what it does


def test_user_docs_name_no_developer_paths_and_their_links_exist():
    for page in USER_DOCS:
        text = page.read_text()
        assert "../shared" not in text and "SPEC.md" not in text and "DESIGN.md" not in text, page
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", text):
            assert (page.parent / target).exists(), (page, target)
