"""The built-in offline dataset and the preprocessing scripts (on the files in ../shared/data)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pandas as pd
import pytest

from corewarding.data import (
    ONE_SHOT_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    DataError,
    builtin_problems,
    load_pairs,
    read_verl_parquet,
    write_builtin_dataset,
)
from corewarding.data.builtin import arithmetic_keys, heldout_problems
from corewarding.data.preprocess import convert_records, gsm8k_answer, preprocess
from corewarding.rewards import extract_boxed_answer

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _solve(question: str) -> int:
    a, b = (int(x) for x in re.findall(r"\d+", question)[:2])
    q = question.lower()
    if "from" in q and ("subtract" in q):
        return b - a
    if "less than" in q:
        return b - a
    if any(w in q for w in (" - ", "minus", "away", "left", "remain", "not sold", "sold")):
        return a - b
    if any(w in q for w in ("*", "times", "product", "multiplied", "each", "every", "bags", "packs")):
        return a * b
    return a + b


def test_builtin_problems_are_right_and_have_real_twins():
    problems = builtin_problems(300, seed=0)
    assert problems == builtin_problems(300, seed=0)
    assert problems != builtin_problems(300, seed=1)
    assert len({p["question"] for p in problems}) == 300
    for p in problems:
        assert p["question"] != p["rephrased"]
        assert _solve(p["question"]) == _solve(p["rephrased"]) == int(p["answer"]), p
    kinds = {p["kind"] for p in problems}
    assert kinds == {"arithmetic", "word"}


def test_arithmetic_keys_cover_every_drawn_problem():
    sizes = {op: len(set(arithmetic_keys(op))) for op in "+-*"}
    assert sizes == {"+": 90 * 90, "-": sum(a - 10 for a in range(20, 100)), "*": 11 * 11}
    spaces = {op: set(arithmetic_keys(op)) for op in "+-*"}
    for p in builtin_problems(2000, seed=4, word_fraction=0.0):
        assert (p["op"], p["a"], p["b"]) in spaces[p["op"]], p
    with pytest.raises(ValueError, match="unknown operation '/'"):
        arithmetic_keys("/")


def test_excluded_keys_are_never_drawn_in_any_wording():
    plain = builtin_problems(400, seed=2, word_fraction=0.0)
    assert builtin_problems(400, seed=2, word_fraction=0.0, exclude_keys=frozenset()) == plain
    excluded = {(p["op"], p["a"], p["b"]) for p in plain[:150]} | set(arithmetic_keys("*")[:60])
    kept = builtin_problems(400, seed=2, word_fraction=0.0, exclude_keys=excluded)
    assert len(kept) == 400
    assert not {(p["op"], p["a"], p["b"]) for p in kept} & excluded


def test_heldout_problems_are_distinct_stratified_and_disjoint():
    taken = {("*", 2, 2), ("+", 10, 10)}
    problems = heldout_problems({"+": 50, "-": 40, "*": 119}, seed=7, exclude_keys=taken)
    keys = [(p["op"], p["a"], p["b"]) for p in problems]
    assert len(set(keys)) == len(keys) == 209 and not set(keys) & taken
    assert [p["op"] for p in problems] == ["+"] * 50 + ["-"] * 40 + ["*"] * 119
    assert all(_solve(p["question"]) == int(p["answer"]) for p in problems)
    assert heldout_problems({"+": 50}, seed=7) == heldout_problems({"+": 50}, seed=7)
    with pytest.raises(ValueError, match=r"121 held-out problems of '\*' asked for, only 120"):
        heldout_problems({"*": 121}, seed=7, exclude_keys=taken)


def test_write_builtin_dataset_with_heldout_keys_and_a_given_validation_set(tmp_path):
    val = heldout_problems({"+": 6, "*": 4}, seed=1)
    keys = {(p["op"], p["a"], p["b"]) for p in val} | set(arithmetic_keys("*")[:100])
    paths = write_builtin_dataset(tmp_path, n_train=120, seed=5, word_fraction=0.0, heldout_keys=keys, val_problems=val)
    train, written_val = read_verl_parquet(paths["train"]), read_verl_parquet(paths["val"])
    assert [m[-1]["content"] for m in written_val["prompt"]] == [p["question"] for p in val]
    assert list(written_val["ground_truth"]) == [p["answer"] for p in val]
    drawn = builtin_problems(120, seed=5, word_fraction=0.0, exclude_keys=keys)
    assert [m[-1]["content"] for m in train["prompt"]] == [p["question"] for p in drawn]
    assert drawn != builtin_problems(120, seed=5, word_fraction=0.0)  # the exclusion took effect


def test_one_shot_prompt():
    assert ONE_SHOT_SYSTEM_PROMPT.endswith("The answer is \\boxed{68}.")
    assert extract_boxed_answer(ONE_SHOT_SYSTEM_PROMPT) == "68"


def test_write_builtin_dataset(tmp_path):
    paths = write_builtin_dataset(tmp_path, n_train=64, n_val=16, seed=3)
    assert set(paths) == {"train", "train_rewrite", "val"}
    train, val = read_verl_parquet(paths["train"]), read_verl_parquet(paths["val"])
    assert len(train) == 64 and len(val) == 16
    assert train["prompt"][0][0] == {"role": "system", "content": ONE_SHOT_SYSTEM_PROMPT}
    assert not {m[-1]["content"] for m in train["prompt"]} & {m[-1]["content"] for m in val["prompt"]}
    pairs = load_pairs(paths["train"], paths["train_rewrite"])
    assert len(pairs) == 64
    assert all(o[-1]["content"] != r[-1]["content"] for o, r in zip(pairs["original_prompt"], pairs["rephrased_prompt"]))
    again = write_builtin_dataset(tmp_path / "again", n_train=64, n_val=16, seed=3, system_prompt=SYSTEM_PROMPT)
    again_train = read_verl_parquet(again["train"])
    assert [m[-1] for m in again_train["prompt"]] == [m[-1] for m in train["prompt"]]
    assert again_train["prompt"][0][0]["content"] == SYSTEM_PROMPT


@pytest.mark.parametrize(
    "name, source, split, count, known",
    [
        ("gsm8k", "eval/gsm8k_test.jsonl", "test", 1319, {0: "18", 1: "3"}),
        ("math500", "eval/math500_test.jsonl", "test", 500, {0: "\\left( 3, \\frac{\\pi}{2} \\right)"}),
        ("amc", "eval/amc_test.parquet", "test", 83, {0: "142"}),
        ("aime24", "eval/aime24_test.jsonl", "test", 30, {0: "204"}),
        ("amc23", "eval/amc23_test.jsonl", "test", 40, {0: "27"}),
        ("dapo", "dapo/train.parquet", "train", 14116, {0: "34"}),
        ("math", "math/test.parquet", "test", 5000, {0: "2"}),
    ],
)
def test_preprocess_shared_files(shared_data, tmp_path, name, source, split, count, known):
    path = preprocess(name, tmp_path, local_path=shared_data / source)[split]
    assert path == tmp_path / f"{split}.parquet"
    frame = read_verl_parquet(path, require_index=True)
    assert len(frame) == count
    assert frame["index"].is_unique
    assert set(frame["split"]) == {split} and set(frame["data_source"]) == {name}
    assert all(p[0] == {"role": "system", "content": SYSTEM_PROMPT} and p[1]["role"] == "user" for p in frame["prompt"])
    for row, answer in known.items():
        assert frame["ground_truth"][row] == answer
    raw = pd.read_parquet(path)
    assert set(raw.columns) >= {"prompt", "data_source", "ability", "reward_model", "extra_info"}
    assert raw["reward_model"][0]["style"] == "rule"


def test_preprocess_cli(shared_data, tmp_path):
    out = tmp_path / "gsm8k.parquet"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "preprocess.py"), "gsm8k", "--local_path",
         str(shared_data / "eval" / "gsm8k_train.jsonl"), "--output", str(out), "--limit", "50"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    frame = read_verl_parquet(out)
    assert len(frame) == 50 and frame["ground_truth"][0] == "72" and set(frame["split"]) == {"train"}


def test_preprocess_cli_builtin_and_errors(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("preprocess_script", REPO / "scripts" / "preprocess.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["builtin", "--output_dir", str(tmp_path / "b"), "--n_train", "12", "--n_val", "4"]) == 0
    assert len(load_pairs(tmp_path / "b" / "train.parquet", tmp_path / "b" / "train_rewrite.parquet")) == 12
    assert read_verl_parquet(tmp_path / "b" / "val.parquet")["prompt"][0][0]["content"] == ONE_SHOT_SYSTEM_PROMPT
    assert script.main(["gsm8k", "--local_path", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: file not found" in capsys.readouterr().err


def test_answer_extraction_from_raw_records():
    assert gsm8k_answer({"answer": "so 1,234 total\n#### 1,234"}) == "1234"
    assert gsm8k_answer({"answer": "no marker"}) is None
    raw_math = [
        {"problem": "Compute $1+1$.", "solution": "Clearly $1+1=\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
        {"problem": "Nested?", "solution": "So the answer is $\\boxed{\\frac{1}{2}}$."},
        {"problem": "No answer", "solution": "We give up."},
    ]
    rows = convert_records("math", raw_math, "train")
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["2", "\\frac{1}{2}"]
    assert [r["extra_info"]["index"] for r in rows] == [0, 1]
    assert rows[0]["extra_info"]["level"] == "Level 1"
    openrs = convert_records("openrs", [{"problem": "p", "solution": "s", "answer": "7", "level": 2}], "train")
    assert openrs[0]["reward_model"]["ground_truth"] == "7"
    dapo = convert_records("dapo", [{"prompt": "What is x?", "solution": "5", "data_source": "math_dapo"}], "train")
    assert dapo[0]["prompt"][1]["content"] == "What is x?" and dapo[0]["reward_model"]["ground_truth"] == "5"
    with pytest.raises(DataError, match="unknown dataset"):
        preprocess("nope", "/tmp/never-written")


def test_hub_without_datasets_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails
    with pytest.raises(DataError, match=r"needs the `datasets` package: pip install datasets .*--local_path") as info:
        preprocess("gsm8k", tmp_path, split="test")
    assert "\n" not in str(info.value)
    spec = importlib.util.spec_from_file_location("preprocess_script", REPO / "scripts" / "preprocess.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["gsm8k", "--split", "test", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: reading openai/gsm8k from the hub") and "pip install datasets" in err
    assert not list(tmp_path.iterdir())


def test_unfaithful_twins(tmp_path):
    """--unfaithful-fraction f: a share f of the rephrased twins asks about another number (same
    wording otherwise) and still carries the original's ground truth, as a model's rewrite file
    would; extra_info says which pairs and the twin's own answer; f = 0 writes what it always wrote,
    the original file never changes."""
    plain = write_builtin_dataset(tmp_path / "plain", n_train=40, n_val=8, seed=2)
    zero = write_builtin_dataset(tmp_path / "zero", n_train=40, n_val=8, seed=2, unfaithful_fraction=0.0)
    half = write_builtin_dataset(tmp_path / "half", n_train=40, n_val=8, seed=2, unfaithful_fraction=0.5)
    for key in ("train", "train_rewrite", "val"):
        assert pd.read_parquet(plain[key]).equals(pd.read_parquet(zero[key]))
    original, faithful_twin = pd.read_parquet(plain["train"]), pd.read_parquet(plain["train_rewrite"])
    assert pd.read_parquet(half["train"])["prompt"].equals(original["prompt"])
    twins = pd.read_parquet(half["train_rewrite"])
    flags = [info["faithful"] for info in twins["extra_info"]]
    assert sum(not f for f in flags) == 20
    for i, faithful in enumerate(flags):
        truth, twin_truth = original["reward_model"][i]["ground_truth"], twins["extra_info"][i]["twin_answer"]
        assert twins["reward_model"][i]["ground_truth"] == truth
        numbers = lambda row: re.findall(r"\d+", row["prompt"][-1]["content"])  # noqa: E731
        if faithful:
            assert twins.iloc[i]["prompt"][-1]["content"] == faithful_twin.iloc[i]["prompt"][-1]["content"]
            assert twin_truth == truth
        else:  # one number raised by 1..5, and so another answer
            changed = [(a, b) for a, b in zip(numbers(faithful_twin.iloc[i]), numbers(twins.iloc[i])) if a != b]
            assert len(changed) == 1 and 1 <= int(changed[0][1]) - int(changed[0][0]) <= 5
            assert twin_truth != truth
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        write_builtin_dataset(tmp_path / "bad", n_train=4, n_val=2, unfaithful_fraction=1.5)


def _preprocess_script():
    spec = importlib.util.spec_from_file_location("preprocess_script", REPO / "scripts" / "preprocess.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_the_authors_rephrased_set_lands_beside_its_originals_and_pairs(shared_data, tmp_path, capsys, monkeypatch):
    """`preprocess.py dapo_rephrased` writes data/dapo/train_rewrite_Qwen3-32B.parquet (the file the run
    scripts read as the twin) keeping each row's own index: the DAPO rewrites miss 7 rows, so pairing
    by position would join the wrong questions from row 1308 on."""
    monkeypatch.chdir(tmp_path)
    script = _preprocess_script()
    assert script.main(["dapo_rephrased", "--local_path", str(shared_data / "dapo" / "train_rewrite_Qwen3-32B.parquet")]) == 0
    assert "data/dapo/train.parquet is not there yet" in capsys.readouterr().out
    assert script.main(["dapo", "--local_path", str(shared_data / "dapo" / "train.parquet")]) == 0
    assert script.main(["dapo_rephrased", "--local_path", str(shared_data / "dapo" / "train_rewrite_Qwen3-32B.parquet")]) == 0
    assert "pairs: 14109 of the 14116 questions in data/dapo/train.parquet" in capsys.readouterr().out
    twins = read_verl_parquet(tmp_path / "data" / "dapo" / "train_rewrite_Qwen3-32B.parquet", require_index=True)
    source = pd.read_parquet(shared_data / "dapo" / "train_rewrite_Qwen3-32B.parquet")
    assert list(twins["index"]) == [int(info["index"]) for info in source["extra_info"]]
    assert set(twins["data_source"]) == {"dapo"}
    pairs = load_pairs(tmp_path / "data" / "dapo" / "train.parquet", tmp_path / "data" / "dapo" / "train_rewrite_Qwen3-32B.parquet")
    assert len(pairs) == 14109


def test_a_rephrased_row_without_its_originals_index_is_refused():
    rows = [{"rewritten": "A farmer has 3 apples and buys 4 more: how many?", "answer": "7"}]
    with pytest.raises(DataError, match=r"math_rephrased/train: record 0: no extra_info.index .* original in math"):
        convert_records("math_rephrased", rows, "train")
    kept = convert_records("math_rephrased", [{**rows[0], "index": 12}], "train")
    assert kept[0]["extra_info"]["index"] == 12 and kept[0]["data_source"] == "math"
