"""Smoke test of benchmarks/rollout.py: the HF engine on the tiny model, tiny sizes, the table printed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark() -> ModuleType:
    """benchmarks/rollout.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_rollout", REPO / "benchmarks" / "rollout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hf_engine_table(tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    bench = _load_benchmark()
    threads = torch.get_num_threads()
    try:
        results = bench.main([
            "--model", str(tiny_model_path), "--engines", "hf", "--prompts", "2", "--n", "2",
            "--max-tokens", "8", "--push-repeats", "1", "--json", str(tmp_path / "out.json"),
        ])
    finally:
        torch.set_num_threads(threads)  # main sets --threads (1) for the process
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("engine"))
    assert lines[header].split() == ["engine", "start", "s", "tokens", "gen", "s", "tokens/s", "stopped", "push", "s"]
    assert set(lines[header + 1]) == {"-"}
    cells = lines[header + 2].split()
    assert cells[0] == "hf" and len(cells) == 7
    start_s, tokens, gen_s, tokens_per_s, stopped, push_s = cells[1:]
    assert int(tokens) == results["engines"]["hf"]["tokens"] and 4 <= int(tokens) <= 2 * 2 * 8
    for value in (start_s, gen_s, tokens_per_s, push_s):
        assert float(value) >= 0.0
    assert float(tokens_per_s) > 0.0 and 0 <= float(stopped.rstrip("%")) <= 100
    assert json.loads((tmp_path / "out.json").read_text())["engines"]["hf"]["tokens"] == int(tokens)
    # the push is what the trainer pushes: every parameter once, full fp32 tensors
    state = bench.trainer_push_state(tiny_model_path, "cpu")
    assert "lm_head.weight" not in state and all(t.dtype == torch.float32 for t in state.values())
    assert results["push_mb"] == pytest.approx(sum(t.numel() * 4 for t in state.values()) / 2**20)
