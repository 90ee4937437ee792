"""Smoke tests of benchmarks/step.py (ours against TRL) and benchmarks/memory.py at tiny sizes: the
tables print, the numbers are sane and the last line of the step benchmark is the ratio."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from corewarding.hardware import auto_compute_dtype

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
    # single=1: the tables, the phases and the ratio are under test; a Ray worker would add its start-up
    summary = bench.main(["--model", str(tiny_model_path), "--variants", "ours:rollout=hf,single=1", "trl", "--steps", "2",
                          "--prompts", "2", "--n", "2", "--max-new-tokens", "6", "--micro-batch", "2",
                          "--memory-every", "0.25"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"speedup_vs_trl={summary['speedup_vs_trl']:.2f}" and summary["speedup_vs_trl"] > 0
    for result in summary["results"]:
        assert len(result["steps"]) == 2 and result["peak_pss_gb"] > 0.1 and 0 < result["sampling"] < 1
        median = result["median"]
        assert median["step"] > 0 and median["gen"] > 0 and median["update"] > 0
        assert sum(median[p] for p in bench.PHASES) == pytest.approx(median["step"], rel=1e-6)
    ours, trl = summary["results"]
    # --dtype auto, resolved once for both sides: the same precision as make demo's on this CPU
    assert ours["dtype"] == trl["dtype"] == auto_compute_dtype("cpu")
    assert ours["median"]["old"] == 0.0  # one optimizer step per batch: no separate old-log-prob pass
    assert trl["median"]["ref"] > 0  # TRL's reference forward (beta > 0)


def test_step_table_compares_each_variant_with_trl_in_its_dtype(capsys):
    bench = load_benchmark("step")

    def row(variant: str, dtype: str, step: float) -> dict:
        return {"variant": variant, "dtype": dtype, "median": {**dict.fromkeys(bench.PHASES, 0.0), "step": step},
                "peak_pss_gb": 1.0, "sampling": 0.05}

    results = [row("ours", "bfloat16", 10.0), row("trl", "bfloat16", 25.0), row("ours:dtype=float32", "float32", 20.0),
               row("trl:dtype=float32", "float32", 50.0), row("trl:preload=0", "float32", 60.0),
               row("ours:dtype=float16", "float16", 9.0)]
    trl_steps = bench.trl_steps_by_dtype(results)
    assert trl_steps == {"bfloat16": 25.0, "float32": 50.0}  # the first TRL variant of each dtype
    bench.print_table(results, trl_steps)
    ratios = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert ratios == ["2.50", "1.00", "2.50", "1.00", "0.83", "-"]


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


def test_scaling_slope_is_the_power_law_exponent():
    bench = load_benchmark("scaling")
    xs = [32.0, 64.0, 128.0, 256.0]
    assert bench.loglog_slope(xs, [3.0 * x**2 for x in xs]) == pytest.approx(2.0, rel=1e-12)
    assert bench.loglog_slope(xs, [5.0 + 0.0 * x for x in xs]) == pytest.approx(0.0, abs=1e-12)
    assert bench.loglog_slope([64.0], [1.0]) is None and bench.loglog_slope([8.0, 8.0], [1.0, 2.0]) is None


def test_scaling_benchmark_sweeps_rollouts_and_tokens(tiny_model_path, capsys, tmp_path):
    bench = load_benchmark("scaling")
    # two runs: the tokens sweep's one point is the rollouts sweep's first (run once, shared)
    sweeps = bench.main(["--model", str(tiny_model_path), "--rollouts", "2", "4", "--tokens", "4",
                         "--fixed-tokens", "4", "--fixed-rollouts", "2", "--n", "2", "--steps", "2",
                         "--micro-batch", "2", "--rollout", "hf", "--single-process", "--memory-every", "0.25",
                         "--json", str(tmp_path / "scaling.json")])
    assert [(p["rollouts"], p["max_tokens"]) for p in sweeps["rollouts"]] == [(2, 4), (4, 4)]
    assert sweeps["tokens"] == [sweeps["rollouts"][0]]
    for point in sweeps["rollouts"]:
        assert point["step"] > 0 and point["update"] > 0 and point["peak_gb"] > 0.1
        assert 0 < point["mean_tokens"] <= point["max_tokens"]
        assert point["rollout_tokens"] > point["mean_tokens"] + 20  # + the one-shot prompt's tokens
        assert point["computed_tokens"] == pytest.approx(point["mean_tokens"] + (point["rollout_tokens"] - point["mean_tokens"]) / 2)
    out = capsys.readouterr().out
    assert out.count("running ") == 2 and out.count("| exponent |") == 1
    assert all(out.count(f"| exponent ({x} tokens) |") == 1 for x in ("response", "rollout", "computed"))
    assert json.loads((tmp_path / "scaling.json").read_text()) == sweeps


def test_attention_benchmark_times_each_case_and_agrees_on_the_log_probs(tiny_model_path, capsys):
    """benchmarks/attention.py on the tiny model: a row per case and length, the exponents, and every
    case's log-probs within float32 rounding of the first's (the layouts and attentions agree)."""
    attention = load_benchmark("attention")
    rows = attention.main(["--model", str(tiny_model_path), "--responses", "8", "16", "--repeats", "1",
                           "--cases", "sdpa:shared_prefix", "sdpa_segments:shared_prefix", "sdpa_segments:packed"])
    assert [(r["case"], r["response"]) for r in rows] == [(c, n) for n in (8, 16) for c in
                                                          ("sdpa:shared_prefix", "sdpa_segments:shared_prefix",
                                                           "sdpa_segments:packed")]
    out = capsys.readouterr().out
    assert out.count("exponent") == 1 and "sdpa_segments:packed" in out.split("exponent")[1]
    assert all(float(line.rsplit(": ", 1)[1]) < 1e-4 for line in out.splitlines() if line.startswith("R="))
