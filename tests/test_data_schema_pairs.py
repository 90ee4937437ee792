"""verl-schema reading with validation, and `load_pairs` on the real DAPO / MATH files."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from corewarding.data import SYSTEM_PROMPT, DataError, load_pairs, make_row, read_verl_parquet, write_verl_parquet
from corewarding.data.pairs import same_ground_truth
from corewarding.data.schema import as_files
from corewarding.data.preprocess import preprocess


def _rows(answers, start=0, question="What is {i} + 1?"):
    return [make_row(question.format(i=i), a, index=start + i, split="train", data_source="t") for i, a in enumerate(answers)]


def test_system_prompt_is_the_papers():
    assert SYSTEM_PROMPT == "Let's think step by step and output the final answer within \\boxed{}."


def test_round_trip(tmp_path):
    path = write_verl_parquet(_rows(["1", "2"]), tmp_path / "a.parquet")
    frame = read_verl_parquet(path)
    assert frame["ground_truth"].tolist() == ["1", "2"]
    assert frame["index"].tolist() == [0, 1]
    assert frame["prompt"][0] == [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "What is 0 + 1?"}]
    assert frame["split"].tolist() == ["train", "train"]


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame(_rows(["1"])).drop(columns=["reward_model"]).to_parquet(path)
    with pytest.raises(DataError, match=r"bad\.parquet.*missing column.*reward_model"):
        read_verl_parquet(path)
    # label-free methods may read it
    assert read_verl_parquet(path, require_ground_truth=False)["ground_truth"].tolist() == [None]
    with pytest.raises(DataError, match=r"bad\.parquet.*'question'"):
        read_verl_parquet(path, prompt_key="question")


def test_row_without_ground_truth_names_file_row_column(tmp_path):
    path = write_verl_parquet(_rows(["1", "2", None, ""]), tmp_path / "gt.parquet")
    with pytest.raises(DataError, match=r"gt\.parquet: row 2, column 'reward_model\.ground_truth'"):
        read_verl_parquet(path)
    frame = read_verl_parquet(path, require_ground_truth=False)
    assert frame["ground_truth"].tolist() == ["1", "2", None, None]


def test_bad_prompt_names_row(tmp_path):
    rows = _rows(["1", "2"])
    rows[1]["prompt"] = [{"role": "system", "content": "only a system message"}]
    path = write_verl_parquet(rows, tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p\.parquet: row 1, column 'prompt': no user message"):
        read_verl_parquet(path)


def test_release_math_file_has_two_rows_without_answer(shared_data):
    # The release's MATH train file has empty ground truths at rows 5341 and 5343: the reader says
    # so instead of training on them; scripts/preprocess.py drops them.
    with pytest.raises(DataError, match=r"train\.parquet: row 5341, column 'reward_model\.ground_truth'"):
        read_verl_parquet(shared_data / "math" / "train.parquet")


def test_load_pairs_dapo(shared_data, caplog):
    original = shared_data / "dapo" / "train.parquet"
    rephrased = shared_data / "dapo" / "train_rewrite_Qwen3-32B.parquet"
    with caplog.at_level(logging.INFO, logger="corewarding.data.pairs"):
        pairs = load_pairs(original, rephrased)
    assert len(pairs) == 14109
    assert {"index", "ground_truth", "original_prompt", "rephrased_prompt", "data_source"} <= set(pairs.columns)
    assert pairs["index"].is_unique
    assert any("dropped 7 originals without a rewrite and 0 rewrites" in r.getMessage() for r in caplog.records)

    # Every pair matches both files on the index (not on the position) and has one ground truth.
    raw_o, raw_r = pd.read_parquet(original), pd.read_parquet(rephrased)
    by_index_o = {e["index"]: (p[-1]["content"], rm["ground_truth"]) for e, p, rm in zip(raw_o.extra_info, raw_o.prompt, raw_o.reward_model)}
    by_index_r = {e["index"]: (p[-1]["content"], rm["ground_truth"]) for e, p, rm in zip(raw_r.extra_info, raw_r.prompt, raw_r.reward_model)}
    for rec in pairs.itertuples():
        assert rec.original_prompt[-1]["content"] == by_index_o[rec.index][0]
        assert rec.rephrased_prompt[-1]["content"] == by_index_r[rec.index][0]
        assert rec.ground_truth == by_index_o[rec.index][1] == by_index_r[rec.index][1]
    # By position the files disagree from row 1308 on; by index they do not.
    assert raw_o.extra_info[1308]["index"] != raw_r.extra_info[1308]["index"]
    assert 1308 not in set(pairs["index"])


def test_load_pairs_math(shared_data, tmp_path, caplog):
    # Originals preprocessed from the release file (2 rows without an answer dropped) + its rewrites.
    originals = preprocess("math", tmp_path, local_path=shared_data / "math" / "train.parquet")["train"]
    with caplog.at_level(logging.INFO, logger="corewarding.data.pairs"):
        pairs = load_pairs(originals, shared_data / "math" / "train_rewrite_Qwen3-32B.parquet")
    assert len(pairs) == 7498
    assert not {5341, 5343} & set(pairs["index"])
    assert any("dropped 0 originals without a rewrite and 2 rewrites" in r.getMessage() for r in caplog.records)
    assert pairs.loc[pairs["index"] == 0, "ground_truth"].item() == "0"


def test_load_pairs_joins_on_index_not_position(tmp_path, caplog):
    original = write_verl_parquet(_rows(["10", "11", "12", "13"]), tmp_path / "o.parquet")
    rewrites = _rows(["10", "11", "12", "13"], question="Rewritten {i}")
    rewrites = [rewrites[3], rewrites[1], rewrites[0]]  # reordered, index 2 missing
    rewrites.append(make_row("orphan", "99", index=42, split="train", data_source="t"))
    rephrased = write_verl_parquet(rewrites, tmp_path / "r.parquet")
    with caplog.at_level(logging.INFO, logger="corewarding.data.pairs"):
        pairs = load_pairs(original, rephrased)
    assert pairs["index"].tolist() == [0, 1, 3]  # order of the originals
    assert [p[-1]["content"] for p in pairs["rephrased_prompt"]] == ["Rewritten 0", "Rewritten 1", "Rewritten 3"]
    assert pairs["ground_truth"].tolist() == ["10", "11", "13"]
    assert any("dropped 1 originals without a rewrite and 1 rewrites without an original" in r.getMessage() for r in caplog.records)


def test_load_pairs_errors(tmp_path):
    original = write_verl_parquet(_rows(["1", "2"]), tmp_path / "o.parquet")
    same_number = write_verl_parquet(_rows(["1.0", "2"], question="Reworded {i}"), tmp_path / "same.parquet")
    assert load_pairs(original, same_number)["ground_truth"].tolist() == ["1", "2"]  # "1" == "1.0"
    differing = write_verl_parquet(_rows(["1", "3"]), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"extra_info\.index 1: ground truths differ"):
        load_pairs(original, differing)
    duplicated = write_verl_parquet(_rows(["1", "2"]) + _rows(["2"], start=1), tmp_path / "dup.parquet")
    with pytest.raises(DataError, match=r"dup\.parquet: duplicate extra_info\.index 1"):
        load_pairs(original, duplicated)
    no_index = tmp_path / "noindex.parquet"
    pd.DataFrame(_rows(["1"])).drop(columns=["extra_info"]).to_parquet(no_index)
    with pytest.raises(DataError, match=r"noindex\.parquet.*extra_info"):
        load_pairs(original, no_index)
    # Several files: indices must be unique across them.
    with pytest.raises(DataError, match=r"index 0 appears in several original files"):
        load_pairs([original, write_verl_parquet(_rows(["1"]), tmp_path / "o2.parquet")], same_number)


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("1,234", "1234", True),  # a real thousands separator
        ("1,234,567", "1234567", True),
        ("-1,000", "-1000", True),
        ("1,234.5", "1234.50", True),
        ("48", "48.0", True),
        ("1,2", "12", False),  # a list (or a decimal comma), not twelve
        ("1,2,3", "123", False),
        ("12,34", "1234", False),
        ("1_0", "10", False),  # Python's float() would accept the underscore
        ("3", "4", False),
    ],
)
def test_same_ground_truth_commas(a, b, same):
    assert same_ground_truth(a, b) is same
    assert same_ground_truth(b, a) is same


def test_load_pairs_rejects_comma_list_against_number(tmp_path):
    original = write_verl_parquet(_rows(["1,2"]), tmp_path / "o.parquet")
    rephrased = write_verl_parquet(_rows(["12"], question="Reworded {i}"), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"extra_info\.index 0: ground truths differ"):
        load_pairs(original, rephrased)
    thousands = write_verl_parquet(_rows(["1,234"], question="Reworded {i}"), tmp_path / "t.parquet")
    plain = write_verl_parquet(_rows(["1234"]), tmp_path / "p.parquet")
    assert load_pairs(thousands, plain)["ground_truth"].tolist() == ["1,234"]


def test_as_files_accepts_one_path_a_comma_separated_string_or_a_list(tmp_path):
    assert as_files("a.parquet") == [Path("a.parquet")]
    assert as_files(Path("a.parquet")) == [Path("a.parquet")]
    assert as_files("a.parquet, dir/b.parquet") == [Path("a.parquet"), Path("dir/b.parquet")]
    assert as_files("a.parquet,") == [Path("a.parquet")]  # a trailing comma adds no file
    assert as_files(["a.parquet", Path("b.parquet")]) == [Path("a.parquet"), Path("b.parquet")]
    for nothing in (",", []):
        with pytest.raises(DataError, match="no data files given"):
            as_files(nothing)
    first = write_verl_parquet(_rows(["1", "2"]), tmp_path / "x.parquet")
    second = write_verl_parquet(_rows(["3"], start=2), tmp_path / "y.parquet")
    frame = read_verl_parquet(f"{first},{second}")
    assert frame["ground_truth"].tolist() == ["1", "2", "3"]
    assert [Path(f).name for f in frame["file"]] == ["x.parquet", "x.parquet", "y.parquet"]


def _one_row_with(tmp_path, name, ground_truth=None, index=0):
    rows = _rows(["1"])
    rows[0]["reward_model"]["ground_truth"] = ground_truth if ground_truth is not None else "1"
    rows[0]["extra_info"]["index"] = index
    return write_verl_parquet(rows, tmp_path / name)


def test_structured_ground_truths_are_errors_not_reprs(tmp_path):
    """A dict ground truth is not turned into its repr (a reward of 0 forever), a list of several
    answers is not cut to its first; a one-element list is that answer (data/README.md)."""
    with pytest.raises(DataError, match=r"d\.parquet: row 0, column 'reward_model\.ground_truth': expected a string, got a dict"):
        read_verl_parquet(_one_row_with(tmp_path, "d.parquet", ground_truth={"value": "7"}))
    rows = _rows(["1", "2", "3"])
    for row, truth in zip(rows, (["5"], [], ["2", "3"])):
        row["reward_model"]["ground_truth"] = truth
    path = write_verl_parquet(rows, tmp_path / "l.parquet")
    with pytest.raises(DataError, match=r"l\.parquet: row 2, column 'reward_model\.ground_truth': a list of 2 answers"):
        read_verl_parquet(path, require_ground_truth=False)
    path = write_verl_parquet(rows[:2], tmp_path / "l2.parquet")
    assert read_verl_parquet(path, require_ground_truth=False)["ground_truth"].tolist() == ["5", None]


def test_fractional_index_is_an_error(tmp_path):
    rows = _rows(["1", "2"])
    rows[0]["extra_info"]["index"], rows[1]["extra_info"]["index"] = 12.0, 11.7
    with pytest.raises(DataError, match=r"i\.parquet: row 1, column 'extra_info\.index': not an integer: 11\.7"):
        read_verl_parquet(write_verl_parquet(rows, tmp_path / "i.parquet"))
    assert read_verl_parquet(write_verl_parquet(rows[:1], tmp_path / "i1.parquet"))["index"].tolist() == [12]


def test_pairing_errors_name_the_real_cause(tmp_path):
    original = write_verl_parquet(_rows(["1", "2"]), tmp_path / "o.parquet")
    elsewhere = write_verl_parquet(_rows(["1", "2"], start=100, question="Reworded {i}"), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"no extra_info\.index in common .*indices 0\.\.1.*indices 100\.\.101"):
        load_pairs(original, elsewhere)
    with pytest.raises(DataError, match=r"o\.parquet is given as both the original and the rephrased file"):
        load_pairs(original, str(original))
    copy = write_verl_parquet(_rows(["1", "2"]), tmp_path / "copy.parquet")
    with pytest.raises(DataError, match=r"every 'rewrite' in .*copy\.parquet is identical to its original"):
        load_pairs(original, copy)


def test_empty_file_says_it_is_empty(tmp_path):
    empty = tmp_path / "empty.parquet"
    pd.DataFrame(_rows(["1"])).iloc[:0].to_parquet(empty)
    with pytest.raises(DataError, match=r"empty\.parquet: the file has no rows"):
        read_verl_parquet(empty)
    with pytest.raises(DataError, match=r"empty\.parquet: the file has no rows"):
        load_pairs(write_verl_parquet(_rows(["1"]), tmp_path / "o.parquet"), empty)


def test_preprocess_names_the_record_with_a_structured_answer():
    from corewarding.data.preprocess import convert_records

    records = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": {"value": 4}}]
    with pytest.raises(DataError, match=r"openrs/train: record 1: expected a string, got a dict"):
        convert_records("openrs", records, "train")
    verl = {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "1"}, "extra_info": {"index": 2.5}}
    with pytest.raises(DataError, match=r"record 0: not an integer: 2\.5"):
        convert_records("openrs", [verl], "train")
