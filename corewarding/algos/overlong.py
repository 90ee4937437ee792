"""Overlong responses (DAPO, arXiv 2503.14476): the soft length penalty of verl's DAPO reward
manager, and the loss mask that drops truncated responses (TRL's ``mask_truncated_completions``)."""

from __future__ import annotations

import torch

__all__ = ["overlong_penalty", "mask_truncated"]


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer_len: int, penalty_factor: float) -> torch.Tensor:
    """Per-rollout penalty min(-(L - (max_length - buffer_len)) / buffer_len * penalty_factor, 0):
    0 up to max_length - buffer_len tokens, then falling linearly to -penalty_factor at max_length.

    `lengths`: [N] response lengths in tokens (EOS included, as verl's valid_response_length).
    Returns [N] float32 (float64 for float64 lengths)."""
    if not 0 < buffer_len <= max_length:
        raise ValueError(f"the overlong buffer length must be in (0, max_length={max_length}], got {buffer_len}")
    lengths = lengths.to(torch.float64 if lengths.dtype == torch.float64 else torch.float32)
    exceed = lengths - (max_length - buffer_len)
    return torch.clamp(-exceed / buffer_len * penalty_factor, max=0.0)


def mask_truncated(response_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """`response_mask` [N, R] with the rows of truncated responses (`truncated` [N] bool: they hit
    max_response_length without stopping) zeroed: their tokens get no loss weight."""
    if truncated.shape != response_mask.shape[:1]:
        raise ValueError(f"truncated must be [N] for a [N, R] mask, got {tuple(truncated.shape)} "
                         f"and {tuple(response_mask.shape)}")
    return response_mask * (~truncated.bool()).unsqueeze(-1).to(response_mask.dtype)
