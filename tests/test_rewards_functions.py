"""The self-certainty and entropy rewards, the registry, every reward function's invariance to row
order, and the math-verify time budget of the ground-truth metrics."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corewarding.batch import Batch
from corewarding.rewards import answers as answers_mod
from corewarding.methods import METHODS as REGISTRY
from corewarding.methods import resolve_method
from corewarding.rewards import (
    co_rewarding_i,
    co_rewarding_ii,
    co_rewarding_iii,
    empo,
    entropy,
    format_reward,
    gt,
    incorrect,
    majority_voting,
    random_reward,
    self_certainty,
)

from reward_batches import check_output, make_batch, resp, teacher_batch
from reward_batches import generous_default_timeout  # fixture


# --------------------------------------------------------------------------------------------
# self-certainty and entropy
# --------------------------------------------------------------------------------------------


def test_self_certainty_and_entropy_masked_mean():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    batch = Batch(
        tensors={"self_certainty": values, "entropy": values, "response_mask": mask},
        rows={"response_text": [resp("1"), resp(None), resp("2")], "ground_truth": ["1", "1", "3"]},
    )
    sc = self_certainty(batch)
    check_output(sc, 3)
    assert sc.scores.tolist() == [2.0, 4.0, 0.0]  # (1+2+3)/3, 4/1, empty response -> 0
    ent = entropy(batch)
    assert ent.scores.tolist() == [-2.0, -4.0, 0.0]
    assert ent.metrics["gt_acc"] == pytest.approx(1 / 3)
    assert ent.metrics["answer_present"] == pytest.approx(2 / 3)
    assert ent.metrics["score_mean"] == pytest.approx(-2.0)
    assert ent.rows["answer"] == ["1", None, "2"]
    with pytest.raises(KeyError, match="response_mask"):
        entropy(Batch(tensors={"entropy": values}))


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_and_aliases():
    """One registry (corewarding.methods): names and the release's aliases give the reward function."""
    assert resolve_method("naive").reward is gt
    assert resolve_method("co_reward").reward is co_rewarding_i
    assert resolve_method("co_rewarding_II").reward is co_rewarding_ii
    expected = {"gt": gt, "majority_voting": majority_voting, "co_rewarding_i": co_rewarding_i,
                "co_rewarding_ii": co_rewarding_ii, "co_rewarding_iii": co_rewarding_iii, "self_certainty": self_certainty,
                "entropy": entropy, "random": random_reward, "format": format_reward, "incorrect": incorrect, "empo": empo}
    assert {name: method.reward for name, method in REGISTRY.items()} == expected
    assert {name for name, method in REGISTRY.items() if method.votes} == {"majority_voting", "co_rewarding_i",
                                                                         "co_rewarding_ii", "co_rewarding_iii", "empo"}
    with pytest.raises(ValueError, match="co_reward"):
        resolve_method("nope")
    fn = resolve_method("majority_voting").reward_fn(equivalence="math")
    out = fn(make_batch(["0.5", "1/2", "3"], ["a", "a", "a"]))
    assert out.scores.tolist() == [1.0, 1.0, 0.0]


# --------------------------------------------------------------------------------------------
# grouping by ids: shuffling the rows changes no reward
# --------------------------------------------------------------------------------------------

POOL = ["1", "2", "0.5", "1/2", r"\frac{1}{2}", "3", " 3", None]


