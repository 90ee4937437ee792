"""A step's training scores: the method's reward plus DAPO's overlong penalty
(`reward_model.overlong_buffer`; validation keeps the plain ground-truth score), and the names the
reward's metrics are logged under."""

from __future__ import annotations

import torch

from corewarding.algos import overlong_penalty
from corewarding.config.schema import OverlongBufferConfig

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
