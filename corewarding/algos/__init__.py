"""Pure tensor functions of the GRPO trainer (SPEC.md section 2): group advantages, the PPO
clipped loss with dual clip, KL estimators, loss aggregation, per-token entropy / self-certainty /
log-probs from logits, the EMA-teacher weight schedule and LR schedules."""

from corewarding.algos.advantages import grpo_advantages, spread_over_tokens
from corewarding.algos.logits import entropy_from_logits, logprobs_from_logits, self_certainty_from_logits
from corewarding.algos.losses import (
    AGG_MODES,
    KL_KINDS,
    agg_loss,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss,
)
from corewarding.algos.schedules import LR_STYLES, build_lr_scheduler, ema_update_, ema_weight, lr_lambda

__all__ = [
    "AGG_MODES",
    "KL_KINDS",
    "LR_STYLES",
    "agg_loss",
    "build_lr_scheduler",
    "ema_update_",
    "ema_weight",
    "entropy_from_logits",
    "grpo_advantages",
    "kl_penalty",
    "logprobs_from_logits",
    "lr_lambda",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "self_certainty_from_logits",
    "spread_over_tokens",
]
