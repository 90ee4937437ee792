"""The training step's rewards without Ray, on the scripted engine: DAPO's overlong penalty added
to every method's score, the truncated flag of the rollouts, and TTRL's vote over n_votes with an
update on the first n_samples."""

from __future__ import annotations

import pytest
import torch

from corewarding.algos import grpo_advantages
from scripted_trainer import POLICY_ANSWERS, R, make_trainer, rows_by_uid, run_steps
from scripted_trainer import data  # fixture


@pytest.mark.parametrize("method", ["naive", "majority_voting", "self_certainty", "entropy", "co_reward", "co_rewarding_II"])
def test_overlong_penalty_is_added_to_every_methods_score(tiny_model_path, data, tmp_path, monkeypatch, method):
    """reward_model.overlong_buffer: every rollout's training score is the method's score plus
    min(-(L - (R - len)) / len * penalty_factor, 0), before the GRPO advantages; answers of different
    lengths make the penalty differ within a group, so the advantages move too."""
    monkeypatch.setitem(POLICY_ANSWERS, "original", ["5", "5", "17", "8888"])
    monkeypatch.setitem(POLICY_ANSWERS, "rephrased", ["9", "999", "9", "5"])
    plain_trainer, plain, _ = make_trainer(tiny_model_path, data, tmp_path / "plain", method)
    run_steps(plain_trainer, 1)
    trainer, shaped, _ = make_trainer(tiny_model_path, data, tmp_path / "shaped", method,
                                      "reward_model.overlong_buffer.enable=true", "reward_model.overlong_buffer.len=10",
                                      "reward_model.overlong_buffer.penalty_factor=0.5")
    (metrics,) = run_steps(trainer, 1)
    before, after = plain.updates[0], shaped.updates[0]
    assert after.rows["uid"] == before.rows["uid"]
    lengths = after["response_mask"].sum(-1).double()
    penalty = torch.clamp(-(lengths - (R - 10)) / 10 * 0.5, max=0.0)  # worked out here, not by the trainer's function
    assert len(set(penalty.tolist())) > 1 and (penalty < 0).all()
    torch.testing.assert_close(after["scores"].double(), before["scores"].double() + penalty, rtol=0, atol=1e-6)
    advantages = grpo_advantages(after["scores"], after.rows["uid"])
    torch.testing.assert_close(after["advantages"][:, 0], advantages, rtol=0, atol=1e-6)  # first token: the rollout's A
    assert not torch.allclose(after["advantages"][:, 0], before["advantages"][:, 0], atol=1e-3)
    assert metrics["reward/overlong_penalty"] == pytest.approx(float(penalty.mean()))
    assert metrics["reward/overlong_penalised_ratio"] == 1.0
    assert "reward/overlong_penalty" not in run_steps(plain_trainer, 1)[0]


def test_rollouts_say_which_responses_were_truncated(tiny_model_path, data, tmp_path, monkeypatch):
    """`truncated`: the response filled data.max_response_length without stopping (here: one answer
    too long for R tokens, cut by the runner; the others end with EOS)."""
    monkeypatch.setitem(POLICY_ANSWERS, "original", ["5", "5", "1" * 40, "8"])
    trainer, workers, _ = make_trainer(tiny_model_path, data, tmp_path, "naive",
                                       "actor_rollout_ref.actor.mask_truncated_completions=true")
    run_steps(trainer, 1)
    update = workers.updates[0]
    full = update["response_mask"].sum(-1) == R
    assert update["truncated"].tolist() == full.tolist() and 0 < int(full.sum()) < len(update)


def test_ttrl_votes_over_n_votes_and_updates_on_the_first_n_samples(tiny_model_path, data, tmp_path):
    """TTRL's split: 5 rollouts drawn per prompt, the majority over all 5 is the label ("5"), the
    update gets the first 2 of each prompt ("7", "7": reward 0). A vote over the 2 kept would say "7"."""
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, "majority_voting", "ttrl.enable=True",
                                            "ttrl.n_votes_per_prompt=5", "ttrl.n_samples_per_prompt=2")
    assert trainer.config.actor_rollout_ref.rollout.n == 5
    engine.policy_answer = lambda info, j: ["7", "7", "5", "5", "5"][j]
    metrics = run_steps(trainer, 1)[0]
    assert [c["sampling"].n for c in engine.calls if c["role"] == "policy"] == [5]
    update = workers.updates[0]
    assert workers.rollouts_per_prompt == 2 and len(update) == 4
    assert all(len(rows) == 2 for rows in rows_by_uid(update, "scores").values())
    assert update.tensors["scores"].tolist() == [0.0] * 4
    assert metrics["reward/majority_ratio"] == pytest.approx(0.6)  # 3 of the 5 voted


def test_ttrl_refuses_a_reward_that_reads_more_than_the_answers(tiny_model_path, data, tmp_path):
    from corewarding.config import ConfigError

    with pytest.raises(ConfigError, match=r"ttrl.enable=True with method self_certainty: .*majority_voting"):
        make_trainer(tiny_model_path, data, tmp_path, "self_certainty", "ttrl.enable=True",
                     "ttrl.n_votes_per_prompt=4", "ttrl.n_samples_per_prompt=2")
    with pytest.raises(ConfigError, match=r"ttrl.n_samples_per_prompt=8 > ttrl.n_votes_per_prompt=4"):
        make_trainer(tiny_model_path, data, tmp_path, "majority_voting", "ttrl.enable=True",
                     "ttrl.n_votes_per_prompt=4", "ttrl.n_samples_per_prompt=8")
