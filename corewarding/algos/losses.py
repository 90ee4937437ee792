"""Masked reductions, the PPO clipped policy loss (with dual clip), KL estimators and loss
aggregation. Semantics follow verl's `core_algos` / `torch_functional` (docs/method.md); the other
policy-loss modes (GSPO, CISPO) and the aggregated `policy_loss` are in `policy_modes.py`."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "masked_sum",
    "masked_mean",
    "agg_loss",
    "agg_loss_denominator",
    "agg_loss_parts",
    "PolicyTerms",
    "policy_loss_terms",
    "kl_penalty",
    "AGG_MODES",
    "AGG_SCOPES",
    "KL_KINDS",
]

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# Over what a micro-batch's loss is aggregated: the whole mini-batch on all ranks (exact), or the
# micro-batch itself, weighted by its share of rows (the release, verl 0.4).
AGG_SCOPES = ("mini_batch", "micro_batch")
KL_BASE_KINDS = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")
# verl's straight-through variants: `<kind>+` has the value of <kind> and the gradient of k2
KL_KINDS = (*KL_BASE_KINDS, *(f"{kind}+" for kind in KL_BASE_KINDS))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Sum of `x * mask` (over everything, or over `dim`)."""
    prod = x * mask
    return prod.sum() if dim is None else prod.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(x * mask) / (sum(mask) + 1e-8), as verl: an all-zero mask gives 0, not NaN."""
    denom = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / (denom + 1e-8)


def agg_loss_denominator(mask: torch.Tensor, mode: str = "token-mean", scale_factor: float | None = None) -> torch.Tensor:
    """What `agg_loss` divides by: the unmasked token count (``token-mean``), the number of
    sequences with at least one unmasked token (the ``seq-mean-*`` modes, as current verl), times
    `scale_factor` for ``seq-mean-token-sum-norm`` (None: the response width, mask.shape[-1])."""
    if mode == "token-mean":
        return mask.sum()
    if mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        return (mask.sum(dim=-1) > 0).sum()
    if mode == "seq-mean-token-sum-norm":
        return (mask.sum(dim=-1) > 0).sum() * (mask.shape[-1] if scale_factor is None else scale_factor)
    raise ValueError(f"unknown loss aggregation mode {mode!r}; allowed: {', '.join(AGG_MODES)}")


def agg_loss_parts(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
                   scale_factor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(numerator, denominator) of `agg_loss`: the aggregate is numerator / denominator, and both
    add up over micro-batches and ranks, so a mini-batch's exact aggregate can be formed from parts
    (numerators summed, divided by the summed denominators).

    - ``token-mean``: sum of unmasked token losses / their count.
    - ``seq-mean-token-sum``: sum of each sequence's token sum / number of sequences.
    - ``seq-mean-token-mean``: sum of each sequence's token mean / number of sequences.
    - ``seq-mean-token-sum-norm`` (Dr. GRPO): sum of each sequence's token sum / (number of
      sequences x `scale_factor`), a constant instead of each sequence's length.
    """
    denominator = agg_loss_denominator(mask, mode, scale_factor).to(loss.dtype)
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        return masked_sum(loss, mask), denominator
    token_sums = (loss * mask).sum(dim=-1)
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        return token_sums.sum(), denominator
    return (token_sums / (mask.sum(dim=-1) + 1e-8)).sum(), denominator


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
             scale_factor: float | None = None) -> torch.Tensor:
    """Reduce a [N, R] per-token loss to a scalar (`agg_loss_parts` says how per mode); an
    all-zero mask gives 0, not NaN."""
    numerator, denominator = agg_loss_parts(loss, mask, mode, scale_factor)
    return numerator / (denominator + 1e-8)


class PolicyTerms(NamedTuple):
    losses: torch.Tensor  # [N, R] per-token clipped surrogate loss
    clipped: torch.Tensor  # [N, R] bool: the clipped term is the larger (pg_clipfrac)
    dual_clipped: torch.Tensor  # [N, R] bool: the dual clip bites (pg_clipfrac_lower)
    log_ratio: torch.Tensor  # [N, R] logp - old_logp, clamped to [-20, 20]


def policy_loss_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = 3.0,
) -> PolicyTerms:
    """Per-token PPO clipped surrogate with dual clip (verl's ``compute_policy_loss``).

    ratio = exp(logp - old_logp) (log-ratio clamped to [-20, 20]);
    l1 = -A * ratio, l2 = -A * clip(ratio, 1 - clip_low, 1 + clip_high), c1 = max(l1, l2);
    for A < 0 the loss is min(c1, -A * clip_c) (dual clip; ``clip_c=None`` turns it off).
    `advantages` is [N, R] or per-rollout [N] (spread over the tokens)."""
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(logp.dtype)
    if clip_c is not None and clip_c <= 1.0:
        raise ValueError(f"dual-clip constant clip_c must be > 1.0, got {clip_c}")
    log_ratio = torch.clamp(logp - old_logp, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(l1, l2)
    if clip_c is None:
        return PolicyTerms(clipped, l2 > l1, torch.zeros_like(l1, dtype=torch.bool), log_ratio)
    l3 = -advantages * clip_c
    negative = advantages < 0
    losses = torch.where(negative, torch.minimum(clipped, l3), clipped)
    return PolicyTerms(losses, l2 > l1, (clipped > l3) & negative, log_ratio)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference model.

    ``k1``/``kl``: logp - ref; ``abs``: |logp - ref|; ``k2``/``mse``: 0.5 (logp - ref)^2;
    ``k3``/``low_var_kl``: with d = ref - logp (clamped to [-20, 20]), exp(d) - d - 1 clamped to
    [-10, 10].

    ``<kind>+`` (verl's straight-through variants, e.g. ``k3+``, ``low_var_kl+``): the value of
    <kind> with the gradient of k2, computed as verl does, k2 - sg(k2) + sg(kX) (sg: stop-gradient),
    so the value is kX's exactly. Why: k1 and k3 estimate the KL's value without bias, but their
    gradients do not estimate its gradient; k2's gradient, (logp - ref) grad logp, is in expectation
    over the policy's samples the gradient of KL(pi_theta || pi_ref). ``k2+``/``mse+`` are k2.
    """
    if kind.endswith("+") and kind[:-1] in KL_BASE_KINDS:
        k2 = 0.5 * (logp - ref_logp).square()
        return k2 - k2.detach() + _kl_value(logp, ref_logp, kind[:-1]).detach()
    return _kl_value(logp, ref_logp, kind)


def _kl_value(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    if kind in ("k1", "kl"):
        return logp - ref_logp
    if kind == "abs":
        return (logp - ref_logp).abs()
    if kind in ("k2", "mse"):
        return 0.5 * (logp - ref_logp).square()
    if kind in ("k3", "low_var_kl"):
        d = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
        return torch.clamp(torch.exp(d) - d - 1.0, min=-10.0, max=10.0)
    raise ValueError(f"unknown KL kind {kind!r}; allowed: {', '.join(KL_KINDS)}")
