"""Pure tensor functions of the GRPO trainer (docs/method.md): group advantages, the PPO
clipped loss with dual clip and the GSPO / CISPO policy-loss modes, KL estimators, loss aggregation,
per-token entropy / self-certainty / log-probs from hidden states and the output embedding (chunked,
logits never in full), the EMA-teacher weight schedule and LR schedules, DAPO's overlong penalty and
truncation mask, and the rollout correction's importance weights."""

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
    policy_loss_terms,
)
from corewarding.algos.overlong import mask_truncated, overlong_penalty
from corewarding.algos.policy_modes import (
    POLICY_LOSS_MODES,
    cispo_loss_terms,
    gspo_loss_terms,
    loss_mode_terms,
    policy_agg_mode,
    policy_loss,
)
from corewarding.algos.rollout_correction import IS_LEVELS, ISWeights, rollout_is_weights
from corewarding.algos.schedules import LR_STYLES, build_lr_scheduler, ema_update_, ema_weight, lr_lambda

__all__ = [
    "AGG_MODES",
    "AGG_SCOPES",
    "IS_LEVELS",
    "ISWeights",
    "KL_KINDS",
    "LR_STYLES",
    "POLICY_LOSS_MODES",
    "PolicyTerms",
    "agg_loss",
    "agg_loss_denominator",
    "agg_loss_parts",
    "build_lr_scheduler",
    "cispo_loss_terms",
    "ema_update_",
    "ema_weight",
    "grpo_advantages",
    "gspo_loss_terms",
    "kl_penalty",
    "loss_mode_terms",
    "lr_lambda",
    "mask_truncated",
    "masked_mean",
    "masked_sum",
    "overlong_penalty",
    "policy_agg_mode",
    "policy_loss",
    "policy_loss_terms",
    "rollout_is_weights",
    "spread_over_tokens",
    "token_stats",
    "TokenStats",
]
