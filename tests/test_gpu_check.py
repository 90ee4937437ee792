"""scripts/gpu_check.py, the prepared check of the GPU path, runs its CUDA-free parts on CPU: a
bf16 single-process run over gloo (3 Co-rewarding-II and 2 Co-rewarding-I steps), the EMA formula,
packed = padded log-probs, a fresh-process resume and the micro-batch memory model."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from corewarding.model_zoo import cache_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
EXPECTED = [
    "co_rewarding_II: 3 steps, finite losses", "EMA teacher = its formula", "checkpoint round trip in a fresh process",
    "co_reward: 2 steps, finite losses", "packed = padded log-probs (bf16)", "update micro-batch memory vs estimate",
    "log-prob micro-batch memory vs estimate",
    "compiled head = eager head (bf16)",
]


def _model_cache() -> Path:
    """Where the check's boxing model is kept between sessions, named by the script's hash: the
    script reuses the model of a --work folder, so its 100-step warm-up (half of this test's time, and
    not one of its checks) runs once per version of the script."""
    digest = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]
    return cache_dir() / f"gpu-check-model-{digest}"


def test_gpu_check_passes_on_cpu_in_bf16(tmp_path):
    out, cached = tmp_path / "gpu_check.json", _model_cache()
    if (cached / "model.safetensors").exists():
        shutil.copytree(cached, tmp_path / "model")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small", "--work", str(tmp_path),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [c["name"] for c in result["checks"]] == EXPECTED
    assert all(c["ok"] for c in result["checks"])
    assert "| check | result | value | s |" in proc.stdout
    if not cached.exists():
        partial = cached.with_name(cached.name + ".tmp")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(tmp_path / "model", partial)
        partial.rename(cached)
