"""Rollout correction: truncated importance sampling (TIS) between the rollout engine's sampler
and the trainer (verl's ``algorithm.rollout_correction``, TRL's ``vllm_importance_sampling_correction``).

The engine samples from pi_rollout (vLLM's kernels, dtype), the loss assumes pi_old (the trainer's
forward); the per-token policy-gradient loss is multiplied by the detached weight
w = min(pi_old / pi_rollout, C), per token or per sequence (docs/method.md)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["IS_LEVELS", "ISWeights", "rollout_is_weights"]

IS_LEVELS = ("token", "sequence")


class ISWeights(NamedTuple):
    weights: torch.Tensor  # [N, R] detached, capped weights, 0 on padding
    capped: torch.Tensor  # bool, [N, R] (token level) or [N] (sequence level): the cap bites


def rollout_is_weights(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                       level: str = "token", cap: float = 2.0) -> ISWeights:
    """w = min(exp(trainer_logp - rollout_logp), cap) per token (``token``), or the same weight on
    every token of a response from exp of the sum of its log-ratios (``sequence``: the product of
    its token ratios), capped. Formed as exp(min(log-ratio, log cap)), which never overflows.

    All inputs [N, R]; `mask` marks the response tokens (the sequence sum runs over them)."""
    if level not in IS_LEVELS:
        raise ValueError(f"unknown rollout correction level {level!r}; allowed: {', '.join(IS_LEVELS)}")
    if not cap > 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    mask = mask.to(trainer_logp.dtype)
    log_ratio = (trainer_logp.detach() - rollout_logp.to(trainer_logp.dtype)) * mask
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=-1)
    log_cap = math.log(cap)
    weights = torch.exp(torch.clamp(log_ratio, max=log_cap))
    if level == "sequence":
        weights = weights.unsqueeze(-1)
    return ISWeights((weights * mask).detach(), log_ratio > log_cap)
