"""Smoke tests of benchmarks/step.py (ours against TRL) and benchmarks/memory.py at tiny sizes: the
tables print, the numbers are sane and the last line of the step benchmark is the ratio."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_step_benchmark_against_trl(tiny_model_path, capsys):
    pytest.importorskip("trl")
    bench = load_benchmark("step")
    summary = bench.main(["--model", str(tiny_model_path), "--variants", "ours:rollout=hf", "trl", "--steps", "2",
                          "--prompts", "2", "--n", "2", "--max-new-tokens", "6", "--micro-batch", "2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"speedup_vs_trl={summary['speedup_vs_trl']:.2f}" and summary["speedup_vs_trl"] > 0
    for result in summary["results"]:
        assert len(result["steps"]) == 2 and result["peak_pss_gb"] > 0.1
        median = result["median"]
        assert median["step"] > 0 and median["gen"] > 0 and median["update"] > 0
        assert sum(median[p] for p in bench.PHASES) == pytest.approx(median["step"], rel=1e-6)
    ours, trl = summary["results"]
    assert ours["median"]["old"] == 0.0  # one optimizer step per batch: no separate old-log-prob pass
    assert trl["median"]["ref"] > 0  # TRL's reference forward (beta > 0)


def test_memory_benchmark_chunked_head_bounds_the_logits(capsys):
    bench = load_benchmark("memory")
    summary = bench.main(["--lengths", "256", "--rows", "2", "--prompt-length", "64", "--check"])
    check = summary["check"]
    assert check["real_gb"] == pytest.approx(check["fake_gb"], rel=0.02)  # the fake accounting is the real one
    by_layout = {r["layout"]: r for r in summary["results"]}
    assert set(by_layout) == {"padded, full logits", "padded, chunked", "packed, full logits", "packed, chunked"}
    for layout in ("padded", "packed"):
        full, chunked = by_layout[f"{layout}, full logits"]["peak"], by_layout[f"{layout}, chunked"]["peak"]
        assert chunked["Activation"] < full["Activation"]
    assert "FSDP x8" in capsys.readouterr().out
