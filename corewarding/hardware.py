"""What this machine can compute with: its processor, read once from /proc/cpuinfo (Linux), and what
torch.compile needs."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import sysconfig
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# x86: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake, Sapphire Rapids+) or AMX; Arm: the BF16 extension
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first processor's feature flags in /proc/cpuinfo's text (x86 `flags`, Arm `Features`)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: str) -> str:
    """The first processor's `model name` in /proc/cpuinfo's text ("unknown" where it names none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def _cpuinfo(path: str) -> str:
    """The text of /proc/cpuinfo; empty where it is absent (not Linux)."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""


@functools.cache
def native_bf16_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU multiplies bfloat16 matrices natively (then oneDNN's bf16 GEMM is ~2.3x its
    float32 one); False where /proc/cpuinfo is absent (not Linux) or says nothing of it."""
    return bool(cpu_flags(_cpuinfo(cpuinfo_path)) & NATIVE_BF16_FLAGS)


def auto_compute_dtype(device: str) -> str:
    """`model.dtype=auto`: bfloat16 on GPUs and on CPUs that multiply it natively, else float32."""
    return "bfloat16" if device == "cuda" or native_bf16_cpu() else "float32"


def describe_machine(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The processor a run computes on, as a run's record keeps it: its model name, the cores this
    process sees and whether it multiplies bfloat16 natively (what `model.dtype=auto` follows)."""
    return {"cpu": cpu_model(_cpuinfo(cpuinfo_path)), "cores": os.cpu_count(),
            "bfloat16": native_bf16_cpu(cpuinfo_path)}


def usable_torch_compile(asked: bool, device: str) -> bool:
    """`actor.use_torch_compile` on this machine: what was asked, off (and said so) where torch.compile
    lacks something. Each worker decides on its own node, whose GPU or compiler the driver may not have."""
    missing = torch_compile_missing(device) if asked else None
    if missing:
        logger.warning("actor_rollout_ref.actor.use_torch_compile=True: %s, so the output head runs uncompiled", missing)
    return asked and missing is None


def torch_compile_missing(device: str) -> str | None:
    """What torch.compile lacks on `device` here (None: nothing): inductor builds C++ against Python's
    headers on a CPU (with the compiler `CXX` names, g++ by default, as torch looks for it) and Triton
    kernels on a GPU."""
    if device == "cuda":
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    compiler = os.environ.get("CXX") or "g++"
    if not shutil.which(compiler):
        return f"no C++ compiler ({compiler}) on PATH"
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return None if headers.exists() else f"no Python headers ({headers}; Debian / Ubuntu: python3-dev)"
