"""How `ppo_update` splits a rank's rows into mini-batches and a mini-batch into micro-batches, and
the factors each micro-batch's loss numerators are multiplied by before backward, so that the
accumulated gradient is that of the mini-batch's aggregate (the two loss scopes:
`corewarding.workers.update.actor`'s module docstring).

Why the mini-batch scope is exact: every aggregation mode is numerator / denominator, both sums over
rows (`algos.agg_loss_parts`); each micro-batch backpropagates its own numerator divided by the
denominator summed over the whole mini-batch on all ranks (times the world size, as FSDP averages
gradients), and the numerators add up to the mini-batch's. Micro-batches hold whole rows, so a
per-row quantity (GSPO's sequence ratio, a sequence's token mean) is computed whole in one of them.
A term aggregated with another mode than `loss_agg_mode` (GSPO's surrogate) gets its own factor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist

from corewarding.algos import agg_loss_denominator, policy_agg_mode
from corewarding.batch import Batch
from corewarding.workers.model.packing import micro_batch_groups
from corewarding.workers.update.ppo_settings import PPOSettings

__all__ = ["LossWeights", "micro_batch_weights", "mini_batch_rows", "plan_micro_batches", "sum_over_ranks"]


def sum_over_ranks(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """`values` summed over the ranks, in place (as is with one rank)."""
    if world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def mini_batch_rows(num_rows: int, mini_rows: int, views: list[int] | None, shuffle: bool) -> list[list[int]]:
    """The rows of each mini-batch of one epoch: `mini_rows` consecutive rows (of a random order with
    `shuffle`). With two views (`views[i]`: 0 original, 1 rephrased; the trainer lays a rank's rows out
    as its pairs' original groups, then the same pairs' rephrased groups in the same order), the i-th
    share of each view's rows together (the same positions of both with `shuffle`; in row order):
    every optimizer step trains both views of the same pairs, as the release's (L_original +
    L_rephrased) does."""
    if views is None:
        order = torch.randperm(num_rows).tolist() if shuffle else list(range(num_rows))
        return [order[start : start + mini_rows] for start in range(0, num_rows, mini_rows)]
    halves = [[row for row, view in enumerate(views) if view == v] for v in (0, 1)]
    if len(halves[0]) != len(halves[1]) or mini_rows % 2:  # the config's checks rule both out
        raise ValueError(f"mini-batches of {mini_rows} rows cannot hold both views equally: {len(halves[0])} "
                         f"original and {len(halves[1])} rephrased rows on this worker")
    share = mini_rows // 2
    order = torch.randperm(len(halves[0])).tolist() if shuffle else list(range(len(halves[0])))
    return [sorted(half[i] for half in halves for i in order[start : start + share]) for start in range(0, len(order), share)]


class LossWeights(NamedTuple):
    policy: float  # times the micro-batch's policy-loss numerator (aggregated by `policy_agg_mode`)
    other: float  # times its entropy and KL numerators (aggregated by loss_agg_mode)


def plan_micro_batches(
    mini: Batch, settings: PPOSettings, world_size: int, device: torch.device
) -> list[tuple[list[int], LossWeights, int | None]]:
    """(rows, loss weights, view or None) of each micro-batch of a mini-batch. With `per_view_loss`
    the rows of each view (`view_id` 0: original, 1: rephrased) form their own micro-batches and
    aggregate, and the two views' losses add up (the release's Co-rewarding-I update)."""
    masks = mini.tensors["loss_mask"]
    if not settings.per_view_loss:
        groups = micro_batch_groups(mini, settings.micro_batch_rows, settings.max_tokens, world_size)
        weights = micro_batch_weights([masks[g] for g in groups], settings, world_size, device)
        return [(group, weight, None) for group, weight in zip(groups, weights)]
    plan = []
    views = mini.tensors["view_id"].tolist()
    for view in (0, 1):
        rows = [i for i, v in enumerate(views) if v == view]
        groups = [[rows[j] for j in g] for g in micro_batch_groups(mini.select(rows), settings.micro_batch_rows,
                                                                   settings.max_tokens, world_size)]
        weights = micro_batch_weights([masks[g] for g in groups], settings, world_size, device)
        plan += [(group, weight, view) for group, weight in zip(groups, weights)]
    return plan


def micro_batch_weights(
    masks: list[torch.Tensor], settings: PPOSettings, world_size: int, device: torch.device
) -> list[LossWeights]:
    """The factors each micro-batch's loss numerators are multiplied by before backward (see the
    module docstring for the two scopes): one per aggregation mode, the policy loss's and the rest's."""
    other = _mode_weights(masks, settings.loss_agg_mode, settings, world_size, device)
    mode = policy_agg_mode(settings.loss_mode, settings.loss_agg_mode)
    policy = other if mode == settings.loss_agg_mode else _mode_weights(masks, mode, settings, world_size, device)
    return [LossWeights(p, o) for p, o in zip(policy, other)]


def _mode_weights(masks: list[torch.Tensor], mode: str, settings: PPOSettings, world_size: int,
                  device: torch.device) -> list[float]:
    denominators = [float(agg_loss_denominator(m, mode, settings.loss_scale_factor)) for m in masks]
    if settings.loss_scope == "micro_batch":
        rows = sum(m.shape[0] for m in masks)
        return [m.shape[0] / rows / (d + 1e-8) for m, d in zip(masks, denominators)]
    total = sum_over_ranks(torch.tensor([sum(denominators)], dtype=torch.float64, device=device), world_size)
    total = float(total.item())
    return [world_size / total if total > 0 else 0.0] * len(masks)
