"""RLDataset / PairedRLDataset / to_batch / StatefulLoader, with the SmolLM2 tokenizer."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch

from corewarding.batch import Batch
from corewarding.data import (
    ONE_SHOT_SYSTEM_PROMPT,
    DataError,
    PairedRLDataset,
    RLDataset,
    StatefulLoader,
    left_pad,
    make_row,
    to_batch,
    write_builtin_dataset,
    write_verl_parquet,
)
from corewarding.data.preprocess import preprocess


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    return write_builtin_dataset(tmp_path_factory.mktemp("builtin"), n_train=40, n_val=8, seed=0)


def _expected_ids(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_rl_dataset_items(tokenizer, builtin):
    ds = RLDataset(builtin["train"], tokenizer, max_prompt_length=256)
    assert len(ds) == 40
    item = ds[3]
    assert item["prompt_messages"][0] == {"role": "system", "content": ONE_SHOT_SYSTEM_PROMPT}
    assert item["input_ids"] == _expected_ids(tokenizer, item["prompt_messages"])
    assert tokenizer.decode(item["input_ids"]).endswith("<|im_start|>assistant\n")
    assert item["index"] == 3 and item["ground_truth"].lstrip("-").isdigit()
    assert item["data_source"] in {"builtin_arithmetic", "builtin_word"}
    assert len({it["uid"] for it in ds.items}) == len(ds)


def _long_file(tmp_path, lengths):
    rows = [make_row(" ".join(["apple"] * n) + " ?", str(i), index=i, split="train", data_source="t") for i, n in enumerate(lengths)]
    return write_verl_parquet(rows, tmp_path / "long.parquet")


def test_length_filter_and_truncation(tokenizer, tmp_path, caplog):
    path = _long_file(tmp_path, [5, 200, 5])
    limit = 100
    with caplog.at_level(logging.INFO, logger="corewarding.data.dataset"):
        ds = RLDataset(path, tokenizer, max_prompt_length=limit)
    assert [it["index"] for it in ds.items] == [0, 2] and ds.num_filtered == 1
    assert any("dropped 1 of 3 prompts longer than 100" in r.getMessage() for r in caplog.records)

    with pytest.raises(DataError, match=r"long\.parquet: row 1: prompt has \d+ tokens > data\.max_prompt_length=100"):
        RLDataset(path, tokenizer, max_prompt_length=limit, filter_overlong_prompts=False, truncation="error")
    full = _expected_ids(tokenizer, RLDataset(path, tokenizer, 10_000).items[1]["prompt_messages"])
    left = RLDataset(path, tokenizer, limit, filter_overlong_prompts=False, truncation="left").items[1]["input_ids"]
    right = RLDataset(path, tokenizer, limit, filter_overlong_prompts=False, truncation="right").items[1]["input_ids"]
    assert left == full[-limit:] and right == full[:limit]
    with pytest.raises(ValueError, match="truncation"):
        RLDataset(path, tokenizer, limit, truncation="middle")


def test_label_free_dataset(tokenizer, tmp_path):
    rows = [make_row("What is 1 + 1?", None, index=0, split="train", data_source="t")]
    path = write_verl_parquet(rows, tmp_path / "nogt.parquet")
    with pytest.raises(DataError, match="row 0, column 'reward_model.ground_truth'"):
        RLDataset(path, tokenizer, 128)
    assert RLDataset(path, tokenizer, 128, require_ground_truth=False)[0]["ground_truth"] is None


def test_rl_dataset_on_preprocessed_math500(tokenizer, shared_data, tmp_path):
    path = preprocess("math500", tmp_path, local_path=shared_data / "eval" / "math500_test.jsonl")["test"]
    ds = RLDataset(path, tokenizer, max_prompt_length=4096)
    assert len(ds) == 500
    assert ds[0]["ground_truth"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_to_batch_keeps_prompts_ragged_and_left_pad_pads_them(tokenizer, builtin):
    ds = RLDataset(builtin["train"], tokenizer, 256)
    items = [ds[i] for i in range(4)]
    batch = to_batch(items)
    assert isinstance(batch, Batch) and len(batch) == 4 and not batch.tensors
    assert batch["prompt_ids"] == [it["input_ids"] for it in items]  # token-id lists, padded once by the worker
    pad = tokenizer.pad_token_id
    ids, mask = left_pad(batch["prompt_ids"], pad)
    assert ids.shape == mask.shape == (4, max(len(it["input_ids"]) for it in items))
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        assert ids[row, -n:].tolist() == it["input_ids"]
        assert mask[row].tolist() == [0] * (ids.shape[1] - n) + [1] * n
        assert (ids[row, : ids.shape[1] - n] == pad).all()
    wide, _ = left_pad(batch["prompt_ids"], pad, width=ids.shape[1] + 3)
    assert torch.equal(wide[:, 3:], ids) and (wide[:, :3] == pad).all()
    with pytest.raises(ValueError, match="left-pad"):
        left_pad(batch["prompt_ids"], pad, width=1)
    assert batch["index"] == [0, 1, 2, 3]
    assert batch["ground_truth"] == [it["ground_truth"] for it in items]
    assert batch["prompt_messages"][2] == items[2]["prompt_messages"]
    assert "pair_id" not in batch


def test_paired_dataset_and_batch(tokenizer, builtin):
    ds = PairedRLDataset(builtin["train"], builtin["train_rewrite"], tokenizer, 256)
    assert len(ds) == 40
    item = ds[5]
    assert item["pair_id"] == item["original"]["index"] == item["rephrased"]["index"] == 5
    assert item["original"]["prompt_messages"] != item["rephrased"]["prompt_messages"]
    assert item["original"]["ground_truth"] == item["rephrased"]["ground_truth"]
    batch = to_batch([ds[i] for i in (7, 2, 9)])
    assert len(batch) == 6 and "pair_id" in batch
    assert batch["pair_id"] == [7, 2, 9, 7, 2, 9]
    assert batch["view"] == ["original"] * 3 + ["rephrased"] * 3
    assert batch["views_swapped"] == [False] * 6  # no loader draw: the pair keeps its roles
    assert batch["ground_truth"][:3] == batch["ground_truth"][3:]
    assert len(set(batch["uid"])) == 6
    assert batch["prompt_ids"][4] == ds[2]["rephrased"]["input_ids"]


def test_unfaithful_twins_reach_the_batch_rows(tokenizer, tmp_path):
    """extra_info.faithful / twin_answer of the built-in unfaithful twins become rows of a pair batch
    (what Co-rewarding-I's reward splits pseudo_label_acc by); data without them gets no such rows."""
    files = write_builtin_dataset(tmp_path / "f", n_train=8, n_val=2, seed=0, unfaithful_fraction=0.5)
    ds = PairedRLDataset(files["train"], files["train_rewrite"], tokenizer, 256)
    twins = pd.read_parquet(files["train_rewrite"])
    truth = {int(info["index"]): (bool(info["faithful"]), str(info["twin_answer"])) for info in twins["extra_info"]}
    batch = to_batch([ds[i] for i in range(8)])
    assert batch["faithful"] == [truth[p][0] for p in batch["pair_id"]] and batch["faithful"].count(False) == 8
    assert batch["twin_answer"] == [truth[p][1] for p in batch["pair_id"]]
    unfaithful = batch["faithful"].index(False)
    assert batch["twin_answer"][unfaithful] != batch["ground_truth"][unfaithful]  # the twin asks about another number
    plain = write_builtin_dataset(tmp_path / "p", n_train=8, n_val=2, seed=0)
    batch = to_batch([PairedRLDataset(plain["train"], plain["train_rewrite"], tokenizer, 256)[i] for i in range(2)])
    assert "faithful" not in batch and "twin_answer" not in batch


def test_paired_length_filter_drops_pair_when_either_side_is_long(tokenizer, tmp_path, caplog):
    short = lambda i: make_row(f"What is {i} + 1?", str(i + 1), index=i, split="train", data_source="t")  # noqa: E731
    long = lambda i: make_row("apple " * 300 + f"{i}?", str(i + 1), index=i, split="train", data_source="t")  # noqa: E731
    original = write_verl_parquet([short(0), long(1), short(2)], tmp_path / "o.parquet")
    rephrased = write_verl_parquet([short(0), short(1), long(2)], tmp_path / "r.parquet")
    with caplog.at_level(logging.INFO, logger="corewarding.data.dataset"):
        ds = PairedRLDataset(original, rephrased, tokenizer, max_prompt_length=128)
    assert [it["pair_id"] for it in ds.items] == [0]
    assert any("dropped 2 of 3 pairs" in r.getMessage() for r in caplog.records)


class _Items:
    def __init__(self, n):
        self.items = [{"input_ids": [1] * (1 + i % 3), "prompt_messages": [], "ground_truth": str(i), "data_source": "t",
                       "index": i, "uid": f"t/{i}"} for i in range(n)]
        self.pad_token_id = 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _indices(batches):
    return [b["index"] for b in batches]


def test_loader_epochs_are_permutations_and_deterministic():
    data = _Items(10)
    loader = StatefulLoader(data, batch_size=3, shuffle=True, seed=1)
    assert len(loader) == 3
    epoch0 = _indices(loader)
    epoch1 = _indices(loader)
    assert len(epoch0) == 3 and all(len(b) == 3 for b in epoch0)
    assert len({i for b in epoch0 for i in b}) == 9  # drop_last: one item left out
    assert epoch0 != epoch1
    again = StatefulLoader(data, batch_size=3, shuffle=True, seed=1)
    assert _indices(again) == epoch0 and _indices(again) == epoch1
    assert _indices(StatefulLoader(data, 3, shuffle=False)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert _indices(StatefulLoader(data, 4, shuffle=False, drop_last=False))[-1] == [8, 9]


def test_loader_resumes_at_the_exact_batch():
    data = _Items(11)
    straight = StatefulLoader(data, batch_size=2, seed=7)
    reference = [_indices(straight) for _ in range(3)]
    flat = [b for epoch in reference for b in epoch]
    for stop in range(1, len(flat)):  # stop after `stop` batches, save, resume in a new loader
        first = StatefulLoader(data, batch_size=2, seed=7)
        seen = []
        while len(seen) < stop:
            for batch in first:
                seen.append(batch["index"])
                if len(seen) == stop:
                    break
        state = first.state_dict()
        second = StatefulLoader(data, batch_size=2, seed=7)
        second.load_state_dict(state)
        while second.epoch < 3:
            seen.extend(_indices(second))
        assert seen == flat, stop
    # after the last batch of an epoch the state already points at the next epoch
    loader = StatefulLoader(data, batch_size=2, seed=7)
    _indices(loader)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0


def test_loader_state_mismatch_is_an_error():
    loader = StatefulLoader(_Items(10), batch_size=2)
    with pytest.raises(ValueError, match="batch_size=4"):
        loader.load_state_dict({**loader.state_dict(), "batch_size": 4})
    with pytest.raises(ValueError, match="larger than the dataset"):
        StatefulLoader(_Items(3), batch_size=4)


class _Pairs(_Items):
    """Paired items as `PairedRLDataset` makes them (tiny prompts, no tokenizer)."""

    def __init__(self, n):
        super().__init__(n)
        self.items = [{"pair_id": it["index"], **{view: {**it, "pair_id": it["index"], "view": view, "uid": f"{it['uid']}/{view}"}
                                                   for view in ("original", "rephrased")}} for it in self.items]


def _swaps(loader) -> list[dict[int, bool]]:
    """Per batch: pair_id -> views_swapped, checked equal on both rows of the pair."""
    out = []
    for batch in loader:
        flags = dict(zip(batch["pair_id"], batch["views_swapped"]))
        assert list(flags.items()) == list(zip(batch["pair_id"][len(batch) // 2:], batch["views_swapped"][len(batch) // 2:]))
        out.append(flags)
    return out


def test_view_swap_p_extremes():
    """data.p = 1 (the release's default) swaps every pair, 0 none; without it nothing is swapped."""
    for p, expected in ((1.0, True), (0.0, False), (None, False)):
        for flags in _swaps(StatefulLoader(_Pairs(8), batch_size=4, seed=3, view_swap_p=p)):
            assert set(flags.values()) == {expected}, p


def test_view_swap_is_seeded_per_epoch_and_resumes():
    """p = 0.5: a fair draw per pair, the same for the same (seed, epoch), another in the next
    epoch, and a loader resumed mid-epoch hands out the very same swaps."""
    data = _Pairs(200)
    loader = StatefulLoader(data, batch_size=50, seed=7, view_swap_p=0.5)
    epoch0, epoch1 = _swaps(loader), _swaps(loader)
    flat0 = {k: v for flags in epoch0 for k, v in flags.items()}
    assert 70 < sum(flat0.values()) < 130
    assert flat0 != {k: v for flags in epoch1 for k, v in flags.items()}
    assert _swaps(StatefulLoader(data, batch_size=50, seed=7, view_swap_p=0.5)) == epoch0
    assert _swaps(StatefulLoader(data, batch_size=50, seed=8, view_swap_p=0.5)) != epoch0
    first = StatefulLoader(data, batch_size=50, seed=7, view_swap_p=0.5)
    next(iter(first))
    resumed = StatefulLoader(data, batch_size=50, seed=7, view_swap_p=0.5)
    resumed.load_state_dict(first.state_dict())
    assert _swaps(resumed) == epoch0[1:] and _swaps(resumed) == epoch1


def test_view_swap_needs_pairs_and_a_probability():
    with pytest.raises(ValueError, match="has no pairs"):
        next(iter(StatefulLoader(_Items(4), batch_size=2, view_swap_p=1.0)))
    with pytest.raises(ValueError, match=r"data.p=1.5 must be in \[0, 1\]"):
        StatefulLoader(_Pairs(4), batch_size=2, view_swap_p=1.5)


def test_loader_yields_batches_of_pairs(tokenizer, builtin):
    ds = PairedRLDataset(builtin["train"], builtin["train_rewrite"], tokenizer, 256)
    loader = StatefulLoader(ds, batch_size=4, seed=0)
    batch = next(iter(loader))
    assert len(batch) == 8 and batch["pair_id"][:4] == batch["pair_id"][4:]
    assert all(isinstance(ids, list) for ids in batch["prompt_ids"]) and loader.batch_epoch == 0


def _short_rows(n, data_source="t", start=0):
    return [make_row(f"What is {i} + 1?", str(i + 1), index=i, split="train", data_source=data_source) for i in range(start, start + n)]


def test_rl_dataset_from_several_files(tokenizer, tmp_path):
    first = write_verl_parquet(_short_rows(2), tmp_path / "first.parquet")
    second = write_verl_parquet(_short_rows(2), tmp_path / "second.parquet")  # same data_source and indices
    expected = ["first.parquet:t/0", "first.parquet:t/1", "second.parquet:t/0", "second.parquet:t/1"]
    for files in ([first, second], f"{first},{second}"):
        ds = RLDataset(files, tokenizer, 128)
        assert [it["uid"] for it in ds.items] == expected
        assert [it["index"] for it in ds.items] == [0, 1, 0, 1]
    assert [it["uid"] for it in RLDataset(first, tokenizer, 128).items] == ["t/0", "t/1"]  # one file: no name


def test_rl_dataset_with_another_prompt_key(tokenizer, tmp_path):
    frame = pd.DataFrame(_short_rows(2)).rename(columns={"prompt": "question"})
    frame["question"] = ["What is 0 + 1?", "What is 1 + 1?"]  # plain strings: one user message each
    path = tmp_path / "q.parquet"
    frame.to_parquet(path)
    ds = RLDataset(path, tokenizer, 128, prompt_key="question")
    assert len(ds) == 2
    assert ds[1]["prompt_messages"] == [{"role": "user", "content": "What is 1 + 1?"}]
    assert ds[1]["input_ids"] == _expected_ids(tokenizer, [{"role": "user", "content": "What is 1 + 1?"}])
    assert ds[1]["ground_truth"] == "2"
    with pytest.raises(DataError, match=r"q\.parquet.*missing column.*'prompt'"):
        RLDataset(path, tokenizer, 128)


def test_paired_truncation_modes(tokenizer, tmp_path):
    long_question = "apple " * 300 + "1?"
    original = write_verl_parquet(
        _short_rows(1) + [make_row(long_question, "2", index=1, split="train", data_source="t")], tmp_path / "o.parquet"
    )
    rephrased = write_verl_parquet(_short_rows(2), tmp_path / "r.parquet")
    limit = 128
    kwargs = {"max_prompt_length": limit, "filter_overlong_prompts": False}
    with pytest.raises(DataError, match=r"pair with extra_info\.index 1 \(original\): prompt has \d+ tokens > data\.max_prompt_length=128"):
        PairedRLDataset(original, rephrased, tokenizer, truncation="error", **kwargs)
    full = PairedRLDataset(original, rephrased, tokenizer, max_prompt_length=10_000)[1]
    left = PairedRLDataset(original, rephrased, tokenizer, truncation="left", **kwargs)
    right = PairedRLDataset(original, rephrased, tokenizer, truncation="right", **kwargs)
    assert len(left) == len(right) == 2 and left.num_filtered == right.num_filtered == 0
    assert len(full["original"]["input_ids"]) > limit
    assert left[1]["original"]["input_ids"] == full["original"]["input_ids"][-limit:]
    assert right[1]["original"]["input_ids"] == full["original"]["input_ids"][:limit]
    for ds in (left, right):  # the short side is untouched
        assert ds[1]["rephrased"]["input_ids"] == full["rephrased"]["input_ids"]
        assert ds[0]["original"]["input_ids"] == _expected_ids(tokenizer, ds[0]["original"]["prompt_messages"])
    with pytest.raises(ValueError, match="truncation"):
        PairedRLDataset(original, rephrased, tokenizer, truncation="middle", **kwargs)


def test_paired_dataset_logs_only_when_it_drops(tokenizer, tmp_path, caplog):
    original = write_verl_parquet(_short_rows(2), tmp_path / "o.parquet")
    rephrased = write_verl_parquet(
        [make_row(f"Reworded {i}?", str(i + 1), index=i, split="train", data_source="t") for i in range(2)], tmp_path / "r.parquet"
    )
    with caplog.at_level(logging.INFO, logger="corewarding.data.dataset"):
        ds = PairedRLDataset(original, rephrased, tokenizer, max_prompt_length=128)
    assert len(ds) == 2 and ds.num_filtered == 0
    assert not any("dropped" in r.getMessage() for r in caplog.records if r.name == "corewarding.data.dataset")


def test_resume_with_another_seed_or_p_is_refused_unless_allowed():
    """The checkpoint records data.seed and data.p: resuming with another value is one line naming
    the key and the override; with the override the loader goes on at the saved position."""
    first = StatefulLoader(_Pairs(8), batch_size=2, seed=3, view_swap_p=0.5)
    next(iter(first))
    state = first.state_dict()
    assert state["seed"] == 3 and state["p"] == 0.5
    for seed, p, key in ((4, 0.5, "data.seed=3"), (3, 1.0, "data.p=0.5"), (3, None, "data.p=0.5")):
        other = StatefulLoader(_Pairs(8), batch_size=2, seed=seed, view_swap_p=p)
        with pytest.raises(ValueError, match=rf"{key} but this run has .*data.resume_allow_sampling_change=true") as err:
            other.load_state_dict(state)
        assert "\n" not in str(err.value)
        other.load_state_dict(state, allow_sampling_change=True)
        assert (other.epoch, other.position) == (0, 1)
    StatefulLoader(_Pairs(8), batch_size=2, seed=3, view_swap_p=0.5).load_state_dict(state)
