"""rewrite_questions.py and corewarding.rewrite: parsing, retries, resume after a crash, one real run with SmolLM2 (hf) and
one with the default vllm backend (vllm-cpu, tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import rewrite_questions  # noqa: E402

import corewarding.rewrite as rq  # noqa: E402
from corewarding.rewrite import INSTRUCTION, build_request, parse_rewrite, rewrite_dataset  # noqa: E402

from corewarding.data import load_pairs, make_row, read_verl_parquet, write_verl_parquet  # noqa: E402

GOOD = "### RESULT_START\nORIGINAL:\n{q}\nREWRITE:\n{r}\n### RESULT_END"


def test_instruction_is_verbatim():
    assert INSTRUCTION.startswith("You are given a math problem. Please rewrite it using different wording and a different real-world scenario")
    for line in [
        "1. Do not change the math logic or the final answer.",
        "2. Use different words and a new context to make it look like a different problem.",
        "3. Avoid copying phrases or sentence structures from the original.",
        "4. Make sure the rewritten question is natural, clear, and solvable.",
        "5. Output ONLY between the following markers, and strictly in this format (no extra explanation):",
        "### RESULT_START\nORIGINAL:\n<original question>\nREWRITE:\n<rewritten question>\n### RESULT_END",
    ]:
        assert line in INSTRUCTION
    assert build_request("  What is 2+2? ").endswith("### RESULT_END\n\nWhat is 2+2?")


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.format(q="What is 2+2?", r="Ann has 2 cats and 2 dogs. How many pets?"), "Ann has 2 cats and 2 dogs. How many pets?"),
        ("Sure! Here it is:\n" + GOOD.format(q="Q", r="New text.") + "\nHope this helps!", "New text."),
        ("ORIGINAL:\nQ\nREWRITE:\nNo end marker here.", None),  # unknown finish reason: the end marker is required
        ("### RESULT_START\nREWRITE:\nNo original echo.\n### RESULT_END", "No original echo."),
        ("<think>Maybe REWRITE: wrong one</think>\n" + GOOD.format(q="Q", r="Right one."), "Right one."),
        ("I reason here... REWRITE: draft</think>" + GOOD.format(q="Q", r="After close."), "After close."),
        ("**REWRITE:** Bold label.\n### RESULT_END", "Bold label."),
        ("REWRITE:\n```\nFenced.\n```\n### RESULT_END", "Fenced."),
        ("REWRITE:\nMulti\nline\n\nrewrite.\n### RESULT_END trailing", "Multi\nline\n\nrewrite."),
        (GOOD.format(q="Q", r="Uses $\\frac{1}{2}$ and ### inside? no") , "Uses $\\frac{1}{2}$ and ### inside? no"),
        ("The rewritten question: A train leaves...", None),  # no REWRITE: label
        ("### RESULT_START\nORIGINAL:\nQ\nREWRITE:\n\n### RESULT_END", None),  # empty
        ("### RESULT_START\nORIGINAL:\nQ\nREWRITE:\n<rewritten question>\n### RESULT_END", None),  # template echo
        ("<think>REWRITE: unfinished reasoning that ran out of tok", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_rewrite(text, expected):
    assert parse_rewrite(text) == expected


@pytest.mark.parametrize(
    "text, finish, expected, reason",
    [
        (GOOD.format(q="Q", r="I cannot provide a rewrite: the problem is incomplete."), "stop", None, "refusal"),
        ("REWRITE: I'm sorry, but I can't rewrite this.\n### RESULT_END", "stop", None, "refusal"),
        (GOOD.format(q="Q", r="Sure! Here is the rewritten question."), "stop", None, "chatter"),
        (GOOD.format(q="Q", r="[rewritten question]"), "stop", None, "placeholder"),
        (GOOD.format(q="Q", r="<Your rewritten question here>"), "stop", None, "placeholder"),
        (GOOD.format(q="Q", r="..."), "stop", None, "placeholder"),
        # no end marker: the reply must have stopped by itself, and a solution after it is cut off
        ("ORIGINAL:\nQ\nREWRITE:\nA farmer has 3 cows. How many legs?\n\nSolution: each cow has 4 legs, so 12.",
         "stop", "A farmer has 3 cows. How many legs?", None),
        ("ORIGINAL:\nQ\nREWRITE:\nA farmer has 3 cows.\n**Answer:** 12", "stop", "A farmer has 3 cows.", None),
        ("ORIGINAL:\nQ\nREWRITE:\nA farmer has 3 cows.\nTo solve this, multiply", "stop", "A farmer has 3 cows.", None),
        ("### RESULT_START\nORIGINAL:\nQ\nREWRITE:\nA question cut in the midd", "length", None, "cut_at_token_limit"),
        ("### RESULT_START\nORIGINAL:\nQ\nREWRITE:\nA question without its end", None, None, "no_end_marker"),
        # the end marker makes a length stop harmless
        (GOOD.format(q="Q", r="Complete.") + "\nand then the model rambled on until", "length", "Complete.", None),
        # variants of the label
        ("**REWRITE**: Bold outside.\n### RESULT_END", None, "Bold outside.", None),
        ("REWRITE\uff1aFull-width colon.\n### RESULT_END", None, "Full-width colon.", None),
        ("__REWRITE:__ Underlined.\n### RESULT_END", None, "Underlined.", None),
        # only between the markers; the first label
        (GOOD.format(q="Q", r="Inside.") + "\nNote: REWRITE: a later thought", "stop", "Inside.", None),
        ("### RESULT_START\nREWRITE:\nFirst.\nREWRITE:\nSecond.\n### RESULT_END", "stop", "First.", None),
        ("Maybe REWRITE: outside\n" + GOOD.format(q="Q", r="Inside."), "stop", "Inside.", None),
        ("no label at all", "stop", None, "no_rewrite_label"),
        ("I cannot provide a rewrite: the problem is incomplete.", "stop", None, "no_rewrite_label"),
        (GOOD.format(q="Q", r="Tom wants a rewrite: of his essay. How many pages?"), "stop",
         "Tom wants a rewrite: of his essay. How many pages?", None),
        ("<think>REWRITE: unfinished", "length", None, "unfinished_think"),
    ],
)
def test_read_rewrite(text, finish, expected, reason):
    assert rq.read_rewrite(text, finish_reason=finish) == (expected, reason)


def test_parse_rewrite_rejects_a_copy_of_the_original():
    q = "What is 2 + 2?"
    assert parse_rewrite(GOOD.format(q=q, r="What  is 2 + 2?"), original=q) is None
    assert parse_rewrite(GOOD.format(q=q, r="Two plus two?"), original=q) == "Two plus two?"


class FakeEngine:
    """Replies from a script: `bad` maps a question to how many bad replies it gets first;
    `crash_on_call` raises on that call number (a simulated crash)."""

    def __init__(self, bad=None, crash_on_call=None):
        self.bad = dict(bad or {})
        self.crash_on_call = crash_on_call
        self.calls: list[list[str]] = []

    def generate(self, prompts):
        self.calls.append(prompts)
        if self.crash_on_call is not None and len(self.calls) == self.crash_on_call:
            raise RuntimeError("simulated crash")
        replies = []
        for p in prompts:
            question = p.split("### RESULT_END\n", 1)[1].strip()
            if self.bad.get(question, 0) > 0:
                self.bad[question] -= 1
                replies.append("I cannot follow formats.")
            else:
                replies.append(GOOD.format(q=question, r=f"Reworded: {question}"))
        return replies


def _input(tmp_path, n=7, shuffle_index=True):
    order = [3, 0, 6, 1, 5, 2, 4][:n] if shuffle_index else list(range(n))
    rows = [make_row(f"Question number {k}?", str(k), index=k, split="train", data_source="t") for k in order]
    return write_verl_parquet(rows, tmp_path / "in.parquet")


def _outs(tmp_path):
    return tmp_path / "out.jsonl", tmp_path / "rewrite.parquet", tmp_path / "original.parquet"


def test_retries_and_failures_left_out(tmp_path):
    src = _input(tmp_path)
    jsonl, rep, orig = _outs(tmp_path)
    engine = FakeEngine(bad={"Question number 0?": 1, "Question number 5?": 5})
    stats = rewrite_dataset(src, jsonl, rep, orig, engine, batch_size=3, max_retries=2, progress=False)
    assert stats == {"total": 7, "resumed": 0, "generated": 7, "rewritten": 6, "failed": 1, "attempts": 7 + 1 + 2,
                     "bad_lines": 0, "rejected": {"no_rewrite_label": 1 + 3}}
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {r["index"]: r["status"] for r in records}[5] == "failed"
    assert {r["index"]: r["attempts"] for r in records}[0] == 2
    original, rephrased = read_verl_parquet(orig), read_verl_parquet(rep)
    assert original["index"].tolist() == rephrased["index"].tolist() == [3, 0, 6, 1, 2, 4]  # input order, 5 left out
    assert all(r[-1]["content"] == "Reworded: " + o[-1]["content"] for o, r in zip(original["prompt"], rephrased["prompt"]))
    assert rephrased["prompt"][0][0]["role"] == "system"  # only the user message is replaced
    assert len(load_pairs(orig, rep)) == 6


def test_resume_after_crash(tmp_path):
    src = _input(tmp_path)
    jsonl, rep, orig = _outs(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rewrite_dataset(src, jsonl, rep, orig, FakeEngine(crash_on_call=2), batch_size=3, progress=False)
    assert [json.loads(x)["index"] for x in jsonl.read_text().splitlines()] == [3, 0, 6]  # first batch kept
    assert not rep.exists()
    with jsonl.open("a") as fh:  # a crash in the middle of writing a record
        fh.write('{"index": 1, "orig')
    engine = FakeEngine()
    stats = rewrite_dataset(src, jsonl, rep, orig, engine, batch_size=3, progress=False)
    assert stats["resumed"] == 3 and stats["generated"] == 4 and stats["rewritten"] == 7
    asked = [p.split("### RESULT_END\n", 1)[1].strip() for call in engine.calls for p in call]
    assert asked == [f"Question number {k}?" for k in (1, 5, 2, 4)]
    assert [json.loads(x)["index"] for x in jsonl.read_text().splitlines()] == [3, 0, 6, 1, 5, 2, 4]
    assert read_verl_parquet(rep)["index"].tolist() == [3, 0, 6, 1, 5, 2, 4]
    # a third run has nothing to do
    again = FakeEngine()
    assert rewrite_dataset(src, jsonl, rep, orig, again, progress=False)["generated"] == 0 and not again.calls


def test_failed_are_skipped_on_rerun_unless_retry_failed(tmp_path):
    src = _input(tmp_path, n=3)
    jsonl, rep, orig = _outs(tmp_path)
    rewrite_dataset(src, jsonl, rep, orig, FakeEngine(bad={"Question number 0?": 9}), max_retries=0, progress=False)
    assert rewrite_dataset(src, jsonl, rep, orig, FakeEngine(), progress=False)["failed"] == 1
    stats = rewrite_dataset(src, jsonl, rep, orig, FakeEngine(), retry_failed=True, progress=False)
    assert stats["generated"] == 1 and stats["failed"] == 0 and stats["rewritten"] == 3


def test_jsonl_of_another_input_is_refused(tmp_path):
    src = _input(tmp_path, n=3)
    jsonl, rep, orig = _outs(tmp_path)
    jsonl.write_text(json.dumps({"index": 0, "original": "something else", "rewritten": "x", "status": "ok"}) + "\n")
    with pytest.raises(ValueError, match="belongs to another input"):
        rewrite_dataset(src, jsonl, rep, orig, FakeEngine(), progress=False)


def test_string_question_column_and_limit(tmp_path):
    src = tmp_path / "plain.parquet"
    pd.DataFrame({"problem": ["A?", "B?", "C?"], "answer": ["1", "2", "3"]}).to_parquet(src)
    jsonl, rep, orig = _outs(tmp_path)
    stats = rewrite_dataset(src, jsonl, rep, orig, FakeEngine(), question_column="problem", limit=2, progress=False)
    assert stats["total"] == 2
    assert pd.read_parquet(rep)["problem"].tolist() == ["Reworded: A?", "Reworded: B?"]
    assert pd.read_parquet(orig)["problem"].tolist() == ["A?", "B?"]


@pytest.fixture
def keep_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_real_run_with_smollm2_hf(smollm2_path, tmp_path, keep_torch_threads):
    src = _input(tmp_path, n=3, shuffle_index=False)
    jsonl, rep, orig = _outs(tmp_path)
    code = rewrite_questions.main([
        "--input_path", str(src), "--output_jsonl", str(jsonl), "--output_parquet", str(rep),
        "--output_original_parquet", str(orig), "--model_path", str(smollm2_path), "--backend", "hf",
        "--batch_size", "3", "--max_retries", "1", "--max_new_tokens", "24", "--temperature", "0", "--num_threads", "1",
        "--no_progress",
    ])
    assert code == 0
    records = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    ok = [r["index"] for r in records if r["status"] == "ok"]
    assert all(r["rewritten"] for r in records if r["status"] == "ok")
    assert all(r["rewritten"] is None and r["attempts"] == 2 for r in records if r["status"] == "failed")
    # whatever the weak model wrote, the two parquets hold exactly the successful rows, same order
    assert pd.read_parquet(orig)["extra_info"].map(lambda e: e["index"]).tolist() == ok
    assert pd.read_parquet(rep)["extra_info"].map(lambda e: e["index"]).tolist() == ok


def test_hf_engine_says_why_it_stopped(tiny_model_path, keep_torch_threads):
    """A reply cut at max_new_tokens is "length"; one that ended on an end-of-sequence token "stop"."""
    engine = rq.HFEngine(rq.Generation(str(tiny_model_path), max_new_tokens=3, temperature=0), num_threads=1)
    cut = engine.generate(["What is 2+2?"])
    assert [r.finish_reason for r in cut] == ["length"]
    engine.model.generation_config.eos_token_id = list(range(engine.model.config.vocab_size))  # any token ends it
    assert [r.finish_reason for r in engine.generate(["What is 2+2?"])] == ["stop"]


@pytest.mark.vllm
def test_real_run_with_vllm_backend(tiny_model_path, tmp_path):
    """The default backend end to end (vllm-cpu here, in its own process as a user runs it): the
    tiny random model cannot follow the instruction, so every reply fails to parse and is retried;
    the plumbing (chat template, sampling, retries, outputs) is what is checked."""
    pytest.importorskip("vllm")
    src = _input(tmp_path, n=2, shuffle_index=False)
    jsonl, rep, orig = _outs(tmp_path)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([
        sys.executable, str(REPO / "rewrite_questions.py"), "--input_path", str(src), "--output_jsonl", str(jsonl),
        "--output_parquet", str(rep), "--output_original_parquet", str(orig), "--model_path", str(tiny_model_path),
        "--batch_size", "2", "--max_retries", "1", "--max_new_tokens", "8", "--dtype", "float32",
        "--max_model_len", "1024", "--enforce_eager", "--no_progress",
    ], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1]
    assert all(r["status"] == "failed" and r["attempts"] == 2 and r["rewritten"] is None for r in records)
    assert len(pd.read_parquet(rep)) == len(pd.read_parquet(orig)) == 0


class ScriptedEngine:
    """The same fixed reply (text, finish reason) for every prompt."""

    def __init__(self, reply):
        self.reply = reply
        self.calls = 0

    def generate(self, prompts):
        self.calls += 1
        return [self.reply] * len(prompts)


def test_rejections_are_counted_by_reason(tmp_path):
    src = _input(tmp_path, n=2)
    jsonl, rep, orig = _outs(tmp_path)
    cut = rq.Reply("### RESULT_START\nORIGINAL:\nQ\nREWRITE:\nA question cut", "length")
    stats = rewrite_dataset(src, jsonl, rep, orig, ScriptedEngine(cut), max_retries=1, progress=False)
    assert stats["failed"] == 2 and stats["rejected"] == {"cut_at_token_limit": 4}
    assert {json.loads(x)["last_reason"] for x in jsonl.read_text().splitlines()} == {"cut_at_token_limit"}


@pytest.mark.parametrize("clash", ["jsonl_is_input", "parquet_is_input", "outputs_equal", "link_to_input"])
def test_outputs_that_would_overwrite_the_input_are_refused(tmp_path, clash):
    src = _input(tmp_path, n=3)
    original_bytes = src.read_bytes()
    jsonl, rep, orig = _outs(tmp_path)
    if clash == "jsonl_is_input":
        jsonl = src
    elif clash == "parquet_is_input":
        orig = src
    elif clash == "outputs_equal":
        rep = orig
    else:
        jsonl = tmp_path / "link.jsonl"
        jsonl.symlink_to(src)
    engine = FakeEngine()
    with pytest.raises(rq.RewriteError, match="give"):
        rewrite_dataset(src, jsonl, rep, orig, engine, progress=False)
    assert src.read_bytes() == original_bytes and not engine.calls


def test_cli_refuses_the_input_as_output_before_loading_a_model(tmp_path, capsys):
    src = _input(tmp_path, n=3)
    before = src.read_bytes()
    code = rewrite_questions.main(["--input_path", str(src), "--output_jsonl", str(src), "--model_path", "/nonexistent/model",
                    "--output_parquet", str(tmp_path / "r.parquet"), "--output_original_parquet", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: output") and "is also the input" in err[0]
    assert src.read_bytes() == before


def test_a_corrupt_line_in_the_middle_is_set_aside_not_cut(tmp_path):
    """Resume keeps every good record after a corrupt line; the line goes to <jsonl>.bad."""
    src = _input(tmp_path)
    jsonl, rep, orig = _outs(tmp_path)
    rewrite_dataset(src, jsonl, rep, orig, FakeEngine(), batch_size=3, progress=False)
    lines = jsonl.read_text().splitlines()
    corrupt = '{"index": 6, "original": "Quest\x00'
    jsonl.write_text("\n".join(lines[:2] + [corrupt] + lines[3:]) + "\n")  # record 6 lost, a bad line instead
    engine = FakeEngine()
    stats = rewrite_dataset(src, jsonl, rep, orig, engine, batch_size=3, progress=False)
    asked = [p.split("### RESULT_END\n", 1)[1].strip() for call in engine.calls for p in call]
    assert asked == ["Question number 6?"]  # only the record that was really lost
    assert stats["bad_lines"] == 1 and stats["resumed"] == 6 and stats["rewritten"] == 7
    assert (tmp_path / "out.jsonl.bad").read_text() == corrupt + "\n"
    assert sorted(json.loads(x)["index"] for x in jsonl.read_text().splitlines()) == list(range(7))


def test_a_foreign_jsonl_is_refused_untouched(tmp_path):
    src = _input(tmp_path, n=2)
    jsonl, rep, orig = _outs(tmp_path)
    jsonl.write_text('{"question": "a"}\n{"question": "b"}\n')
    with pytest.raises(rq.RewriteError, match="not this script's output"):
        rewrite_dataset(src, jsonl, rep, orig, FakeEngine(), progress=False)
    assert jsonl.read_text() == '{"question": "a"}\n{"question": "b"}\n'


def test_limit_must_be_positive(tmp_path):
    src = _input(tmp_path, n=3)
    with pytest.raises(SystemExit):
        rewrite_questions.parse_args(["--model_path", "m", "--limit", "-1"])
    with pytest.raises(rq.RewriteError, match="--limit -1"):
        rq.load_questions(src, limit=-1)
    assert len(rq.load_questions(src, limit=2)[1]) == 2
