"""The PPO update on one rank's rows (the worker's update room); its forward is `workers/model/forward.py`'s.

`ppo_update`, as verl's dp_actor:
- mini-batches of `ppo_mini_batch_size` prompts x rollouts per prompt / world size rows, one optimizer
  step each, `ppo_epochs` times (two views: each mini-batch the same share of both, `mini_batch_rows`);
  micro-batches of `ppo_micro_batch_size_per_gpu` rows, or with `use_dynamic_bsz` of at most
  `ppo_max_token_len_per_gpu` tokens, with gradient accumulation;
- loss = policy loss - entropy_coeff * entropy + kl_loss_coef * KL(ref), the policy loss of
  `actor.policy_loss.loss_mode` (vanilla: the clipped surrogate with dual clip; gspo; cispo:
  `algos.policy_modes`), every term aggregated with `loss_agg_mode` (GSPO's surrogate with
  seq-mean-token-mean, as verl) over the loss mask: the response mask, less the rows of truncated
  responses with `mask_truncated` (`actor.mask_truncated_completions`); with `rollout_is`
  (`algorithm.rollout_correction`) the surrogate's tokens are weighted by the detached truncated
  importance weights min(pi_old / pi_rollout, C) (docs/method.md);
- `loss_scope="mini_batch"` (default): each micro-batch's loss numerator is divided by the mini-batch's
  denominator over all ranks (its token count for token-mean), times the world size because FSDP
  averages gradients; the gradient is then that of the mini-batch's exact aggregate, whatever the
  micro-batch split or the rows per rank (`micro_batches.py` says why, also for GSPO's per-response
  ratio). `loss_scope="micro_batch"` is the release's (verl 0.4) rule: each micro-batch aggregated on
  its own and weighted by its share of the rank's mini-batch rows;
- `per_view_loss` (Co-rewarding-I, `actor.co_reward_loss=per_view`): the rows of each view form their
  own micro-batches, each view's loss is aggregated on its own (with the scope above) and the two add
  up; with `loss_agg_scope=micro_batch` this is the release's (L_original + L_rephrased) / grad_accum
  over paired micro-batches, logged as `actor/pg_loss_ori` and `actor/pg_loss_aug`;
- on-policy shortcut: when the batch carries no `old_log_probs` (one epoch, one mini-batch: the
  trainer skips the separate pass), the old log-probs are the detached log-probs of the update's own
  forward, and those log-probs and entropies come back with the metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import NamedTuple

import torch

from corewarding.algos import (
    TokenStats,
    agg_loss_parts,
    kl_penalty,
    loss_mode_terms,
    mask_truncated,
    policy_agg_mode,
    rollout_is_weights,
)
from corewarding.batch import Batch
from corewarding.workers.model.forward import FORWARD_KEYS, forward_token_stats
from corewarding.workers.update.micro_batches import LossWeights, mini_batch_rows, plan_micro_batches, sum_over_ranks
from corewarding.workers.update.ppo_settings import PPOSettings

logger = logging.getLogger(__name__)

VIEW_NAMES = ("ori", "aug")  # view_id 0 / 1, as the release names its Co-rewarding-I loss metrics


class ActorUpdate(NamedTuple):
    metrics: dict[str, float]  # the same on every rank (reduced over ranks)
    tokens: Batch  # on-policy: `old_log_probs` and `entropy` [N, R] of this rank's rows; else empty

    @staticmethod
    def gather(results: list[ActorUpdate]) -> ActorUpdate:
        """Rank 0's metrics (peak memory: the largest rank's) and every rank's token tensors,
        concatenated in rank order."""
        metrics = dict(results[0].metrics)
        for key in [k for k in metrics if k.startswith("perf/max_memory")]:
            metrics[key] = max(r.metrics[key] for r in results)
        return ActorUpdate(metrics, Batch.concat([r.tokens for r in results]))


def _reduce_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")


class _Meter:
    """Metric sums and counts, reduced over ranks once at the end (exact means across ranks)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, key: str, total: float, count: float = 1.0) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(total)
        self.counts[key] = self.counts.get(key, 0.0) + float(count)

    def reduce(self, world_size: int, device: torch.device) -> dict[str, float]:
        keys = sorted(self.sums)
        values = torch.tensor([[self.sums[k] for k in keys], [self.counts[k] for k in keys]], dtype=torch.float64,
                              device=device)
        values = sum_over_ranks(values, world_size)
        return {k: float(s / c) if c > 0 else 0.0 for k, s, c in zip(keys, values[0].tolist(), values[1].tolist())}


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the gradients' global norm to `max_norm` (no clipping when <= 0); the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def _micro_batch_loss(
    model: torch.nn.Module, mb: Batch, settings: PPOSettings, on_policy: bool, meter: _Meter, weights: LossWeights
) -> tuple[TokenStats, dict[str, float]]:
    """Forward, loss and backward of one micro-batch; records its token metrics; returns its detached
    log-probs and entropy, and its weighted loss terms (they add up to the optimizer step's loss)."""
    stats = forward_token_stats(model, mb, settings.forward)
    mask = mb.tensors["loss_mask"]  # response_mask, less the truncated responses with mask_truncated
    logp = stats.log_probs
    old = logp.detach() if on_policy else mb.tensors["old_log_probs"]
    terms = loss_mode_terms(settings.loss_mode, logp, old, mb.tensors["advantages"], mask, settings.clip_low,
                            settings.clip_high, settings.clip_c)
    pg_terms = terms.losses
    if settings.rollout_is is not None:
        pg_terms = pg_terms * _rollout_correction(old, mb, mask, settings, meter)
    mode, scale = settings.loss_agg_mode, settings.loss_scale_factor
    pg, _ = agg_loss_parts(pg_terms, mask, policy_agg_mode(settings.loss_mode, mode), scale)
    loss = pg * weights.policy
    losses = {"actor/pg_loss": float(loss.detach())}
    if settings.entropy_coeff != 0.0:
        entropy_term, _ = agg_loss_parts(stats.entropy, mask, mode, scale)
        loss = loss - settings.entropy_coeff * weights.other * entropy_term
        losses["actor/entropy_loss"] = float(entropy_term.detach()) * weights.other
    if settings.use_kl_loss:
        kl, _ = agg_loss_parts(kl_penalty(logp, mb.tensors["ref_log_probs"], settings.kl_loss_type), mask, mode, scale)
        loss = loss + settings.kl_loss_coef * weights.other * kl
        losses["actor/kl_loss"] = float(kl.detach()) * weights.other
    loss.backward()
    fmask = mask.to(torch.float32)
    tokens = float(fmask.sum())
    meter.add("actor/pg_clipfrac", float((terms.clipped * fmask).sum()), tokens)
    meter.add("actor/pg_clipfrac_lower", float((terms.dual_clipped * fmask).sum()), tokens)
    meter.add("actor/ppo_kl", float((-terms.log_ratio.detach() * fmask).sum()), tokens)
    if settings.mask_truncated:
        meter.add("actor/masked_truncated_ratio", float(mb.tensors["truncated"].sum()), len(mb))
    return TokenStats(logp.detach(), stats.entropy.detach(), stats.self_certainty), losses


