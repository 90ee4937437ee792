"""Pure tensor functions of the GRPO trainer (docs/method.md): group advantages, the PPO
clipped loss with dual clip, KL estimators, loss aggregation, per-token entropy / self-certainty /
log-probs from hidden states and the output embedding (chunked, logits never in full), the EMA-teacher weight schedule and LR schedules,
DAPO's overlong penalty and truncation mask, and the rollout correction's importance weights."""

from corewarding.algos.advantages import grpo_advantages, spread_over_tokens
from corewarding.algos.logits import TokenStats, token_stats
from corewarding.algos.losses import (
    AGG_MODES,
    AGG_SCOPES,
    KL_KINDS,
    PolicyTerms,
    agg_loss,
    agg_loss_denominator,
    agg_loss_parts,
    kl_penalty,
    masked_mean,
    masked_sum,
    policy_loss,
    policy_loss_terms,
)
from corewarding.algos.overlong import mask_truncated, overlong_penalty
from corewarding.algos.rollout_correction import IS_LEVELS, ISWeights, rollout_is_weights
from corewarding.algos.schedules import LR_STYLES, build_lr_scheduler, ema_update_, ema_weight, lr_lambda

__all__ = [
    "AGG_MODES",
    "AGG_SCOPES",
    "IS_LEVELS",
    "ISWeights",
    "KL_KINDS",
    "LR_STYLES",
    "PolicyTerms",
    "agg_loss",
    "agg_loss_denominator",
    "agg_loss_parts",
    "build_lr_scheduler",
    "ema_update_",
    "ema_weight",
    "grpo_advantages",
    "kl_penalty",
    "lr_lambda",
    "mask_truncated",
    "masked_mean",
    "masked_sum",
    "overlong_penalty",
    "policy_loss",
    "policy_loss_terms",
    "rollout_is_weights",
    "spread_over_tokens",
    "token_stats",
    "TokenStats",
]
