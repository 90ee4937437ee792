"""The driver's training step without Ray: `Trainer.train_step` on the recording worker group and
scripted engine of scripted_trainer.py, every reward and advantage worked out by hand: the order of
the worker calls (EMA update before the teacher's rollouts), which prompts the policy and the
teacher see (`data.use_aug`, `data.p`), `teacher_n`, `update_interval`, the EMA step index, the
old log-prob pass, Co-rewarding-I's and -III's per-view groups and their mini-batches of both views.
"""

from __future__ import annotations

import math

import pytest

from corewarding.algos import ema_weight
from corewarding.workers.update.micro_batches import mini_batch_rows
from scripted_trainer import N, make_trainer, rows_by_uid, run_steps
from scripted_trainer import data  # fixture


def test_co_rewarding_ii_order_teacher_view_and_interval(tiny_model_path, data, tmp_path):
    """update_interval=2: the EMA update comes at step 2 only (k = 1: the steps before it), after the
    policy's rollouts and before the teacher's; with data.use_aug and data.p=0 the policy answers the
    original question and the teacher the rephrased one, teacher_n times."""
    trainer, workers, engine = make_trainer(
        tiny_model_path, data, tmp_path, "co_rewarding_II", "data.use_aug=True", "data.p=0",
        "actor_rollout_ref.rollout.teacher_n=3", "actor_rollout_ref.ref.sliding_average.update_interval=2",
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9", "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
    )
    metrics = run_steps(trainer, 2)
    one_step = ["generate:policy", "generate:teacher", "log_prob:ref", "update_actor"]  # on-policy: no old pass
    with_update = ["generate:policy", "update_teacher", "generate:teacher", "log_prob:ref", "update_actor"]
    assert workers.calls == one_step + with_update
    assert workers.teacher_weights == [pytest.approx(ema_weight(1, 4, 0.9, 0.99))]
    assert "teacher/ema_weight" not in metrics[0] and metrics[1]["teacher/ema_weight"] == pytest.approx(ema_weight(1, 4, 0.9, 0.99))

    policy_calls = [c for c in engine.calls if c["role"] == "policy"]
    teacher_calls = [c for c in engine.calls if c["role"] == "teacher"]
    assert all(set(c["views"]) == {"original"} and c["sampling"].n == N for c in policy_calls)
    assert all(set(c["views"]) == {"rephrased"} and c["sampling"].n == 3 for c in teacher_calls)

    # the teacher's unanimous "5" is every policy rollout's label: original-view answers 5, 5, 7, 8
    # score 1, 1, 0, 0 -> mean 0.5, unbiased std sqrt(1/3) -> A = +-0.5 / (sqrt(1/3) + 1e-6)
    update = workers.updates[0]
    assert workers.rollouts_per_prompt == N
    scores, advantages = rows_by_uid(update, "scores"), rows_by_uid(update, "advantages")
    assert len(scores) == 2
    expected = 0.5 / (3 ** -0.5 + 1e-6)
    for uid in scores:
        assert sorted(scores[uid]) == [0.0, 0.0, 1.0, 1.0]
        per_rollout = sorted(row[0] for row in advantages[uid])
        assert per_rollout == pytest.approx([-expected, -expected, expected, expected], rel=1e-6)
    assert metrics[0]["reward/mean"] == pytest.approx(0.5)


@pytest.mark.parametrize("swap_p, policy_view, teacher_view", [(None, "rephrased", "original"), ("0", "original", "rephrased")],
                         ids=["default-p1-release", "p0"])
def test_use_aug_views_follow_data_p(swap_p, policy_view, teacher_view, tiny_model_path, data, tmp_path):
    """data.use_aug: by default (data.p=1.0, the release) every pair is swapped, so the policy
    trains on the rephrased question and the teacher answers the original; data.p=0 is the reverse.
    The teacher's unanimous 5 labels the policy's answers: rephrased 9, 9, 9, 5 score 1/4 on
    average, original 5, 5, 7, 8 score 1/2."""
    extra = ["data.use_aug=True"] + ([f"data.p={swap_p}"] if swap_p is not None else [])
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, "co_rewarding_II", *extra)
    metrics = run_steps(trainer, 2)
    for call in engine.calls:
        assert set(call["views"]) == {policy_view if call["role"] == "policy" else teacher_view}, call["role"]
    for update in workers.updates:
        assert set(update.rows["view"]) == {policy_view} and set(update.rows["views_swapped"]) == {swap_p is None}
    assert [m["reward/mean"] for m in metrics] == pytest.approx([0.25 if policy_view == "rephrased" else 0.5] * 2)