def _rollout_correction(old: torch.Tensor, mb: Batch, mask: torch.Tensor, settings: PPOSettings,
                        meter: _Meter) -> torch.Tensor:
    """The detached TIS weights min(pi_old / pi_rollout, C) of a micro-batch's tokens; records their
    mean and the share the cap bites on (tokens, or responses at the sequence level)."""
    response_mask = mb.tensors["response_mask"]
    weights, capped = rollout_is_weights(old, mb.tensors["rollout_log_probs"], response_mask, settings.rollout_is,
                                         settings.rollout_is_threshold)
    fmask = mask.to(torch.float32)
    meter.add("rollout_corr/rollout_is_mean", float((weights * fmask).sum()), float(fmask.sum()))
    kept = fmask if settings.rollout_is == "token" else (fmask.sum(dim=-1) > 0).to(torch.float32)
    meter.add("rollout_corr/rollout_is_ratio_fraction_high", float((capped * kept).sum()), float(kept.sum()))
    return weights


def ppo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    settings: PPOSettings,
    rollouts_per_prompt: int,
    world_size: int,
    device: torch.device,
) -> ActorUpdate:
    """PPO/GRPO update on this rank's rows (see the module docstring). Every rank must call it with
    the same number of rows. Returns the metrics (reduced over ranks) and, on-policy, the tokens."""
    mini_rows = settings.mini_batch_size * rollouts_per_prompt // world_size
    _check_mini_batches(len(batch), mini_rows, settings)
    # the per-view loss applies to batches of two views (Co-rewarding-I), which carry view_id
    settings = dataclasses.replace(settings, per_view_loss=settings.per_view_loss and "view_id" in batch.tensors)
    on_policy = "old_log_probs" not in batch.tensors
    _check_on_policy(on_policy, len(batch), mini_rows, settings)
    _check_rollout_log_probs(batch, settings)
    data = _update_rows(batch, settings, on_policy, device)
    mask_shape = data.tensors["response_mask"].shape
    kept = [torch.zeros(mask_shape), torch.zeros(mask_shape)] if on_policy else None
    meter = _Meter()
    skipped = 0
    model.train()
    reduce_device = _reduce_device(device)
    views = data.tensors["view_id"].tolist() if "view_id" in data.tensors else None
    for _ in range(settings.ppo_epochs):
        for mini_index in mini_batch_rows(len(data), mini_rows, views, settings.shuffle):
            optimizer.zero_grad(set_to_none=True)
            _accumulate_gradients(model, data.select(mini_index), settings, on_policy, meter, world_size, reduce_device,
                                  kept, mini_index)
            skipped += not _optimizer_step(model, optimizer, settings.grad_clip, meter)
    metrics = meter.reduce(world_size, reduce_device)
    metrics["actor/skipped_steps"] = float(skipped)  # the grad norm is global: the same on every rank
    tokens = Batch({"old_log_probs": kept[0], "entropy": kept[1]}) if kept is not None else Batch()
    return ActorUpdate(metrics, tokens)


