"""Masked reductions, the PPO clipped policy loss (with dual clip), KL estimators and loss
aggregation. Semantics follow verl's `core_algos` / `torch_functional` (SPEC.md section 2)."""

from __future__ import annotations

import torch

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "agg_loss",
    "policy_loss",
    "kl_penalty",
    "AGG_MODES",
    "KL_KINDS",
]

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
KL_KINDS = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Sum of `x * mask` (over everything, or over `dim`)."""
    prod = x * mask
    return prod.sum() if dim is None else prod.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(x * mask) / (sum(mask) + 1e-8), as verl: an all-zero mask gives 0, not NaN."""
    denom = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / (denom + 1e-8)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (Bessel-corrected when `unbiased`)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"unbiased masked variance needs at least 2 unmasked entries, got {float(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries; the mean is added back when
    `shift_mean` is False."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """Reduce a [N, R] per-token loss to a scalar.

    - ``token-mean``: sum over all unmasked tokens / their count.
    - ``seq-mean-token-sum``: each sequence's token sum, averaged over sequences.
    - ``seq-mean-token-mean``: each sequence's token mean, averaged over sequences.
    Sequences whose mask is all zero are left out of the sequence means (as current verl).
    """
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        return masked_mean(loss, mask)
    if mode == "seq-mean-token-sum":
        seq = (loss * mask).sum(dim=-1)
        return masked_mean(seq, (mask.sum(dim=-1) > 0).to(loss.dtype))
    if mode == "seq-mean-token-mean":
        count = mask.sum(dim=-1)
        seq = (loss * mask).sum(dim=-1) / (count + 1e-8)
        return masked_mean(seq, (count > 0).to(loss.dtype))
    raise ValueError(f"unknown loss aggregation mode {mode!r}; allowed: {', '.join(AGG_MODES)}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = 3.0,
    agg: str = "token-mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with dual clip (verl's ``compute_policy_loss``).

    ratio = exp(logp - old_logp) (log-ratio clamped to [-20, 20]);
    l1 = -A * ratio, l2 = -A * clip(ratio, 1 - clip_low, 1 + clip_high), c1 = max(l1, l2);
    for A < 0 the loss is min(c1, -A * clip_c) (dual clip; ``clip_c=None`` turns it off).
    `advantages` is [N, R] or per-rollout [N] (spread over the tokens).

    Returns (loss, metrics) with float metrics ``pg_clipfrac`` (fraction of tokens where the
    clipped term is the larger), ``pg_clipfrac_lower`` (fraction where the dual clip bites) and
    ``ppo_kl`` (masked mean of old_logp - logp).
    """
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(logp.dtype)
    mask = mask.to(logp.dtype)
    if clip_c is not None and clip_c <= 1.0:
        raise ValueError(f"dual-clip constant clip_c must be > 1.0, got {clip_c}")

    neg_kl = torch.clamp(logp - old_logp, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(l1, l2)
    negative = advantages < 0
    if clip_c is not None:
        l3 = -advantages * clip_c
        losses = torch.where(negative, torch.minimum(clipped, l3), clipped)
        lower = masked_mean(((clipped > l3) & negative).to(logp.dtype), mask)
    else:
        losses = clipped
        lower = torch.zeros((), dtype=logp.dtype)
    loss = agg_loss(losses, mask, agg)

    with torch.no_grad():
        metrics = {
            "pg_clipfrac": float(masked_mean((l2 > l1).to(logp.dtype), mask)),
            "pg_clipfrac_lower": float(lower),
            "ppo_kl": float(masked_mean(-neg_kl, mask)),
        }
    return loss, metrics


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference model.

    ``k1``/``kl``: logp - ref; ``abs``: |logp - ref|; ``k2``/``mse``: 0.5 (logp - ref)^2;
    ``k3``/``low_var_kl``: with d = ref - logp (clamped to [-20, 20]), exp(d) - d - 1 clamped to
    [-10, 10].
    """
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
