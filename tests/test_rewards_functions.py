"""The reward functions on hand-made batches, the registry, and invariance to row order."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corewarding.batch import Batch
from corewarding.rewards import answers as answers_mod
from corewarding.rewards import functions as functions_mod
from corewarding.methods import METHODS as REGISTRY
from corewarding.methods import resolve_method
from corewarding.rewards import (
    RewardOutput,
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


@pytest.fixture(autouse=True)
def generous_default_timeout(monkeypatch):
    """Rewards must not depend on machine load in the tests (see test_rewards_answers.py)."""
    monkeypatch.setattr(answers_mod, "DEFAULT_TIMEOUT", 30.0)


def resp(answer: str | None) -> str:
    return "no final answer" if answer is None else f"Reasoning... so the answer is \\boxed{{{answer}}}."


def generation_order(uids) -> list[int]:
    """`sample_index` of rows listed in generation order: 0, 1, ... within each uid."""
    seen: dict = {}
    out = []
    for uid in uids:
        out.append(seen.get(uid, 0))
        seen[uid] = out[-1] + 1
    return out


def make_batch(answers, uids, ground_truth=None, **rows) -> Batch:
    """Rows in generation order unless `sample_index` is given."""
    data = {"response_text": [resp(a) for a in answers], "uid": list(uids), **rows}
    data.setdefault("sample_index", generation_order(uids))
    if ground_truth is not None:
        data["ground_truth"] = list(ground_truth)
    return Batch(rows=data)


def teacher_batch(answers, uids) -> Batch:
    return Batch(rows={"uid": list(uids), "response_text": [resp(a) for a in answers],
                       "sample_index": generation_order(uids)})


def check_output(out: RewardOutput, n: int) -> None:
    assert out.scores.dtype == torch.float32 and out.scores.shape == (n,)
    assert set(out.rows) == {"answer", "pseudo_label"}
    assert len(out.rows["answer"]) == len(out.rows["pseudo_label"]) == n
    assert all(isinstance(v, float) for v in out.metrics.values())


# --------------------------------------------------------------------------------------------
# gt
# --------------------------------------------------------------------------------------------


def test_gt_reward():
    batch = make_batch(["0.5", r"\frac{1}{3}", None, "x=3"], ["a", "a", "b", "b"], [r"\frac12", "0.5", "3", "3"])
    out = gt(batch)
    check_output(out, 4)
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert out.rows["answer"] == ["0.5", r"\frac{1}{3}", None, "x=3"]
    assert out.rows["pseudo_label"] == [None] * 4
    assert out.metrics == {"score_mean": 0.5, "answer_present": 0.75, "gt_acc": 0.5, "verify_timeouts": 0.0, "verify_skipped": 0.0}


def test_gt_reward_checks_each_answer_once(monkeypatch):
    """The reward and gt_acc come from one math check per rollout with a ground truth."""
    calls = []

    original = answers_mod.VerifyBudget.equivalent

    def counting(self, a, b):
        calls.append((a, b))
        return original(self, a, b)

    monkeypatch.setattr(answers_mod.VerifyBudget, "equivalent", counting)
    batch = make_batch(["0.5", "2", None, "7"], ["a", "a", "b", "c"], [r"\frac12", "3", "3", None])
    out = gt(batch)
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert out.metrics["gt_acc"] == pytest.approx(1 / 3)
    assert calls == [("0.5", r"\frac12"), ("2", "3"), (None, "3")]


def test_gt_reward_needs_ground_truth():
    with pytest.raises(KeyError, match="ground_truth"):
        gt(make_batch(["1"], ["a"]))


# --------------------------------------------------------------------------------------------
# majority voting
# --------------------------------------------------------------------------------------------


def test_majority_voting_string_is_the_release():
    # uid a: "2" x2, "0.5", "1/2", None -> "2" wins under string match (2 of 5)
    # uid b: "7", "7", "8"                -> "7" (2 of 3)
    answers = ["2", "0.5", "2", "1/2", None, "7", "8", "7"]
    uids = ["a", "a", "a", "a", "a", "b", "b", "b"]
    out = majority_voting(make_batch(answers, uids, ["0.5"] * 5 + ["8"] * 3))
    check_output(out, 8)
    assert out.scores.tolist() == [1, 0, 1, 0, 0, 1, 0, 1]
    assert out.rows["pseudo_label"] == ["2"] * 5 + ["7"] * 3
    assert out.metrics["majority_ratio"] == pytest.approx((2 / 5 + 2 / 3) / 2)
    assert out.metrics["pseudo_label_acc"] == 0.0  # "2" != 0.5, "7" != 8
    assert out.metrics["gt_acc"] == pytest.approx(3 / 8)  # 0.5, 1/2, 8
    assert out.metrics["answer_present"] == pytest.approx(7 / 8)
    assert out.metrics["score_mean"] == pytest.approx(4 / 8)


def test_majority_voting_math_merges_spellings():
    answers = ["2", "0.5", "1/2", "2", None, "7", "8", "7"]
    uids = ["a", "a", "a", "a", "a", "b", "b", "b"]
    out = majority_voting(make_batch(answers, uids, ["0.5"] * 5 + ["8"] * 3), equivalence="math")
    # uid a: classes {0.5, 1/2: 2} and {2: 2} tie; "2" was generated first and wins
    assert out.rows["pseudo_label"][:5] == ["2"] * 5
    assert out.scores.tolist() == [1, 0, 0, 1, 0, 1, 0, 1]
    assert out.metrics["pseudo_label_acc"] == 0.0
    # generated the other way round, the class of "0.5" wins, with its first spelling
    out = majority_voting(make_batch(answers, uids, sample_index=[1, 0, 2, 3, 4, 0, 1, 2]), equivalence="math")
    assert out.rows["pseudo_label"][:5] == ["0.5"] * 5
    assert out.scores.tolist() == [0, 1, 1, 0, 0, 1, 0, 1]


# --------------------------------------------------------------------------------------------
# ties go to the answer generated first (the release's Counter.most_common), not to row order
# --------------------------------------------------------------------------------------------
# Rows as the trainer holds them after balancing: "3", "7", "7", "3" with sample_index 1, 0, 3, 2,
# i.e. generated as 7 (row 1), 3 (row 0), 3 (row 3), 7 (row 2). A 2-2 tie: the release labels "7",
# the first answer generated; the row order would say "3", and so would sorted spellings.
TIE_ROWS = ["3", "7", "7", "3"]
TIE_ORDER = [1, 0, 3, 2]


def test_vote_tie_goes_to_the_first_generated_answer():
    out = majority_voting(make_batch(TIE_ROWS, ["u"] * 4, sample_index=TIE_ORDER))
    assert out.rows["pseudo_label"] == ["7"] * 4 and out.scores.tolist() == [0, 1, 1, 0]
    in_row_order = majority_voting(make_batch(TIE_ROWS, ["u"] * 4))  # generated as listed: "3" first
    assert in_row_order.rows["pseudo_label"] == ["3"] * 4


def test_teacher_and_cross_view_ties_go_to_the_first_generated_answer():
    batch = make_batch(["3", "7"], ["p", "p"])
    teacher = Batch(rows={"uid": ["p"] * 4, "response_text": [resp(a) for a in TIE_ROWS], "sample_index": TIE_ORDER})
    assert co_rewarding_ii(batch, teacher).rows["pseudo_label"] == ["7", "7"]
    views = ["original"] * 4 + ["rephrased"] * 2
    pairs = make_batch(TIE_ROWS + ["1", "1"], ["o"] * 4 + ["r"] * 2, pair_id=[0] * 6, view=views,
                       sample_index=TIE_ORDER + [0, 1])
    assert co_rewarding_i(pairs).rows["pseudo_label"] == ["1"] * 4 + ["7"] * 2


def test_votes_need_the_generation_order():
    batch = Batch(rows={"response_text": [resp("1")], "uid": ["u"]})
    with pytest.raises(KeyError, match="sample_index"):
        majority_voting(batch)
    with pytest.raises(KeyError, match="sample_index"):
        co_rewarding_ii(make_batch(["1"], ["u"]), batch)


def test_majority_voting_all_missing_gives_zero():
    out = majority_voting(make_batch([None, None], ["a", "a"]))
    assert out.scores.tolist() == [0.0, 0.0]
    assert out.rows["pseudo_label"] == [None, None]
    assert out.metrics["majority_ratio"] == 0.0


def test_no_ground_truth_leaves_gt_metrics_out():
    for batch in (
        make_batch(["1", "1"], ["a", "a"]),
        make_batch(["1", "1"], ["a", "a"], [None, None]),
    ):
        out = majority_voting(batch)
        assert set(out.metrics) == {"score_mean", "answer_present", "majority_ratio", "verify_timeouts", "verify_skipped"}


# --------------------------------------------------------------------------------------------
# co-rewarding-I
# --------------------------------------------------------------------------------------------


def test_co_rewarding_i_cross_view():
    # pair 0: original answers 5,5,6 (majority 5); rephrased answers 6,6,5 (majority 6)
    #   -> original rollouts are rewarded for 6, rephrased ones for 5
    # pair 1: original 1,None (majority 1); rephrased None,None (no label)
    answers = ["5", "6", "5", "6", "6", "5", "1", None, None, None]
    views = ["original"] * 3 + ["rephrased"] * 3 + ["original"] * 2 + ["rephrased"] * 2
    pair_ids = [0] * 6 + [1] * 4
    uids = ["o0"] * 3 + ["r0"] * 3 + ["o1"] * 2 + ["r1"] * 2
    batch = make_batch(answers, uids, ["5"] * 6 + ["1"] * 4, pair_id=pair_ids, view=views)
    out = co_rewarding_i(batch)
    check_output(out, 10)
    assert out.rows["pseudo_label"] == ["6"] * 3 + ["5"] * 3 + [None] * 2 + ["1"] * 2
    assert out.scores.tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 0, 0]
    # groups (pair, view): labels 6 (wrong), 5 (right), None (wrong), 1 (right)
    assert out.metrics["pseudo_label_acc"] == 0.5
    # ratios of the votes that made each group's label: r0 2/3, o0 2/3, r1 0, o1 1/2
    assert out.metrics["majority_ratio"] == pytest.approx((2 / 3 + 2 / 3 + 0 + 1 / 2) / 4)
    assert out.metrics["gt_acc"] == pytest.approx(4 / 10)  # 5, 5, 5 and 1


def _pairs_batch(pairs: list[tuple[list, list, str, object, str | None]]) -> Batch:
    """Co-rewarding-I rows of (original answers, rephrased answers, ground truth, faithful, twin
    answer) per pair, the pair's index its pair_id."""
    answers, uids, gts, pair_ids, views, faithful, twins = [], [], [], [], [], [], []
    for pid, (orig, reph, gt_, flag, twin) in enumerate(pairs):
        for view, group in (("original", orig), ("rephrased", reph)):
            answers += group
            uids += [f"{view[0]}{pid}"] * len(group)
            gts += [gt_] * len(group)
            pair_ids += [pid] * len(group)
            views += [view] * len(group)
            faithful += [flag] * len(group)
            twins += [twin] * len(group)
    return make_batch(answers, uids, gts, pair_id=pair_ids, view=views, faithful=faithful, twin_answer=twins)


