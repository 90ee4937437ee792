"""Eval through lm-evaluation-harness (`--lm_eval`): local task YAMLs against a hand count with the
model, the harness's errors, summaries that keep the math benchmarks beside the harness tasks, and
the harness columns of scripts/compare_runs.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corewarding.eval import cli
from eval_cases import REPO

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
