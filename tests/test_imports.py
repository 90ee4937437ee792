"""Every module of the package imports on its own, in a fresh interpreter: no import circle that only
works when some other module happened to be imported first; and no module imports a higher layer."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "corewarding"

# One interpreter loads the third-party libraries once (torch, transformers, ...: seconds), then forks
# a child per module; a child starts with no module of `corewarding` loaded, so each import is on its own.
PROBE = textwrap.dedent("""
    import importlib, os, pkgutil, sys
    import corewarding
    names = ["corewarding"] + sorted(m.name for m in pkgutil.walk_packages(corewarding.__path__, "corewarding."))
    for loaded in [k for k in sys.modules if k == "corewarding" or k.startswith("corewarding.")]:
        del sys.modules[loaded]
    import numpy, torch, transformers, omegaconf, pandas, pyarrow  # noqa: F401  shared by every child
    for name in names:
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException as error:
                print(f"FAILED {name}: {type(error).__name__}: {error}", flush=True)
                os._exit(1)
            os._exit(0)
        os.waitpid(pid, 0)
    print(f"checked {len(names)} modules", flush=True)
""")


def test_every_module_imports_on_its_own():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert not failures, "\n".join(failures)
    checked = int(done.stdout.split("checked ")[-1].split()[0])
    assert checked >= 40, done.stdout  # the walk found the package, not an empty folder


# The package's layers, lowest first: a module may import its own part of the package and lower
# layers, never a higher one (algos < rewards < data < workers < trainer; the entry points on top).
LAYERS = (
    # export (an entry point) sits low: it needs only the checkpoint layout, not the trainer
    ("batch", "errors", "storage", "logs", "model_zoo", "roles", "hardware", "checkpoint_layout", "export",
     "rollout_engines", "startup"),
    ("algos",),
    ("rewards",),
    ("methods", "data"),
    ("config", "rewrite"),
    ("workers",),
    ("trainer",),
    ("eval", "main", "plan", "experiments"),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _imported_parts(path: Path) -> set[str]:
    """The parts of the package (`corewarding.<part>`) that a file imports, at any depth of its code."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "corewarding" else [f"corewarding.{a.name}" for a in node.names]
        else:
            continue
        parts.update(name.split(".")[1] for name in names if name.startswith("corewarding."))
    return parts


def test_no_module_imports_a_higher_layer():
    """Lower layers never import higher ones: e.g. nothing under workers/ imports trainer/ (the
    file-system plumbing both need is corewarding/storage.py)."""
    files = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]
    unknown = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in files} - RANK.keys()
    assert not unknown, f"give {sorted(unknown)} a layer in LAYERS"
    upward = []
    for path in files:
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for part in sorted(_imported_parts(path)):
            if part in RANK and part != own and RANK[part] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports corewarding.{part}")
    assert not upward, "\n".join(upward)
    assert len(files) >= 40  # the walk found the package
