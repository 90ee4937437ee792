"""What this machine's processor can do, read once from /proc/cpuinfo (Linux)."""

from __future__ import annotations

import functools
from pathlib import Path

# x86: AVX512-BF16 (AMD Zen 4+, Intel Cooper Lake, Sapphire Rapids+) or AMX; Arm: the BF16 extension
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first processor's feature flags in /proc/cpuinfo's text (x86 `flags`, Arm `Features`)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def native_bf16_cpu(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU multiplies bfloat16 matrices natively (then oneDNN's bf16 GEMM is ~2.3x its
    float32 one); False where /proc/cpuinfo is absent (not Linux) or says nothing of it."""
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        return False
    return bool(cpu_flags(text) & NATIVE_BF16_FLAGS)
