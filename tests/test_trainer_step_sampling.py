"""The training step's dynamic sampling without Ray (algorithm.filter_groups on the scripted
engine): which groups, pairs and teacher rollouts are kept, its limit, and a resume with another
data.seed, which the loader's state in a checkpoint refuses in one line."""

from __future__ import annotations

import pytest

from corewarding.data import DataError
from scripted_trainer import N, make_trainer, rows_by_uid
from scripted_trainer import data  # fixture


def filtered_trainer(tiny_model_path, data, tmp_path, method: str, *extra: str):
    """Dynamic sampling over the unshuffled items 0..7, 2 per generation batch and 2 groups per
    step; the policy answers items 0, 1, 2 with one answer ("5") on all N rollouts."""
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, method, "algorithm.filter_groups.enable=True",
                                            "data.gen_batch_size=2", *extra)
    default = engine.policy_answer
    engine.policy_answer = lambda info, j: "5" if info["index"] <= 2 else default(info, j)
    return trainer, workers, engine


def test_dynamic_sampling_keeps_groups_with_a_spread(tiny_model_path, data, tmp_path):
    """Majority voting, metric score: items 0, 1, 2 score 1 on all rollouts (dropped); items 3..7
    answer 5, 5, 7, 8 -> 1, 1, 0, 0 (kept). Step 1 takes 3 generation batches (items 0-1, 2-3, 4-5),
    keeps 3, 4 and 5, trims 5 (the update sees exactly 2 groups, as verl); step 2 takes items 6-7."""
    trainer, workers, _ = filtered_trainer(tiny_model_path, data, tmp_path, "majority_voting")
    batches = trainer._batch_stream()
    first = trainer.train_step(next(batches), batches)
    assert trainer.loader.state_dict()["position"] == 3  # the next step starts at items 6-7
    assert [first[k] for k in ("train/num_gen_batches", "filter_groups/kept", "filter_groups/dropped",
                               "filter_groups/trimmed")] == [3, 3, 3, 1]
    assert workers.calls == ["generate:policy"] * 3 + ["log_prob:ref", "update_actor"]
    update = workers.updates[0]
    assert len(update) == 2 * N and workers.rollouts_per_prompt == N
    assert sorted(set(update.rows["index"])) == [3, 4]
    for uid, scores in rows_by_uid(update, "scores").items():
        assert sorted(scores) == [0.0, 0.0, 1.0, 1.0], uid
    assert first["reward/mean"] == pytest.approx(0.5)  # over the trained groups
    second = trainer.train_step(next(batches), batches)
    assert second["train/num_gen_batches"] == 1 and sorted(set(workers.updates[1].rows["index"])) == [6, 7]


def test_dynamic_sampling_limit_is_a_clear_error(tiny_model_path, data, tmp_path):
    trainer, _, _ = filtered_trainer(tiny_model_path, data, tmp_path, "majority_voting",
                                     "algorithm.filter_groups.max_num_gen_batches=2")
    batches = trainer._batch_stream()
    with pytest.raises(DataError, match=r"step 1: algorithm.filter_groups kept 1 of the data.train_batch_size=2 groups "
                                        r"after max_num_gen_batches=2 .*max_num_gen_batches \(0: no limit\)"):
        trainer.train_step(next(batches), batches)


def test_dynamic_sampling_keeps_a_pair_with_both_views(tiny_model_path, data, tmp_path):
    """Co-rewarding-I (per-view loss): items 0, 1, 2 answer 5 on both views, so every rollout agrees
    with the other view's label (all 1): both groups constant, the pair is dropped. Items 3..7:
    originals 5, 5, 7, 8 against the rephrased label 9 score 0 (constant), rephrased 9, 9, 9, 5
    against 5 score 0, 0, 0, 1: the pair is kept with both its groups."""
    trainer, workers, engine = filtered_trainer(tiny_model_path, data, tmp_path, "co_reward",
                                                "actor_rollout_ref.actor.co_reward_loss=per_view")
    batches = trainer._batch_stream()
    metrics = trainer.train_step(next(batches), batches)
    assert [metrics[k] for k in ("train/num_gen_batches", "filter_groups/kept", "filter_groups/dropped")] == [3, 3, 3]
    update = workers.updates[0]
    assert len(update) == 2 * 2 * N and workers.rollouts_per_prompt == 2 * N
    pairs: dict = {}
    for pair, view in zip(update.rows["pair_id"], update.rows["view"]):
        pairs.setdefault(pair, set()).add(view)
    assert pairs == {"3#1": {"original", "rephrased"}, "4#2": {"original", "rephrased"}}
    for worker_rows in update.chunk(2):  # the per-view loss: every worker gets one group of each view
        assert sorted(worker_rows.rows["view"]) == ["original"] * N + ["rephrased"] * N


