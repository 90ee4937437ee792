"""The policy-loss modes of verl's `actor.policy_loss.loss_mode` (docs/method.md, "Policy loss"):
``vanilla`` (PPO's clipped surrogate with dual clip, `losses.policy_loss_terms`), ``gspo`` (a
sequence-level importance ratio, Zheng et al. 2025) and ``cispo`` (a clipped, stop-gradient
importance weight times the log-prob, MiniMax-M1). Each gives per-token terms [N, R];
`policy_agg_mode` says how a mode's terms are aggregated, and `policy_loss` does both."""

from __future__ import annotations

import torch

from corewarding.algos.losses import PolicyTerms, agg_loss, masked_mean, policy_loss_terms

__all__ = ["POLICY_LOSS_MODES", "cispo_loss_terms", "gspo_loss_terms", "loss_mode_terms", "policy_agg_mode",
           "policy_loss"]

POLICY_LOSS_MODES = ("vanilla", "gspo", "cispo")
GSPO_AGG_MODE = "seq-mean-token-mean"  # verl aggregates GSPO's surrogate so, whatever loss_agg_mode says


def _token_advantages(advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """[N, R] advantages in logp's dtype (per-rollout [N] advantages spread over the tokens)."""
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    return advantages.to(logp.dtype)


def gspo_loss_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> PolicyTerms:
    """GSPO's per-token clipped surrogate, as verl's ``compute_policy_loss_gspo``.

    Each response i has the ratio s_i = exp(mean over its unmasked tokens of (logp - old_logp))
    (the length clamped to >= 1). Token t of it uses s_i in value with its own log-prob's
    gradient, log r_it = logp_it - sg(logp_it) + sg(log s_i) (sg: stop-gradient), clamped above at
    10 as verl does; then l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)), without dual
    clip. All tokens of a response share its ratio, so a response is clipped as a whole: outside
    the range on its advantage's side it has no gradient. Aggregated with seq-mean-token-mean
    (`policy_agg_mode`), an unclipped response's gradient is -A_i s_i mean_t grad logp_it = -A_i grad s_i,
    GSPO's. GSPO needs tiny clip ranges (verl's recipe: clip_low 3e-4, clip_high 4e-4); the
    caller passes them (`+preset=gspo` sets the keys).

    TRL's ``importance_sampling_level="sequence"`` differs: its ratio is one value per response with
    the gradient through the mean (the same gradient while unclipped), not clamped at 10, clipped
    with TRL's own ``epsilon`` = 0.2 / ``epsilon_high`` defaults unless set, and aggregated by its
    ``loss_type`` (default ``dapo``: the token sum over the batch's token count, so a response weighs
    by its length; ``grpo`` is seq-mean-token-mean)."""
    advantages = _token_advantages(advantages, logp)
    keep = mask.to(torch.bool)
    log_ratio = torch.where(keep, logp - old_logp, torch.zeros_like(logp))
    seq_log_ratio = log_ratio.sum(-1) / keep.sum(-1).clamp(min=1).to(logp.dtype)
    token_log_ratio = torch.clamp(logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1), max=10.0)
    ratio = torch.exp(token_log_ratio)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return PolicyTerms(torch.maximum(l1, l2), l2 > l1, torch.zeros_like(keep), log_ratio)


def cispo_loss_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> PolicyTerms:
    """CISPO's per-token loss (MiniMax-M1), as verl's ``compute_policy_loss_cispo``.

    l = -sg(w) A logp with w = clip(r, 1 - clip_low, 1 + clip_high), r = exp(logp - old_logp) (the
    log-ratio clamped to [-20, 20]): the clipped weight carries no gradient, so d l / d logp = -w A
    on every token, clipped or not (PPO's clip drops a clipped token's gradient). `clipped` marks
    the tokens whose weight differs from their ratio (verl's pg_clipfrac); no dual clip. verl reads
    clip_ratio_low / clip_ratio_high (null: clip_ratio) for both bounds; its CISPO example sets
    clip_ratio_low=10 (1 - 10 < 0: no lower clip) and clip_ratio_high=0.2. TRL's ``loss_type="cispo"``
    clips above only, at ``epsilon_high`` itself: w = min(r, epsilon_high) (ScaleRL's 5.0)."""
    advantages = _token_advantages(advantages, logp)
    log_ratio = torch.clamp(logp - old_logp, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio).detach()
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    losses = -weight * advantages * logp
    return PolicyTerms(losses, weight != ratio, torch.zeros_like(losses, dtype=torch.bool), log_ratio)


def loss_mode_terms(
    mode: str,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = 3.0,
) -> PolicyTerms:
    """The per-token terms of policy-loss `mode` (`clip_c`, the dual clip, is vanilla's only)."""
    if mode == "vanilla":
        return policy_loss_terms(logp, old_logp, advantages, clip_low, clip_high, clip_c)
    if mode == "gspo":
        return gspo_loss_terms(logp, old_logp, advantages, mask, clip_low, clip_high)
    if mode == "cispo":
        return cispo_loss_terms(logp, old_logp, advantages, clip_low, clip_high)
    raise ValueError(f"unknown policy loss mode {mode!r}; allowed: {', '.join(POLICY_LOSS_MODES)}")


def policy_agg_mode(mode: str, agg: str) -> str:
    """How `mode`'s surrogate is aggregated: GSPO's is seq-mean-token-mean (verl), the others use
    `agg` (actor.loss_agg_mode, which the entropy and KL terms always use)."""
    return GSPO_AGG_MODE if mode == "gspo" else agg


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = 3.0,
    agg: str = "token-mean",
    mode: str = "vanilla",
) -> tuple[torch.Tensor, dict[str, float]]:
    """`loss_mode_terms` aggregated with `policy_agg_mode(mode, agg)`, and float metrics
    ``pg_clipfrac`` (fraction of tokens where the clip bites), ``pg_clipfrac_lower`` (fraction where
    the dual clip bites) and ``ppo_kl`` (masked mean of old_logp - logp)."""
    terms = loss_mode_terms(mode, logp, old_logp, advantages, mask, clip_low, clip_high, clip_c)
    mask = mask.to(logp.dtype)
    with torch.no_grad():
        metrics = {
            "pg_clipfrac": float(masked_mean(terms.clipped.to(logp.dtype), mask)),
            "pg_clipfrac_lower": float(masked_mean(terms.dual_clipped.to(logp.dtype), mask)),
            "ppo_kl": float(masked_mean(-terms.log_ratio, mask)),
        }
    return agg_loss(terms.losses, mask, policy_agg_mode(mode, agg)), metrics
