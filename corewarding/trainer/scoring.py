"""A step's training scores: the method's reward plus DAPO's overlong penalty
(`reward_model.overlong_buffer`; validation keeps the plain ground-truth score), the names the
reward's metrics are logged under, and TTRL's split of the voted rollouts from the trained ones."""

from __future__ import annotations

from typing import Any

import torch

from corewarding.algos import grpo_advantages, overlong_penalty, spread_over_tokens
from corewarding.batch import Batch
from corewarding.config import Config
from corewarding.config.schema import OverlongBufferConfig
from corewarding.rewards.common import RewardOutput
from corewarding.trainer.monitor import group_metrics

# reward metric names (corewarding.rewards) -> logged names
REWARD_METRICS = {
    "score_mean": "reward/mean",
    "pseudo_label_acc": "reward/pseudo_label_acc",
    "answer_present": "reward/answer_present",
    "majority_ratio": "reward/majority_ratio",
    "gt_acc": "reward/gt_acc",
}


def reward_metric_name(key: str) -> str:
    """The logged name of a reward metric; a name with a section of its own (coreward/...) is kept."""
    return REWARD_METRICS.get(key, key if "/" in key else f"reward/{key}")


def first_of_each_group(groups: list[str], keep: int) -> list[int]:
    """Positions of the first `keep` rows of each group, in their order (TTRL trains on the first n of
    the N rollouts it voted over: its fork's `select_top_k_per_prompt`)."""
    seen: dict[str, int] = {}
    positions = []
    for position, group in enumerate(groups):
        seen[group] = seen.get(group, 0) + 1
        if seen[group] <= keep:
            positions.append(position)
    return positions


def training_scores(scores: torch.Tensor, response_mask: torch.Tensor, overlong: OverlongBufferConfig,
                    max_response_length: int) -> tuple[torch.Tensor, dict[str, float]]:
    """(the scores the advantages are computed from, the overlong penalty's metrics)."""
    scores = scores.to(torch.float32)
    if not overlong.enable:
        return scores, {}
    penalty = overlong_penalty(response_mask.sum(-1), max_response_length, overlong.len, overlong.penalty_factor)
    metrics = {"reward/overlong_penalty": float(penalty.mean()),
               "reward/overlong_penalised_ratio": float((penalty < 0).float().mean())}
    return scores + penalty, metrics


def score_rollouts(reward: RewardOutput, rollouts: Batch, config: Config,
                   metrics: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the training scores, the GRPO advantages per uid); both into `rollouts` (the advantages spread
    over each response's tokens), the reward's and the collapse monitor's group metrics into `metrics`."""
    scores, penalty_metrics = training_scores(reward.scores, rollouts.tensors["response_mask"],
                                              config.reward_model.overlong_buffer, config.data.max_response_length)
    metrics.update(penalty_metrics)
    advantages = grpo_advantages(scores, rollouts.rows["uid"], norm_by_std=config.algorithm.norm_adv_by_std_in_grpo)
    rollouts.tensors["scores"] = scores
    rollouts.tensors["advantages"] = spread_over_tokens(advantages, rollouts.tensors["response_mask"])
    metrics.update({reward_metric_name(key): value for key, value in reward.metrics.items()})
    metrics.update(group_metrics(reward.rows["answer"], rollouts.rows["uid"],
                                 rollouts.rows.get("ground_truth") or [None] * len(rollouts), scores.tolist()))
    return scores, advantages