@pytest.mark.parametrize("metric", ["score", "acc"])
def test_dynamic_sampling_teacher_rollouts(metric, tiny_model_path, data, tmp_path):
    """Co-rewarding-II. score: the reward needs the teacher's "5" votes for every prompt, so the
    teacher answers each generation batch; acc (ground truth): the teacher answers the kept prompts
    only, once. Items 0, 1, 2: all rollouts "5" (score 1, acc 0: constant); items 3..7 answer the
    ground truth once (acc 0, 0, 0, 1) after 5, 5, 7 (score 1, 1, 0, 0: the truth is not 5)."""
    trainer, workers, engine = filtered_trainer(tiny_model_path, data, tmp_path, "co_rewarding_II",
                                                f"algorithm.filter_groups.metric={metric}")
    answers = ["5", "5", "7"]
    engine.policy_answer = lambda info, j: "5" if info["index"] <= 2 else (info["ground_truth"] if j == 3 else answers[j])
    assert all(str(trainer.loader.dataset[i]["ground_truth"]) not in ("5", "7") for i in range(3, 6))
    batches = trainer._batch_stream()
    metrics = trainer.train_step(next(batches), batches)
    assert metrics["train/num_gen_batches"] == 3
    teacher_calls = [c for c in engine.calls if c["role"] == "teacher"]
    if metric == "score":
        assert workers.calls[:6] == ["generate:policy", "update_teacher", "generate:teacher",
                                     "generate:policy", "generate:teacher", "generate:policy"]
        assert [len(c["views"]) for c in teacher_calls] == [2, 2, 2]
    else:
        assert workers.calls[:5] == ["generate:policy", "update_teacher", "generate:policy", "generate:policy",
                                     "generate:teacher"]
        assert [len(c["views"]) for c in teacher_calls] == [2]
    update = workers.updates[0]
    assert sorted(set(update.rows["index"])) == [3, 4]
    for scores in rows_by_uid(update, "scores").values():
        assert sorted(scores) == [0.0, 0.0, 1.0, 1.0]  # the trained reward is the teacher's label either way


def test_resume_with_another_data_seed_is_one_line_unless_allowed(tiny_model_path, data, tmp_path):
    """The loader's state in a checkpoint carries data.seed (and data.p): a resume with another
    seed stops with one CheckpointError line naming the override, which then lets it through."""
    from corewarding.trainer.checkpoint import CheckpointError

    saved, _, _ = make_trainer(tiny_model_path, data, tmp_path / "a", "naive", "data.seed=1")
    state = {"dataloader": saved.loader.state_dict(), "method": "gt", "world_size": 2, "global_step": 1}
    other, _, _ = make_trainer(tiny_model_path, data, tmp_path / "b", "naive", "data.seed=2")
    with pytest.raises(CheckpointError, match=r"data.seed=1 but this run has data.seed=2.*"
                                              r"data.resume_allow_sampling_change=true") as err:
        other.load_checkpoint(tmp_path / "a", state)
    assert "\n" not in str(err.value)
    allowed, _, _ = make_trainer(tiny_model_path, data, tmp_path / "c", "naive", "data.seed=2",
                                 "data.resume_allow_sampling_change=true")
    allowed.load_checkpoint(tmp_path / "a", state)
    assert allowed.global_step == 1
