"""Write docs/config.md: every key of the trainer's configuration with its default, what it does
(the comment beside it in corewarding/config/ppo_trainer.yaml) and whether it is honoured or only
accepted for verl compatibility (`ignored(...)` in corewarding/config/schema.py).

    python scripts/config_reference.py            # rewrite docs/config.md
    python scripts/config_reference.py --check    # exit 1 when docs/config.md is out of date (a test runs it)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

YAML = REPO / "corewarding" / "config" / "ppo_trainer.yaml"
OUT = REPO / "docs" / "config.md"
LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)\s*(#\s?(?P<comment>.*))?$")
COMMENT_ONLY = re.compile(r"^ +#\s?(?P<comment>.*)$")

HEADER = """# Configuration reference

Every key the trainer accepts, with its default. The defaults live in one file,
`corewarding/config/ppo_trainer.yaml`; `python -m corewarding.main key=value ...` (and the run
scripts) override them, `+preset=release` selects the authors' release where it differs
([release-differences.md](release-differences.md)). The keys follow verl's names, so the release's
command lines work unchanged; the few that nothing here reads are marked *accepted, ignored* and
warn once when set to another value. `corewarding/config/schema.py` gives each key its type and
checks its range: a misspelled key or a value out of range stops the run before anything starts,
with one line naming the key.

This page is generated from the YAML and the schema: `python scripts/config_reference.py`.
"""


def yaml_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default as written, description) for every leaf key of the YAML, in order."""
    rows: list[list[str]] = []
    stack: list[tuple[int, str]] = []
    for raw in YAML.read_text().splitlines():
        continuation = COMMENT_ONLY.match(raw)
        if continuation and rows:  # a comment line under a key continues its description
            rows[-1][2] = (rows[-1][2] + " " + continuation["comment"].strip()).strip()
            continue
        match = LINE.match(raw)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([name for _, name in stack] + [match["key"]])
        value = match["value"].strip()
        if value == "":
            stack.append((indent, match["key"]))
            continue
        rows.append([dotted, value, (match["comment"] or "").strip()])
    return [(key, value, comment) for key, value, comment in rows]


def render() -> str:
    from corewarding.config.schema import ignored_fields

    ignored = ignored_fields()
    lines = [HEADER]
    section = None
    for key, default, comment in yaml_keys():
        parts = key.split(".")
        top = ".".join(parts[:2]) if parts[0] == "actor_rollout_ref" and len(parts) > 2 else parts[0]
        if top != section:
            section = top
            lines += ["", f"## `{section}`", "", "| key | default | meaning |", "| --- | --- | --- |"]
        meaning = comment.replace("|", "\\|")
        if key in ignored:
            meaning = f"*accepted, ignored*: {ignored[key]}" + (f" ({meaning})" if meaning else "")
        lines.append(f"| `{key}` | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare with docs/config.md")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