def _update_rows(batch: Batch, settings: PPOSettings, on_policy: bool, device: torch.device) -> Batch:
    """The tensors the update reads, on `device`, with `loss_mask`: the response mask, less the
    truncated responses with `mask_truncated`."""
    keys = [*FORWARD_KEYS, "advantages", *(["old_log_probs"] if not on_policy else []),
            *(["ref_log_probs"] if settings.use_kl_loss else []), *(["view_id"] if "view_id" in batch.tensors else []),
            *(["truncated"] if settings.mask_truncated else []),
            *(["rollout_log_probs"] if settings.rollout_is is not None else [])]
    data = batch.subset(keys).to(device)
    response_mask = data.tensors["response_mask"]
    data.tensors["loss_mask"] = (mask_truncated(response_mask, data.tensors["truncated"]) if settings.mask_truncated
                                 else response_mask)
    return data


def _accumulate_gradients(
    model: torch.nn.Module, mini: Batch, settings: PPOSettings, on_policy: bool, meter: _Meter, world_size: int,
    reduce_device: torch.device, kept: list[torch.Tensor] | None, mini_index: list[int],
) -> None:
    """Forward, loss and backward of one mini-batch's micro-batches; records the mini-batch's loss
    terms; on-policy, each micro-batch's log-probs and entropy into `kept` (at its rows `mini_index`)."""
    step_losses: dict[str, float] = {}
    plan = plan_micro_batches(mini, settings, world_size, reduce_device)
    if settings.defer_grad_sync:
        _set_layers_reshard_after_forward(model, False)
    try:
        for index, (group, weights, view) in enumerate(plan):
            if settings.defer_grad_sync:
                _set_gradient_sync(model, index == len(plan) - 1)
            stats, losses = _micro_batch_loss(model, mini.select(group), settings, on_policy, meter, weights)
            if view is not None:
                losses[f"actor/pg_loss_{VIEW_NAMES[view]}"] = losses["actor/pg_loss"]
            for key, value in losses.items():
                step_losses[key] = step_losses.get(key, 0.0) + value
            if kept is not None:
                rows = [mini_index[i] for i in group]
                kept[0][rows], kept[1][rows] = stats.log_probs.float().cpu(), stats.entropy.float().cpu()
    finally:
        if settings.defer_grad_sync:
            _set_gradient_sync(model, True)
            _set_layers_reshard_after_forward(model, settings.reshard_after_forward)
    for key, value in step_losses.items():
        meter.add(key, value)