def test_ema_step_counts_from_zero(tiny_model_path, data, tmp_path):
    """The release's index: the teacher update of step k uses a_{k-1}, so the first one is exactly
    alpha_start and the second a_1 of the cosine over the run's 4 steps."""
    trainer, workers, _ = make_trainer(
        tiny_model_path, data, tmp_path, "co_rewarding_II",
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9", "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
    )
    run_steps(trainer, 2)
    assert workers.teacher_weights[0] == 0.9
    assert workers.teacher_weights[1] == pytest.approx(0.99 - 0.09 / 2 * (1 + math.cos(math.pi / 4)))


def test_co_rewarding_i_groups_each_view_separately(tiny_model_path, data, tmp_path):
    """Originals (5, 5, 7, 8) are scored against the rephrased majority 9: all 0, advantage 0.
    Rephrased (9, 9, 9, 5) against the original majority 5: scores 0, 0, 0, 1, mean 1/4, unbiased
    std 1/2, A = (-1/2, -1/2, -1/2, 3/2). One group for both views would give other numbers."""
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, "co_reward")
    run_steps(trainer, 1)
    assert workers.calls == ["generate:policy", "log_prob:ref", "update_actor"]
    update = workers.updates[0]
    assert workers.rollouts_per_prompt == 2 * N  # a mini-batch holds both views of its pairs
    views = dict(zip(update.rows["uid"], update.rows["view"]))
    scores, advantages = rows_by_uid(update, "scores"), rows_by_uid(update, "advantages")
    assert sorted(views.values()) == ["original", "original", "rephrased", "rephrased"]
    for uid, view in views.items():
        per_rollout = sorted(row[0] for row in advantages[uid])
        if view == "original":
            assert scores[uid] == [0.0] * N and per_rollout == [0.0] * N
        else:
            assert sorted(scores[uid]) == [0.0, 0.0, 0.0, 1.0]
            assert per_rollout == pytest.approx([-0.5, -0.5, -0.5, 1.5], rel=1e-5)


@pytest.mark.parametrize(("method", "extra", "old_pass"), [
    ("naive", [], False),  # one optimizer step per batch: the update's own forward gives the old log-probs
    ("naive", ["actor_rollout_ref.actor.on_policy_shortcut=False"], True),
    ("naive", ["actor_rollout_ref.actor.ppo_epochs=2"], True),
    ("naive", ["actor_rollout_ref.actor.ppo_mini_batch_size=1"], True),
    ("self_certainty", [], True),  # the reward reads the policy's per-token statistics before the update
    ("entropy", [], True),
])
def test_old_log_prob_pass_only_when_needed(tiny_model_path, data, tmp_path, method, extra, old_pass):
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, method, *extra)
    (metrics,) = run_steps(trainer, 1)
    assert ("log_prob:actor" in workers.calls) == old_pass
    assert ("old_log_probs" in workers.updates[0].tensors) == old_pass
    assert metrics["actor/entropy"] == pytest.approx(0.5)  # from the old pass or from the update


def test_per_view_loss_gives_every_worker_both_views_and_monitor_metrics(tiny_model_path, data, tmp_path):
    """co_reward_loss=per_view: rows carry view_id, and each worker's share holds as many groups of
    each view (the release pairs micro-batches of the two views); whole groups stay on one worker.
    Every step logs the collapse monitor's metrics."""
    trainer, workers, _ = make_trainer(tiny_model_path, data, tmp_path, "co_reward",
                                       "actor_rollout_ref.actor.co_reward_loss=per_view")
    (metrics,) = run_steps(trainer, 1)
    update = workers.updates[0]
    for share in update.chunk(2):
        assert sorted(share["view_id"].tolist()) == [0] * N + [1] * N
        uids = share.rows["uid"]
        assert all(uids.count(u) == N for u in uids)  # whole groups
    for key in ("monitor/majority_ratio", "monitor/distinct_answers", "monitor/zero_adv_groups", "monitor/collapse"):
        assert key in metrics
    assert metrics["monitor/majority_ratio"] == pytest.approx((2 / 4 + 3 / 4) / 2)  # originals 5,5,7,8; rephrased 9,9,9,5
    assert metrics["monitor/zero_adv_groups"] == pytest.approx(0.5)  # the originals all score 0


