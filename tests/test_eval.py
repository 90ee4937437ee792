"""Evaluation: scoring by hand-made responses with known correctness, the driver with a scripted
engine, and real runs of SmolLM2-135M on 8 questions of each shared benchmark (hf and vllm)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corewarding import eval as ev
from corewarding.workers.rollout.base import RolloutOutput

REPO = Path(__file__).resolve().parents[1]

# Four questions, k = 4, correctness known by hand.
HAND = [
    # ground truth, responses, correct flags
    ("42", ["so \\boxed{42}", "\\boxed{42.0}", "\\boxed{41}", "no box here"], [1, 1, 0, 0]),
    ("\\frac{1}{2}", ["\\boxed{0.5}", "\\boxed{3}", "it is \\boxed{3}.", "\\boxed{}"], [1, 0, 0, 0]),
    ("7", ["\\boxed{8}", "\\boxed{9}", "none", "none"], [0, 0, 0, 0]),
    ("\\sqrt{2}", ["\\boxed{\\sqrt{2}}"] * 4, [1, 1, 1, 1]),
]
# by hand: per-question means 2/4, 1/4, 0, 1 -> pass@1 = 1.75 / 4; majorities 42 (right),
# 3 (wrong), 8 (tie, first seen: wrong), sqrt2 (right) -> maj@4 = 2/4; any correct: 3/4;
# answers present: 3 + 3 + 2 + 4 = 12 of 16.
HAND_METRICS = {"pass@1": 0.4375, "avg@4": 0.4375, "maj@4": 0.5, "pass@4": 0.75, "answer_present": 0.75}


def test_grade_response() -> None:
    assert ev.grade_response("Thus \\boxed{\\dfrac12}", "0.5").correct
    assert ev.grade_response("\\boxed{1} then \\boxed{2}", "2").answer == "2"  # the last box
    missing = ev.grade_response("no answer", "2")
    assert missing.answer is None and not missing.correct
    empty = ev.grade_response("\\boxed{}", "2")
    assert empty.answer is None and not empty.correct


def test_score_samples_by_hand() -> None:
    metrics, graded, scores = ev.score_samples([r for _, r, _ in HAND], [gt for gt, _, _ in HAND])
    for group, (_, _, flags) in zip(graded, HAND):
        assert [int(g.correct) for g in group] == flags
    for key, value in HAND_METRICS.items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["n_questions"] == 4 and metrics["k"] == 4
    assert [s.majority_answer for s in scores] == ["42", "3", "8", "\\sqrt{2}"]
    assert [s.majority_correct for s in scores] == [True, False, False, True]
    assert scores[0].majority_ratio == pytest.approx(0.5)


def test_gt_scorer_hendrycks_is_the_release_string_check() -> None:
    """--gt_scorer hendrycks (the training's reward_model.gt_scorer): MATH's strip_string, under
    which "42.0" is not "42" (math-verify: equal) while its 0.5 -> \\frac{1}{2} rule still holds:
    question 1 scores 1/4 instead of 2/4, so pass@1 = (1/4 + 1/4 + 0 + 1) / 4."""
    metrics, graded, _ = ev.score_samples([r for _, r, _ in HAND], [gt for gt, _, _ in HAND], "hendrycks")
    assert [int(g.correct) for g in graded[0]] == [1, 0, 0, 0]
    assert [int(g.correct) for g in graded[1]] == [1, 0, 0, 0]
    assert metrics["pass@1"] == pytest.approx(0.375) and metrics["maj@4"] == 0.5
    assert ev.build_parser().parse_args(["--model", "m", "--gt_scorer", "hendrycks"]).gt_scorer == "hendrycks"
    assert ev.build_parser().parse_args(["--model", "m"]).gt_scorer == "math_verify"
    with pytest.raises(SystemExit):
        ev.build_parser().parse_args(["--model", "m", "--gt_scorer", "exact"])


def test_majority_uses_math_equivalence() -> None:
    # 1/2 written three ways is one class of 3 against two 7s: the majority is right.
    score = ev.score_question(["\\frac12", "0.5", "7", "1/2", "7"], [True, True, False, True, False], "\\frac{1}{2}")
    assert score.majority_correct and score.majority_ratio == pytest.approx(0.6)
    assert score.n_correct == 3 and score.n_present == 5
    # pass@1 low but majority right; pass@1 nonzero but majority wrong
    low = ev.aggregate([ev.score_question(["5", "5", "6", None], [True, True, False, False], "5")])
    assert low["pass@1"] == 0.5 and low["maj@4"] == 1.0 and low["answer_present"] == 0.75
    nobody = ev.score_question([None, None], [False, False], "5")
    assert nobody.majority_answer is None and not nobody.majority_correct and nobody.majority_ratio == 0.0


def test_aggregate_needs_one_k() -> None:
    scores = [ev.score_question(["1"], [True], "1"), ev.score_question(["1", "2"], [True, False], "1")]
    with pytest.raises(ValueError, match=r"different sample counts \[1, 2\]"):
        ev.aggregate(scores)


def test_k1_metrics() -> None:
    metrics, _, _ = ev.score_samples([["\\boxed{1}"], ["\\boxed{3}"]], ["1", "2"])
    assert metrics["pass@1"] == metrics["avg@1"] == metrics["maj@1"] == 0.5


def test_resolve_benchmark(tmp_path: Path) -> None:
    from corewarding.data.schema import make_row, write_verl_parquet

    path = write_verl_parquet([make_row("1+1?", "2", 0, "test", "x")], tmp_path / "eval" / "gsm8k.parquet")
    assert ev.resolve_benchmark("gsm8k", tmp_path) == ("gsm8k", path)
    assert ev.resolve_benchmark("GSM8K", tmp_path) == ("gsm8k", path)
    assert ev.resolve_benchmark(str(path), "elsewhere") == ("gsm8k", path)
    with pytest.raises(ev.EvalError, match="preprocess"):
        ev.resolve_benchmark("math500", tmp_path)
    with pytest.raises(ev.EvalError, match="unknown benchmark"):
        ev.resolve_benchmark("mmlu", tmp_path)
    with pytest.raises(ev.EvalError, match="not found"):
        ev.resolve_benchmark(str(tmp_path / "x.parquet"), tmp_path)


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

    def fake_make_engine(args, model_path, tok, max_model_len):
        seen["model_path"] = model_path
        return engine

    monkeypatch.setattr(ev, "make_engine", fake_make_engine)
    out = tmp_path / "out"
    summary = ev.main(["--model", str(run), "--benchmarks", str(bench), "--k", "4", "--batch_size", "3",
                       "--backend", "hf", "--output_dir", str(out), "--max_tokens", "16"])
    assert seen["model_path"] == run / "global_step_2" / "actor"
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
N_QUESTIONS = 8
MAX_TOKENS = 16  # the plumbing of six benchmarks on a 2-core CPU, not the model's accuracy


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
    assert set(SHARED_FILES) == set(SHARED_BENCHMARKS) <= set(ev.BENCHMARK_FILES)


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
        summary = ev.main(argv)
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
