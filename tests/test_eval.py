"""Evaluation: scoring by hand-made responses with known correctness, the driver with a scripted
engine, and real runs of SmolLM2-135M on 8 questions of each shared benchmark (hf and vllm)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corewarding.eval import EvalError, benchmarks, cli, sampling, scoring
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
    assert scoring.grade_response("Thus \\boxed{\\dfrac12}", "0.5").correct
    assert scoring.grade_response("\\boxed{1} then \\boxed{2}", "2").answer == "2"  # the last box
    missing = scoring.grade_response("no answer", "2")
    assert missing.answer is None and not missing.correct
    empty = scoring.grade_response("\\boxed{}", "2")
    assert empty.answer is None and not empty.correct


def test_score_samples_by_hand() -> None:
    metrics, graded, scores = scoring.score_samples([r for _, r, _ in HAND], [gt for gt, _, _ in HAND])
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
    metrics, graded, _ = scoring.score_samples([r for _, r, _ in HAND], [gt for gt, _, _ in HAND], "hendrycks")
    assert [int(g.correct) for g in graded[0]] == [1, 0, 0, 0]
    assert [int(g.correct) for g in graded[1]] == [1, 0, 0, 0]
    assert metrics["pass@1"] == pytest.approx(0.375) and metrics["maj@4"] == 0.5
    assert cli.build_parser().parse_args(["--model", "m", "--gt_scorer", "hendrycks"]).gt_scorer == "hendrycks"
    assert cli.build_parser().parse_args(["--model", "m"]).gt_scorer == "math_verify"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--model", "m", "--gt_scorer", "exact"])


def test_majority_uses_math_equivalence() -> None:
    # 1/2 written three ways is one class of 3 against two 7s: the majority is right.
    score = scoring.score_question(["\\frac12", "0.5", "7", "1/2", "7"], [True, True, False, True, False], "\\frac{1}{2}")
    assert score.majority_correct and score.majority_ratio == pytest.approx(0.6)
    assert score.n_correct == 3 and score.n_present == 5
    # pass@1 low but majority right; pass@1 nonzero but majority wrong
    low = scoring.aggregate([scoring.score_question(["5", "5", "6", None], [True, True, False, False], "5")])
    assert low["pass@1"] == 0.5 and low["maj@4"] == 1.0 and low["answer_present"] == 0.75
    nobody = scoring.score_question([None, None], [False, False], "5")
    assert nobody.majority_answer is None and not nobody.majority_correct and nobody.majority_ratio == 0.0


def test_aggregate_needs_one_k() -> None:
    scores = [scoring.score_question(["1"], [True], "1"), scoring.score_question(["1", "2"], [True, False], "1")]
    with pytest.raises(ValueError, match=r"different sample counts \[1, 2\]"):
        scoring.aggregate(scores)


def test_k1_metrics() -> None:
    metrics, _, _ = scoring.score_samples([["\\boxed{1}"], ["\\boxed{3}"]], ["1", "2"])
    assert metrics["pass@1"] == metrics["avg@1"] == metrics["maj@1"] == 0.5


def test_resolve_benchmark(tmp_path: Path) -> None:
    from corewarding.data.schema import make_row, write_verl_parquet

    path = write_verl_parquet([make_row("1+1?", "2", 0, "test", "x")], tmp_path / "eval" / "gsm8k.parquet")
    assert benchmarks.resolve_benchmark("gsm8k", tmp_path) == ("gsm8k", path)
    assert benchmarks.resolve_benchmark("GSM8K", tmp_path) == ("gsm8k", path)
    assert benchmarks.resolve_benchmark(str(path), "elsewhere") == ("gsm8k", path)
    with pytest.raises(EvalError, match="preprocess"):
        benchmarks.resolve_benchmark("math500", tmp_path)
    with pytest.raises(EvalError, match="unknown benchmark"):
        benchmarks.resolve_benchmark("mmlu", tmp_path)
    with pytest.raises(EvalError, match="not found"):
        benchmarks.resolve_benchmark(str(tmp_path / "x.parquet"), tmp_path)


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


# ----------------------------------------------------------------------------- lm-evaluation-harness

HARNESS_QUESTIONS = [f"Name a colour, number {i}." for i in range(6)]
CHOICES = ["red", "blue", "green"]
MAX_GEN = 6


def harness_task_folder(folder: Path, targets: list[str]) -> Path:
    """Two tasks of the harness's own YAML kind reading a local JSONL: a generate_until task scored
    by exact match and a multiple-choice task scored by accuracy."""
    folder.mkdir(parents=True)
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": q, "target": t, "choices": CHOICES, "gold": i % 3}) + "\n"
                            for i, (q, t) in enumerate(zip(HARNESS_QUESTIONS, targets))))
    source = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{source}output_type: generate_until\ndoc_to_text: '{{{{question}}}}'\ndoc_to_target: '{{{{target}}}}'\n"
        f"generation_kwargs:\n  until: ['###']\n  max_gen_toks: {MAX_GEN}\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\n{source}output_type: multiple_choice\ndoc_to_text: '{{{{question}}}} Answer:'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


@pytest.mark.slow
def test_lm_eval_matches_a_hand_count(tiny_model_path: Path, tmp_path: Path, monkeypatch) -> None:
    """`--lm_eval` runs the harness (hf backend, offline, chat template) on local task YAMLs; its
    exact match equals a count over the model's own greedy outputs, its accuracy the argmax of
    log-likelihoods computed here with the model."""
    pytest.importorskip("lm_eval")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True) for q in HARNESS_QUESTIONS]
    greedy = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
            out = model.generate(ids, max_new_tokens=MAX_GEN, do_sample=False, pad_token_id=tok.pad_token_id)
            greedy.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("###")[0])
    targets = [g if i % 2 == 0 else "not what it says" for i, g in enumerate(greedy)]  # 3 of 6 match

    def loglikelihood(context: str, continuation: str) -> float:
        # the harness moves the context's trailing whitespace into the continuation and scores the
        # continuation's tokens of the whole string (under a chat template: no delimiter before it)
        stripped = context.rstrip()
        context, continuation = stripped, context[len(stripped):] + continuation
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0, :-1].double(), -1)
        return sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))

    mc_prompts = [tok.apply_chat_template([{"role": "user", "content": f"{q} Answer:"}], tokenize=False, add_generation_prompt=True)
                  for q in HARNESS_QUESTIONS]
    lls = [[loglikelihood(p, c) for c in CHOICES] for p in mc_prompts]
    hand_acc = sum(max(range(3), key=row.__getitem__) == i % 3 for i, row in enumerate(lls)) / len(lls)

    tasks = harness_task_folder(tmp_path / "tasks", targets)
    out = tmp_path / "out"
    summary = cli.main(["--model", str(tiny_model_path), "--benchmarks", "none", "--lm_eval", "tiny_gen,tiny_mc",
                       "--lm_eval_backend", "hf", "--lm_eval_include", str(tasks), "--lm_eval_batch_size", "1",
                       "--output_dir", str(out)])
    samples = [json.loads(line) for line in (out / "lm_eval_samples.jsonl").read_text().splitlines()]
    gen = sorted((s for s in samples if s["task"] == "tiny_gen"), key=lambda s: s["doc_id"])
    mc = sorted((s for s in samples if s["task"] == "tiny_mc"), key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in gen] == greedy  # the harness's responses are the model's greedy outputs
    # float32 forward in the harness against float64 log-softmax here: far below the gaps between choices
    # (the gaps between a question's choices are above 0.05 nats)
    assert [r[0][0] for s in mc for r in s["resps"]] == pytest.approx([ll for row in lls for ll in row], abs=1e-4)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["lm_eval"] == summary["lm_eval"]
    assert summary["lm_eval"]["tiny_gen"]["exact_match,none"] == pytest.approx(0.5)
    assert summary["lm_eval"]["tiny_mc"]["acc,none"] == pytest.approx(hand_acc)
    assert summary["benchmarks"] == {} and summary["lm_eval_settings"]["tasks"] == ["tiny_gen", "tiny_mc"]
    assert json.loads((out / "lm_eval.json").read_text())["results"]["tiny_mc"]["acc,none"] == pytest.approx(hand_acc)

    compare_runs = _load_script("compare_runs")
    table = compare_runs.main(["--runs", f"tiny={out}", "--no_average"]).splitlines()
    assert table[0] == "| Method | tiny_gen (exact_match) | tiny_mc (acc) |"
    assert table[2] == f"| tiny | 50.0 | {100 * hand_acc:.1f} |"


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lm_eval_unknown_task_and_nothing_to_do(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        cli.main(["--model", str(tiny_model_path), "--benchmarks", "none", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--lm_eval_include .*not a folder"):
        cli.main(["--model", str(tiny_model_path), "--benchmarks", "none", "--lm_eval", "x", "--lm_eval_include",
                 str(tmp_path / "nowhere"), "--output_dir", str(tmp_path)])


def test_summary_keeps_the_other_half_of_the_same_model(tmp_path: Path) -> None:
    from corewarding.eval.harness import merged_summary

    path = tmp_path / "summary.json"
    math = {"model_path": "/m", "k": 8, "benchmarks": {"amc": {"avg@8": 0.4}}}
    harness = {"model_path": "/m", "k": 1, "benchmarks": {}, "lm_eval": {"ifeval": {"prompt_level_strict_acc,none": 0.6}},
               "lm_eval_settings": {"tasks": ["ifeval"]}}
    assert merged_summary(math, path, ran_math=True) == math  # nothing there yet
    path.write_text(json.dumps(math))
    both = merged_summary(harness, path, ran_math=False)
    assert both["benchmarks"] == math["benchmarks"] and both["k"] == 8 and both["lm_eval"] == harness["lm_eval"]
    path.write_text(json.dumps(both))
    again = merged_summary({**math, "benchmarks": {"amc": {"avg@8": 0.5}}}, path, ran_math=True)
    assert again["benchmarks"]["amc"]["avg@8"] == 0.5 and again["lm_eval"] == harness["lm_eval"]
    other = {**math, "model_path": "/other"}
    assert merged_summary(other, path, ran_math=True) == other  # another model's summary is replaced whole


def test_compare_runs_shows_the_asked_harness_tasks() -> None:
    compare_runs = _load_script("compare_runs")
    lm_eval = {"ifeval": {"prompt_level_strict_acc,none": 0.5, "prompt_level_strict_acc_stderr,none": 0.02,
                          "inst_level_strict_acc,none": 0.6},
               "mmlu_pro": {"exact_match,custom-extract": 0.25}, "mmlu_pro_law": {"exact_match,custom-extract": 0.1}}
    summary = {"benchmarks": {"math500": {"k": 1, "pass@1": 0.7}}, "lm_eval": lm_eval,
               "lm_eval_settings": {"tasks": ["ifeval", "mmlu_pro"]}}  # mmlu_pro_law: a subtask, no column
    table = compare_runs.markdown_table([(None, "run", summary)]).splitlines()
    assert table[0] == "| Method | MATH500 (pass@1) | IFEval (prompt_level_strict_acc) | MMLU-Pro (exact_match,custom-extract) | Avg |"
    assert table[2] == "| run | 70.0 | 50.0 | 25.0 | 48.3 |"
    metrics = compare_runs.parse_metrics(["ifeval=inst_level_strict_acc,none"])
    assert compare_runs.markdown_table([(None, "run", summary)], ["ifeval"], metrics, average=False).splitlines()[2] == "| run | 60.0 |"
    with pytest.raises(SystemExit, match="unknown metric"):
        compare_runs.parse_metrics(["acc,none"])  # a harness metric names its task