def test_co_rewarding_i_splits_pseudo_label_accuracy_by_faithful_pairs():
    batch = _pairs_batch([
        (["5", "5"], ["5", "6"], "5", True, "5"),  # faithful: labels 5 (tie: first generated) and 5, both right
        (["7", "7"], ["9", "9"], "7", False, "9"),  # the twin asks for 9: o1's label 9 (wrong, = twin), r1's 7 (right)
        (["2", "2"], ["8", "8"], "3", False, "4"),  # o2's label 8 (wrong, not the twin's 4), r2's 2 (wrong)
        (["1", "1"], ["1", "1"], "1", None, None),  # no flag: in pseudo_label_acc only
    ])
    out = co_rewarding_i(batch)
    check_output(out, 16)
    assert out.rows["pseudo_label"][:8] == ["5"] * 4 + ["9"] * 2 + ["7"] * 2
    assert out.metrics["pseudo_label_acc"] == 5 / 8  # o0, r0, r1, o3, r3
    assert out.metrics["pseudo_label_acc_faithful"] == 1.0  # o0, r0
    assert out.metrics["pseudo_label_acc_unfaithful"] == 0.25  # r1 of o1, r1, o2, r2
    assert out.metrics["pseudo_label_twin_acc_unfaithful"] == 0.5  # original groups o1 (9 = 9), o2 (8 != 4)
    # no unfaithful pair: no unfaithful share; no flag at all: no split
    faithful_only = co_rewarding_i(_pairs_batch([(["5"], ["5"], "5", True, "5"), (["2"], ["4"], "3", True, "3")]))  # labels 5, 5 right; 4, 2 wrong
    assert faithful_only.metrics["pseudo_label_acc_faithful"] == 0.5
    assert not {"pseudo_label_acc_unfaithful", "pseudo_label_twin_acc_unfaithful"} & set(faithful_only.metrics)
    plain = co_rewarding_i(make_batch(["5", "6"], ["o", "r"], ["5", "5"], pair_id=[0, 0], view=["original", "rephrased"]))
    assert not [k for k in plain.metrics if k.startswith("pseudo_label_") and k != "pseudo_label_acc"]
    # a pair without a ground truth is in neither accuracy share, but in the twin's
    no_gt = co_rewarding_i(_pairs_batch([(["5"], ["5"], None, False, "5")]))
    assert "pseudo_label_acc_unfaithful" not in no_gt.metrics and no_gt.metrics["pseudo_label_twin_acc_unfaithful"] == 1.0


