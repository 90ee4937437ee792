"""The EMA-teacher weight schedule of Co-rewarding-II, the EMA update itself, and LR schedules
(linear warm-up, then cosine or constant; HF / verl ``get_*_schedule_with_warmup`` semantics)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["ema_weight", "ema_update_", "lr_lambda", "build_lr_scheduler", "LR_STYLES"]

LR_STYLES = ("cosine", "constant")


def ema_weight(step: int, total_steps: int, start: float = 0.99, end: float = 0.9999) -> float:
    """Weight a_k on the *teacher* in ref_k = a_k * ref_{k-1} + (1 - a_k) * policy_k (the paper's
    parametrisation): a_k = end - (end - start) / 2 * (1 + cos(pi * k / K)), k clamped to [0, K].
    Step 0 gives `start`, step K gives `end`, step K/2 gives (start + end) / 2."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    k = min(max(step, 0), total_steps)
    return end - (end - start) / 2.0 * (1.0 + math.cos(math.pi * k / total_steps))


def ema_update_(teacher_params, policy_params, weight: float) -> None:
    """In place: teacher = weight * teacher + (1 - weight) * policy, tensor by tensor.

    Takes two sequences of tensors (same order) or two mappings name -> tensor (matched by name);
    pure tensor code, so it works on plain tensors and on local FSDP shards alike. Each policy
    tensor is moved to its teacher tensor's device and dtype one at a time (an offloaded teacher)."""
    if isinstance(teacher_params, torch.Tensor):
        teacher_params, policy_params = [teacher_params], [policy_params]
    if isinstance(teacher_params, Mapping):
        if not isinstance(policy_params, Mapping) or set(teacher_params) != set(policy_params):
            raise ValueError("teacher and policy mappings must have the same keys")
        pairs = [(teacher_params[k], policy_params[k]) for k in teacher_params]
    else:
        teacher_list, policy_list = list(teacher_params), list(policy_params)
        if len(teacher_list) != len(policy_list):
            raise ValueError(f"{len(teacher_list)} teacher tensors but {len(policy_list)} policy tensors")
        pairs = list(zip(teacher_list, policy_list))
    with torch.no_grad():
        for t, p in pairs:
            if t.shape != p.shape:
                raise ValueError(f"shape mismatch in EMA update: {tuple(t.shape)} vs {tuple(p.shape)}")
            t.mul_(weight).add_(p.to(device=t.device, dtype=t.dtype), alpha=1.0 - weight)


def lr_lambda(
    step: int,
    total_steps: int,
    warmup_steps: int,
    style: str = "cosine",
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> float:
    """LR multiplier at `step`: step / warmup_steps during warm-up, then 1 ("constant") or
    max(0, min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(2 pi num_cycles p))) with
    p = (step - warmup) / (total - warmup) ("cosine")."""
    if style not in LR_STYLES:
        raise ValueError(f"unknown LR schedule style {style!r}; allowed: {', '.join(LR_STYLES)}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if style == "constant":
        return 1.0
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    x = math.cos(math.pi * float(num_cycles) * 2.0 * progress)
    return max(0.0, x * (1.0 - min_lr_ratio) * 0.5 + (1.0 + min_lr_ratio) * 0.5)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps_ratio: float = 0.0,
    warmup_steps: int | None = None,
    style: str = "constant",
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
) -> LambdaLR:
    """A LambdaLR over `lr_lambda`. Warm-up steps: `warmup_steps` when given and >= 0, else
    int(warmup_steps_ratio * total_steps) (verl's lr_warmup_steps = -1 convention)."""
    if warmup_steps is None or warmup_steps < 0:
        warmup_steps = int(warmup_steps_ratio * total_steps)
    lr_lambda(0, total_steps, warmup_steps, style, min_lr_ratio, num_cycles)  # validate arguments early

    def fn(step: int) -> float:
        return lr_lambda(step, total_steps, warmup_steps, style, min_lr_ratio, num_cycles)

    return LambdaLR(optimizer, fn)
