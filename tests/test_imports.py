"""Every module of the package imports on its own, in a fresh interpreter: no import circle that only
works when some other module happened to be imported first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