@pytest.mark.parametrize("method, extra", [
    ("co_reward", []),  # the joint loss, Co-rewarding-I's default
    ("co_reward", ["actor_rollout_ref.actor.co_reward_loss=per_view"]),
    ("co_rewarding_III", ["data.use_aug=True"]),
])
def test_every_mini_batch_holds_both_views_of_its_pairs(tiny_model_path, data, tmp_path, method, extra):
    """Four pairs, mini-batches of two: each worker gets whole pairs, its originals then their twins
    in the same order, so each of its mini-batches trains both views of the same pairs (the release
    pairs the i-th mini-batches of the two views)."""
    trainer, workers, _ = make_trainer(tiny_model_path, data, tmp_path, method, "data.train_batch_size=4",
                                       "actor_rollout_ref.actor.ppo_mini_batch_size=2", *extra)
    run_steps(trainer, 1)
    update = workers.updates[0]
    mini_rows = 2 * workers.rollouts_per_prompt // 2  # 2 pairs x 2 views x N rollouts over 2 workers
    for share in update.chunk(2):
        views, pairs = share.tensors["view_id"].tolist(), share.rows["pair_id"]
        minis = mini_batch_rows(len(share), mini_rows, views, shuffle=False)
        assert len(minis) == 2
        for rows in minis:
            assert sorted(views[r] for r in rows) == [0] * N + [1] * N
            assert {pairs[r] for r in rows if views[r] == 0} == {pairs[r] for r in rows if views[r] == 1}


def test_co_rewarding_iii_one_ema_update_then_the_teacher_on_both_views(tiny_model_path, data, tmp_path):
    """Per step: the policy answers both views, the EMA update comes once and before the teacher's
    rollouts, which cover both views in one call (n each); every group is one (view, question) of
    4 rollouts, never pooled across the views; the update gets both views with 2N rollouts per prompt."""
    trainer, workers, engine = make_trainer(
        tiny_model_path, data, tmp_path, "co_rewarding_III", "data.use_aug=True",
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9", "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
    )
    metrics = run_steps(trainer, 2)
    one_step = ["generate:policy", "update_teacher", "generate:teacher", "log_prob:ref", "update_actor"]
    assert workers.calls == one_step * 2
    assert workers.teacher_weights == pytest.approx([ema_weight(0, 4, 0.9, 0.99), ema_weight(1, 4, 0.9, 0.99)])
    for role in ("policy", "teacher"):
        calls = [c for c in engine.calls if c["role"] == role]
        assert len(calls) == 2 and all(sorted(c["views"]) == ["original"] * 2 + ["rephrased"] * 2 for c in calls)
        assert all(c["sampling"].n == N for c in calls)

    # the teacher's unanimous "5" labels both views: originals 5, 5, 7, 8 -> 1, 1, 0, 0; rephrased
    # 9, 9, 9, 5 -> 0, 0, 0, 1 (mean 0.25, unbiased std 0.5); pooled per pair they would share a mean
    update = workers.updates[0]
    assert workers.rollouts_per_prompt == 2 * N
    scores, advantages = rows_by_uid(update, "scores"), rows_by_uid(update, "advantages")
    views = {uid: {v for u, v in zip(update.rows["uid"], update.rows["view"]) if u == uid} for uid in scores}
    assert len(scores) == 4 and all(len(v) == 1 for v in views.values())
    for uid, values in scores.items():
        (view,) = views[uid]
        if view == "original":
            assert sorted(values) == [0.0, 0.0, 1.0, 1.0]
            expected = 0.5 / (3 ** -0.5 + 1e-6)
            assert sorted(row[0] for row in advantages[uid]) == pytest.approx([-expected] * 2 + [expected] * 2, rel=1e-6)
        else:
            assert sorted(values) == [0.0, 0.0, 0.0, 1.0]
            assert sorted(row[0] for row in advantages[uid]) == pytest.approx([-0.25 / (0.5 + 1e-6)] * 3 + [0.75 / (0.5 + 1e-6)],
                                                              rel=1e-6)
    assert metrics[0]["coreward/ori_pseudo_pass_rate"] == 0.5 and metrics[0]["coreward/aug_pseudo_pass_rate"] == 0.25
    assert metrics[0]["teacher/ema_weight"] == pytest.approx(0.9)