def _set_gradient_sync(model: torch.nn.Module, sync: bool) -> None:
    """Whether this backward reduces the gradients over ranks and then reshards the parameters
    (FSDP2); without, the gathered parameters stay for the next micro-batch. A module that is not
    sharded reduces and reshards nothing."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    if hasattr(model, "set_reshard_after_backward"):
        model.set_reshard_after_backward(sync)


def _set_layers_reshard_after_forward(model: torch.nn.Module, reshard: bool) -> None:
    """Whether the sharded layers free their gathered parameters after forward (FSDP2); the root
    keeps FSDP2's own choice (never), which setting it would override."""
    for module in model.modules():
        if module is not model and hasattr(module, "set_reshard_after_forward"):
            module.set_reshard_after_forward(reshard, recurse=False)


def _optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float, meter: _Meter) -> bool:
    """Clip the gradients and take the optimizer step, unless their norm is not finite; whether it was taken."""
    grad_norm = clip_grad_norm(model, grad_clip)
    meter.add("actor/grad_norm", grad_norm)
    stepped = math.isfinite(grad_norm)
    if stepped:
        optimizer.step()
    else:
        logger.warning("grad norm %s is not finite, optimizer step skipped", grad_norm)
    optimizer.zero_grad(set_to_none=True)
    return stepped


def _check_on_policy(on_policy: bool, rows: int, mini_rows: int, settings: PPOSettings) -> None:
    if on_policy and (settings.ppo_epochs != 1 or mini_rows != rows):
        raise ValueError(
            "update_actor without old_log_probs (the on-policy shortcut) needs one optimizer step per batch: "
            f"actor.ppo_epochs=1 and ppo_mini_batch_size=data.train_batch_size (have {settings.ppo_epochs} epochs, "
            f"{rows // mini_rows} mini-batches)"
        )


def _check_rollout_log_probs(batch: Batch, settings: PPOSettings) -> None:
    if settings.rollout_is is not None and "rollout_log_probs" not in batch.tensors:
        raise ValueError(
            f"algorithm.rollout_correction.rollout_is={settings.rollout_is} needs the rollout engine's log-probs "
            "(rollout_log_probs), which this batch lacks: use actor_rollout_ref.rollout.name=vllm"
        )


def _check_mini_batches(rows: int, mini_rows: int, settings: PPOSettings) -> None:
    if mini_rows <= 0 or rows % mini_rows:
        raise ValueError(
            f"{rows} rows per worker do not split into mini-batches of {mini_rows} rows "
            f"(actor_rollout_ref.actor.ppo_mini_batch_size={settings.mini_batch_size} x rollouts per prompt / "
            "workers): make data.train_batch_size a multiple of actor_rollout_ref.actor.ppo_mini_batch_size"
        )
    if settings.max_tokens is None and mini_rows % settings.micro_batch_rows:
        raise ValueError(
            f"mini-batch of {mini_rows} rows per worker is not a multiple of "
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={settings.micro_batch_rows}"
        )
