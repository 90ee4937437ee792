"""The ground-truth reward and majority voting on hand-made batches: string and math equivalence, ties
to the answer generated first (also for the teacher's and the cross-view vote), missing answers."""

from __future__ import annotations

import pytest

from corewarding.batch import Batch
from corewarding.rewards import answers as answers_mod
from corewarding.rewards import co_rewarding_i, co_rewarding_ii, gt, majority_voting

from reward_batches import check_output, make_batch, resp
from reward_batches import generous_default_timeout  # fixture


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
