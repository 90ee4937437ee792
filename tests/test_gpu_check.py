"""scripts/gpu_check.py, the prepared check of the GPU path, runs its CUDA-free parts on CPU: a
bf16 single-process run over gloo (3 Co-rewarding-II and 2 Co-rewarding-I steps), the EMA formula,
packed = padded log-probs, a fresh-process resume and the micro-batch memory model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPECTED = [
    "co_rewarding_II: 3 steps, finite losses", "EMA teacher = its formula", "checkpoint round trip in a fresh process",
    "co_reward: 2 steps, finite losses", "packed = padded log-probs (bf16)", "update micro-batch memory vs estimate",
]


def test_gpu_check_passes_on_cpu_in_bf16(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--small", "--work", str(tmp_path),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [c["name"] for c in result["checks"]] == EXPECTED
    assert all(c["ok"] for c in result["checks"])
    assert "| check | result | value | s |" in proc.stdout