def test_co_rewarding_i_needs_both_views():
    batch = make_batch(["1", "1"], ["u", "u"], pair_id=[3, 3], view=["original", "original"])
    with pytest.raises(ValueError, match="rephrased"):
        co_rewarding_i(batch)
    batch = make_batch(["1"], ["u"], pair_id=[3], view=["other"])
    with pytest.raises(ValueError, match="view"):
        co_rewarding_i(batch)


# --------------------------------------------------------------------------------------------
# co-rewarding-II
# --------------------------------------------------------------------------------------------


def test_co_rewarding_ii_teacher_labels():
    batch = make_batch(["4", "5", "4", "9"], ["p", "p", "q", "q"], ["4", "4", "9", "9"])
    teacher = teacher_batch(["9", "4", "5", "9", "4"], ["q", "p", "p", "q", "p"])
    out = co_rewarding_ii(batch, teacher)
    check_output(out, 4)
    assert out.rows["pseudo_label"] == ["4", "4", "9", "9"]
    assert out.scores.tolist() == [1, 0, 0, 1]
    assert out.metrics["pseudo_label_acc"] == 1.0
    assert out.metrics["majority_ratio"] == pytest.approx((2 / 3 + 1) / 2)


def test_co_rewarding_ii_errors():
    batch = make_batch(["4"], ["p"])
    with pytest.raises(ValueError, match="teacher"):
        co_rewarding_ii(batch)
    with pytest.raises(ValueError, match="no teacher rollouts"):
        co_rewarding_ii(batch, teacher_batch(["4"], ["other"]))


