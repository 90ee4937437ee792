"""Co-rewarding-I (the cross-view vote, faithful-pair accuracies), -II (the teacher's vote, use_aug)
and -III (the teacher's vote on the twin view, its metrics per view) on hand-made batches."""

from __future__ import annotations

import pytest

from corewarding.batch import Batch
from corewarding.rewards import co_rewarding_i, co_rewarding_ii, co_rewarding_iii

from reward_batches import check_output, make_batch, resp, teacher_batch
from reward_batches import generous_default_timeout  # fixture


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
