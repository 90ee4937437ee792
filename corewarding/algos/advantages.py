"""GRPO group-relative advantages (verl's ``compute_grpo_outcome_advantage``)."""

from __future__ import annotations

from typing import Hashable, Iterable

import torch

__all__ = ["grpo_advantages", "spread_over_tokens"]


def grpo_advantages(
    scores: torch.Tensor,
    group_ids: Iterable[Hashable] | torch.Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-rollout advantages A_i = (s_i - mean_g) / (std_g + eps), or s_i - mean_g when
    `norm_by_std` is False, with mean/std over the rollouts sharing a group id (any hashable,
    e.g. a uid string; grouping is by id, never by position). std is the unbiased standard
    deviation; a group of one gets mean 0 and std 1 (so A = s / (1 + eps)).

    `scores`: [N] per-rollout scores (the sum of each rollout's token rewards). Returns [N]
    float (the dtype of `scores`, or float32 for integer scores).
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (one score per rollout), got shape {tuple(scores.shape)}")
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    if len(ids) != scores.shape[0]:
        raise ValueError(f"{len(ids)} group ids for {scores.shape[0]} scores")
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    if not ids:
        return scores.to(out_dtype)

    index: dict[Hashable, int] = {}
    codes = torch.tensor([index.setdefault(g, len(index)) for g in ids], device=scores.device)
    n_groups = len(index)
    s = scores.detach().to(torch.float64)
    count = torch.zeros(n_groups, dtype=torch.float64, device=s.device).index_add_(0, codes, torch.ones_like(s))
    total = torch.zeros_like(count).index_add_(0, codes, s)
    mean = total / count
    sq = torch.zeros_like(count).index_add_(0, codes, (s - mean[codes]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)

    adv = s - mean[codes]
    if norm_by_std:
        adv = adv / (std[codes] + eps)
    return adv.to(out_dtype)


def spread_over_tokens(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N] per-rollout advantages -> [N, R] token advantages (zero on masked tokens)."""
    if advantages.dim() != 1 or response_mask.dim() != 2 or response_mask.shape[0] != advantages.shape[0]:
        raise ValueError(
            f"expected advantages [N] and response_mask [N, R], got {tuple(advantages.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    return advantages.unsqueeze(-1) * response_mask.to(advantages.dtype)