def iii_batches(teacher_rephrased: list[str | None]) -> tuple[Batch, Batch]:
    """One pair, 4 policy rollouts and 3 teacher rollouts per view; each view's rows its own uid."""
    views = ["original"] * 4 + ["rephrased"] * 4
    policy = make_batch(["1", "7", "1", "1", "5", "9", "9", "9"], ["o"] * 4 + ["r"] * 4, ["7"] * 8,
                        pair_id=[0] * 8, view=views)
    teacher = Batch(rows={"uid": ["o"] * 3 + ["r"] * 3, "pair_id": [0] * 6, "view": ["original"] * 3 + ["rephrased"] * 3,
                          "response_text": [resp(a) for a in ["5", "5", "6", *teacher_rephrased]],
                          "sample_index": [0, 1, 2, 0, 1, 2]})
    return policy, teacher


def test_co_rewarding_iii_labels_each_view_with_the_teachers_vote_on_its_twin():
    """Original: the teacher votes 7 on the rephrased twin (on the original itself it votes 5, the
    policy's own majority is 1, the policy's vote on the twin 9): only the 7 is rewarded. Rephrased:
    the teacher's vote on the original, 5. The release's metrics per view, worked out by hand."""
    policy, teacher = iii_batches(["7", "7", "1"])
    out = co_rewarding_iii(policy, teacher)
    check_output(out, 8)
    assert out.rows["pseudo_label"] == ["7"] * 4 + ["5"] * 4
    assert out.scores.tolist() == [0, 1, 0, 0, 1, 0, 0, 0]
    m = out.metrics
    assert m["pseudo_label_acc"] == 0.5 and m["majority_ratio"] == pytest.approx(2 / 3)  # the groups' labels 7 / 5
    assert (m["coreward/ori_pseudo_acc"], m["coreward/aug_pseudo_acc"]) == (1.0, 0.0)
    assert (m["coreward/ori_pseudo_count"], m["coreward/aug_pseudo_count"]) == (4.0, 0.0)
    assert (m["coreward/ori_pseudo_pass_rate"], m["coreward/aug_pseudo_pass_rate"]) == (0.25, 0.25)
    assert (m["coreward/ori_pseudo_nonempty_rate"], m["coreward/aug_pseudo_nonempty_rate"]) == (1.0, 1.0)
    # the policy's majority on the twin: 9 for the original, 1 for the rephrased; neither is the truth 7
    assert (m["coreward/ori_policypseudo_acc"], m["coreward/aug_policypseudo_acc"]) == (0.0, 0.0)


def test_co_rewarding_iii_without_a_teacher_answer_on_the_twin_rewards_nothing():
    policy, teacher = iii_batches([None, None, None])
    out = co_rewarding_iii(policy, teacher)
    assert out.rows["pseudo_label"][:4] == [None] * 4 and out.scores.tolist()[:4] == [0.0] * 4
    assert out.metrics["coreward/ori_pseudo_nonempty_rate"] == 0.0 and out.metrics["coreward/aug_pseudo_nonempty_rate"] == 1.0


def test_co_rewarding_ii_with_use_aug_takes_the_teachers_vote_on_the_other_view():
    """data.use_aug: the policy answers one view, the teacher the other; the pair joins them."""
    policy, teacher = iii_batches(["7", "7", "1"])
    out = co_rewarding_ii(policy.select([0, 1, 2, 3]), teacher.select([3, 4, 5]))
    assert out.rows["pseudo_label"] == ["7"] * 4 and out.scores.tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="no teacher rollouts"):
        co_rewarding_ii(policy.select([0, 1, 2, 3]), teacher.select([0, 1, 2]))  # the teacher answered the same view


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