@st.composite
def paired_batches(draw):
    n_pairs = draw(st.integers(1, 3))
    answers, uids, pair_ids, views, gts = [], [], [], [], []
    for p in range(n_pairs):
        truth = draw(st.sampled_from(["1", "0.5", "3", None]))
        for view in ("original", "rephrased"):
            for _ in range(draw(st.integers(1, 4))):
                answers.append(draw(st.sampled_from(POOL)))
                uids.append(f"{view}-{p}")
                pair_ids.append(p)
                views.append(view)
                gts.append(truth)
    batch = make_batch(answers, uids, gts, pair_id=pair_ids, view=views)
    n = len(batch)
    batch.tensors["entropy"] = torch.tensor(draw(st.lists(st.floats(0, 5), min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    batch.tensors["self_certainty"] = batch.tensors["entropy"] * 2
    batch.tensors["response_mask"] = torch.tensor(draw(st.lists(st.integers(0, 1), min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    teacher_uids = sorted(set(uids)) * 2 + draw(st.lists(st.sampled_from(sorted(set(uids))), max_size=4))
    teacher = teacher_batch([draw(st.sampled_from(POOL)) for _ in teacher_uids], teacher_uids)
    return batch, teacher


METHODS = [
    ("gt", {}),
    ("majority_voting", {}),
    ("majority_voting", {"equivalence": "math"}),
    ("co_rewarding_i", {}),
    ("co_rewarding_i", {"equivalence": "math"}),
    ("co_rewarding_ii", {}),
    ("co_rewarding_ii", {"equivalence": "math"}),
    ("self_certainty", {}),
    ("entropy", {}),
    ("random", {}),
    ("format", {}),
    ("incorrect", {}),
    ("empo", {}),
    ("empo", {"equivalence": "math"}),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paired_batches(), st.randoms(use_true_random=False))
def test_property_shuffling_rows_changes_no_reward(data, rnd):
    batch, teacher = data
    perm = list(range(len(batch)))
    rnd.shuffle(perm)
    tperm = list(range(len(teacher)))
    rnd.shuffle(tperm)
    shuffled, shuffled_teacher = batch.select(perm), teacher.select(tperm)
    for name, options in METHODS:
        fn = resolve_method(name).reward_fn(**options)
        base = fn(batch, teacher)
        moved = fn(shuffled, shuffled_teacher)
        assert torch.equal(moved.scores, base.scores[perm]), name
        for key in ("answer", "pseudo_label"):
            assert moved.rows[key] == [base.rows[key][i] for i in perm], (name, key)
        assert moved.metrics.keys() == base.metrics.keys()
        for key, value in base.metrics.items():
            assert moved.metrics[key] == pytest.approx(value), (name, key)


def _slow_math_verify(monkeypatch, seconds_per_check: float) -> list:
    """Every math-verify check runs into its time limit (capped at `seconds_per_check`)."""
    checks = []

    def slow(pred, gold, timeout):
        checks.append((pred, gold))
        time.sleep(min(timeout, seconds_per_check))
        return None

    monkeypatch.setattr(answers_mod, "check_with_alarm", slow)
    monkeypatch.setattr(answers_mod._WORKER, "check", slow)
    answers_mod.clear_cache()
    return checks


def test_gt_metrics_have_a_per_step_time_budget(monkeypatch):
    """1,024 rollouts with distinct answers that math-verify cannot settle: gt_acc and
    pseudo_label_acc stop checking when the budget is spent (not 1,024 serial timeouts); every
    pair is either a counted time-out or counted as skipped."""
    checks = _slow_math_verify(monkeypatch, 0.05)
    n, per_group = 1024, 8
    answers = [f"x^{{{i}}}+1" for i in range(n)]
    batch = make_batch(answers, [f"g{i // per_group}" for i in range(n)], ["y+1"] * n)
    start = time.perf_counter()
    out = majority_voting(batch, metric_budget_s=0.5)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, elapsed  # unbounded: 1,024 x 0.05 s = 51 s
    timeouts, skipped = out.metrics["verify_timeouts"], out.metrics["verify_skipped"]
    assert timeouts == len(checks) >= 5 and timeouts + skipped == n  # the labels are rollout answers: no new pairs
    assert out.metrics["gt_acc"] == 0.0 and out.metrics["pseudo_label_acc"] == 0.0


def test_repeated_slow_pairs_are_checked_once(monkeypatch):
    checks = _slow_math_verify(monkeypatch, 0.01)
    batch = make_batch(["x^{2}+1"] * 8, ["a"] * 8, ["y+1"] * 8)
    out = gt(batch)  # the reward has no budget, but each distinct pair is checked once
    assert len(checks) == 1 and out.metrics["verify_timeouts"] == 1.0 and out.scores.tolist() == [0.0] * 8
