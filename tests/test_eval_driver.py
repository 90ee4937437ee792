"""The eval driver: a scripted engine, the command line, real runs of SmolLM2-135M on 4 questions of
each shared benchmark (hf and vllm), and several engine processes sharing the batches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corewarding.eval import benchmarks, cli, sampling
from corewarding.workers.rollout.base import RolloutOutput
from eval_cases import HAND, HAND_METRICS, REPO


class ScriptedEngine:
    """Returns the hand-made responses in order (prompt-major, k per prompt)."""

    def __init__(self, tokenizer, responses: list[str]) -> None:
        self.tokenizer = tokenizer
        self.queue = list(responses)
        self.calls: list[tuple[int, int]] = []

    def generate(self, prompts, sampling):
        self.calls.append((len(prompts), sampling.n))
        out = []
        for _ in range(len(prompts) * sampling.n):
            ids = self.tokenizer(self.queue.pop(0), add_special_tokens=False)["input_ids"]
            out.append(RolloutOutput(token_ids=ids + [self.tokenizer.eos_token_id], finish_reason="stop"))
        return out


def test_driver_with_scripted_engine(tiny_model_path: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from transformers import AutoTokenizer

    from corewarding.data.schema import make_row, write_verl_parquet

    bench = write_verl_parquet(
        [make_row(f"question {i}", gt, 100 + i, "test", "hand") for i, (gt, _, _) in enumerate(HAND)],
        tmp_path / "hand.parquet",
    )
    # the model given as a run dir of our checkpoint layout
    run = tmp_path / "run"
    shutil.copytree(tiny_model_path, run / "global_step_2" / "actor")
    (run / "latest_checkpointed_iteration.txt").write_text("2")

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    engine = ScriptedEngine(tokenizer, [r for _, responses, _ in HAND for r in responses])
    seen = {}

    def fake_make_engine(settings, model_path, tok, device):
        seen["model_path"], seen["name"] = model_path, settings.name
        return engine

    monkeypatch.setattr(sampling, "make_engine", fake_make_engine)
    out = tmp_path / "out"
    summary = cli.main(["--model", str(run), "--benchmarks", str(bench), "--k", "4", "--batch_size", "3",
                       "--backend", "hf", "--output_dir", str(out), "--max_tokens", "16"])
    assert seen["model_path"] == str(run / "global_step_2" / "actor") and seen["name"] == "hf"
    assert engine.calls == [(3, 4), (1, 4)] and not engine.queue
    metrics = summary["benchmarks"]["hand"]
    for key, value in HAND_METRICS.items():
        assert metrics[key] == pytest.approx(value), key
    assert json.loads((out / "summary.json").read_text())["benchmarks"]["hand"]["maj@4"] == 0.5
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 16
    assert [int(x["correct"]) for x in lines] == [c for _, _, flags in HAND for c in flags]
    first = lines[0]
    assert first["benchmark"] == "hand" and first["index"] == 100 and first["question"] == "question 0"
    assert first["response"] == "so \\boxed{42}" and first["extracted_answer"] == "42" and first["ground_truth"] == "42"
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("hand"))
    assert row.split() == ["hand", "4", "4", "43.75", "43.75", "50.00", "75.00", "75.00"]


def test_cli_help_lists_benchmarks() -> None:
    result = subprocess.run([sys.executable, "-m", "corewarding.eval", "--help"], capture_output=True, text=True, cwd=REPO, check=True)
    for name in ("math500", "gsm8k", "amc", "amc23", "aime24", "math", "math500/test.parquet", "eval/gsm8k.parquet", "math/test.parquet", "--backend"):
        assert name in result.stdout


# ----------------------------------------------------------------------------- real model

SHARED_BENCHMARKS = ("math500", "gsm8k", "amc", "amc23", "aime24", "math")
N_QUESTIONS = 4
MAX_TOKENS = 8  # the plumbing of six benchmarks on a 2-core CPU, not the model's accuracy


@pytest.fixture(scope="module")
def eval_data_dir(shared_data: Path, tmp_path_factory) -> Path:
    """The shared benchmark files preprocessed by the data layer into data/NAME/test.parquet."""
    out = tmp_path_factory.mktemp("data")
    preprocess_shared_benchmarks(shared_data, out)
    return out


# benchmark name -> its test file under ../shared/data
SHARED_FILES = {
    "math500": "eval/math500_test.jsonl",
    "gsm8k": "eval/gsm8k_test.jsonl",
    "amc": "eval/amc_test.parquet",
    "amc23": "eval/amc23_test.jsonl",
    "aime24": "eval/aime24_test.jsonl",
    "math": "math/test.parquet",
}


def test_every_shared_benchmark_is_evaluated(shared_data: Path) -> None:
    """Each test file in ../shared/data is one of the benchmarks evaluated below, and eval knows it by name."""
    shared = {p.relative_to(shared_data).as_posix() for p in shared_data.glob("*/*test*.*")}
    assert shared == set(SHARED_FILES.values())
    assert set(SHARED_FILES) == set(SHARED_BENCHMARKS) <= set(benchmarks.BENCHMARK_FILES)


def preprocess_shared_benchmarks(shared_data: Path, out: Path) -> None:
    """What `python scripts/preprocess.py NAME --local_path ../shared/data/FILE` writes."""
    from corewarding.data.preprocess import preprocess

    for name in SHARED_BENCHMARKS:
        preprocess(name, output_dir=out / name, local_path=shared_data / SHARED_FILES[name], split="test", limit=N_QUESTIONS)
        assert (out / name / "test.parquet").is_file(), name


def _run_real(model: Path, data_dir: Path, out: Path, backend: str, subprocess_cli: bool = False) -> dict:
    argv = [
        "--model", str(model), "--benchmarks", ",".join(SHARED_BENCHMARKS), "--data_dir", str(data_dir),
        "--k", "2", "--max_tokens", str(MAX_TOKENS), "--limit", str(N_QUESTIONS), "--backend", backend,
        "--output_dir", str(out), "--seed", "1",
    ]
    if subprocess_cli:
        # its own process: vLLM supports one engine per process, and other tests may hold one
        result = subprocess.run([sys.executable, "-m", "corewarding.eval", *argv], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "pass@1" in result.stdout and "math500" in result.stdout
        summary = json.loads((out / "summary.json").read_text())
    else:
        summary = cli.main(argv)
    assert set(summary["benchmarks"]) == set(SHARED_BENCHMARKS)
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == len(SHARED_BENCHMARKS) * N_QUESTIONS * 2
    for name, metrics in summary["benchmarks"].items():
        assert metrics["n_questions"] == N_QUESTIONS and metrics["k"] == 2
        assert 0.0 <= metrics["pass@1"] <= metrics["pass@2"] <= 1.0
        assert 0.0 < metrics["mean_response_tokens"] <= MAX_TOKENS
        rows = [x for x in lines if x["benchmark"] == name]
        # the summary is the samples' own grading, re-checked here from the JSONL
        assert metrics["pass@1"] == pytest.approx(sum(x["correct"] for x in rows) / len(rows))
        present = sum(x["extracted_answer"] is not None for x in rows) / len(rows)
        assert metrics["answer_present"] == pytest.approx(present)
        for x in rows:
            assert x["response"] and x["question"] and x["ground_truth"]
            if x["correct"]:
                assert x["extracted_answer"] is not None
    return summary


@pytest.mark.slow
def test_smollm2_hf(smollm2_path: Path, eval_data_dir: Path, tmp_path: Path) -> None:
    _run_real(smollm2_path, eval_data_dir, tmp_path / "hf", "hf")


@pytest.mark.slow
@pytest.mark.vllm
def test_smollm2_vllm_on_exported_folder(smollm2_path: Path, eval_data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from corewarding.export import export_checkpoint

    # vLLM loads what the exporter writes
    exported = export_checkpoint(smollm2_path, tmp_path / "exported")
    summary = _run_real(exported, eval_data_dir, tmp_path / "vllm", "vllm", subprocess_cli=True)
    assert summary["backend"] == "vllm" and summary["model_path"] == str(exported)


# ----------------------------------------------------------------------------- several engines


@pytest.mark.slow
def test_two_engine_processes_equal_one(boxing_model: Path, tmp_path: Path) -> None:
    """--num_gpus 2 on CPU: two engine processes, each with a contiguous share of whole batches,
    give the one-engine run's samples (same seeds per batch) and so its summary."""
    from corewarding.data.schema import make_row, write_verl_parquet

    # 5 questions in batches of 2: process 0 takes questions 0-3, process 1 question 4
    bench = write_verl_parquet([make_row(f"What is {d} + 0?", str(d), 10 + d, "test", "box") for d in (1, 2, 3, 1, 2)],
                               tmp_path / "box.parquet")
    argv = ["--model", str(boxing_model), "--benchmarks", f"{bench}:2", "--backend", "hf", "--batch_size", "2",
            "--max_tokens", "12", "--temperature", "1.0", "--seed", "7"]
    one = cli.main(argv + ["--output_dir", str(tmp_path / "one")])
    two = cli.main(argv + ["--output_dir", str(tmp_path / "two"), "--num_gpus", "2"])
    samples = {name: (tmp_path / name / "samples.jsonl").read_text().splitlines() for name in ("one", "two")}
    assert len(samples["one"]) == 10 and samples["one"] == samples["two"]
    answers = [json.loads(line)["extracted_answer"] for line in samples["one"]]
    assert sum(a is not None for a in answers) >= 5  # the boxing model answers: the comparison is not of empty boxes

    def without_time(summary: dict) -> dict:
        return {name: {k: v for k, v in m.items() if k != "seconds"} for name, m in summary["benchmarks"].items()}

    assert without_time(one) == without_time(two)
    assert one["num_gpus"] == 1 and two["num_gpus"] == 2


def test_contiguous_shares_are_whole_batches() -> None:
    from corewarding.eval.parallel import contiguous_shares

    assert contiguous_shares(5, 2, 2) == [(0, 4), (4, 5)]
    assert contiguous_shares(10, 3, 1) == [(0, 4), (4, 7), (7, 10)]
    assert contiguous_shares(1, 3, 4) == [(0, 1), (1, 1), (1, 1)]  # more engines than batches: some idle
    for n, shares, granule in ((17, 4, 3), (256, 8, 256), (0, 2, 8)):
        bounds = contiguous_shares(n, shares, granule)
        assert bounds[0][0] == 0 and bounds[-1][1] == n and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(start % granule == 0 for start, _ in bounds)


def test_num_gpus_must_be_a_multiple_of_tensor_parallel(tmp_path: Path, tiny_model_path: Path) -> None:
    with pytest.raises(SystemExit, match="--num_gpus 3 must be a positive multiple of --tensor_parallel_size 2"):
        cli.main(["--model", str(tiny_model_path), "--num_gpus", "3", "--tensor_parallel_size", "2", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs --backend vllm"):
        cli.main(["--model", str(tiny_model_path), "--backend", "hf", "--tensor_parallel_size", "2", "--output_dir", str(tmp_path)])
