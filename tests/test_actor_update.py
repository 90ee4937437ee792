"""The worker's update room in one process (no Ray, no process group) on a tiny random Llama: fixed
vs token-budget micro-batches, the on-policy shortcut vs the two-pass path, the two loss scopes, the
policy-loss modes, the per-view loss, Dr. GRPO's norm, truncated responses and rollout correction,
against plain full-logits float64 computations of the whole mini-batch's loss."""

from __future__ import annotations

import math

import pytest
import torch

from corewarding.algos import agg_loss, kl_penalty, loss_mode_terms, policy_agg_mode, policy_loss, policy_loss_terms
from corewarding.batch import Batch
from corewarding.workers.update.actor import ppo_update
from corewarding.workers.update.ppo_settings import PPOSettings
from corewarding.workers.model.forward import ForwardSettings

from actor_setup import (
    CPU,
    LAYOUTS,
    GradRecorder,
    TEMPERATURE,
    full_logits_stats,
    grads,
    load,
    one_update,
    ragged_rollouts,
    reference_model,
    settings,
    with_old_log_probs,
    with_repeated_prompts,
)
from actor_setup import model_path  # fixture
from numerics import (
    FORWARD_REL,
    GRAD_REL,
    assert_all_rel_close,
    assert_rel_close,
    assert_scalar_close,
    relative_error,
)


# ------------------------------------------------------------------------------- update
def assert_same_update(a, b) -> None:
    """Two float32 updates that are equal in exact arithmetic (other micro-batches or layouts)."""
    (result_a, step_a), (result_b, step_b) = a, b
    assert_all_rel_close(step_a, step_b, GRAD_REL, "grad")
    assert result_a.metrics.keys() == result_b.metrics.keys()
    for key, value in result_a.metrics.items():
        assert_scalar_close(value, result_b.metrics[key], max(abs(result_b.metrics[key]), 1.0), FORWARD_REL, key)


MODES = ["vanilla", "gspo", "cispo"]


def mode_settings(mode: str, **changes) -> PPOSettings:
    """`settings()` with policy-loss `mode`; GSPO with a clip range of 0.1, which the test batches'
    response ratios (old log-probs 0.3 away per token) cross for some responses, not all."""
    clip = {"clip_low": 0.1, "clip_high": 0.1} if mode == "gspo" else {}
    return settings(loss_mode=mode, **clip, **changes)


def reference_policy_loss(logp: torch.Tensor, batch: Batch, ppo: PPOSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """`ppo`'s policy loss of the whole batch in float64 (its mode, clip range and aggregation)."""
    return policy_loss(logp, batch["old_log_probs"].double(), batch["advantages"].double(), batch["response_mask"],
                       ppo.clip_low, ppo.clip_high, ppo.clip_c, ppo.loss_agg_mode, ppo.loss_mode)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_exact_update_equals_the_plain_mini_batch_loss(model_path, mode, layout):
    """The mini-batch scope: the gradient of the whole mini-batch's loss (token-mean; GSPO's surrogate
    seq-mean-token-mean with the entropy and KL terms token-mean), computed in one piece with full
    logits, whatever the micro-batches, in every forward layout and policy-loss mode."""
    batch = with_old_log_probs(model_path, with_repeated_prompts(ragged_rollouts(seed=5)), noise=0.3)
    ppo = mode_settings(mode, forward=ForwardSettings(TEMPERATURE, layout, chunk_size=7))
    result, step = one_update(model_path, batch, ppo)
    model = reference_model(model_path)
    logp, entropy = full_logits_stats(model, batch)
    mask = batch["response_mask"]
    pg, metrics = reference_policy_loss(logp, batch, ppo)
    kl_terms = kl_penalty(logp, batch["ref_log_probs"].double())
    kl = agg_loss(kl_terms, mask)
    (pg - 0.01 * agg_loss(entropy, mask) + 0.1 * kl).backward()
    assert_all_rel_close(step, grads(model), GRAD_REL, "grad")
    # each loss is a mean of terms that may cancel: their mean magnitude is the scale of its rounding
    terms = loss_mode_terms(mode, logp.detach(), batch["old_log_probs"].double(), batch["advantages"].double(), mask,
                            ppo.clip_low, ppo.clip_high, ppo.clip_c)
    pg_scale = float(agg_loss(terms.losses.abs(), mask, policy_agg_mode(mode, ppo.loss_agg_mode)))
    assert_scalar_close(result.metrics["actor/pg_loss"], float(pg.detach()), pg_scale, FORWARD_REL, "pg_loss")
    kl_scale = float(agg_loss(kl_terms.detach().abs(), mask))
    assert_scalar_close(result.metrics["actor/kl_loss"], float(kl.detach()), kl_scale, FORWARD_REL, "kl_loss")
    assert result.metrics["actor/pg_clipfrac"] == pytest.approx(metrics["pg_clipfrac"], abs=1e-6)
    assert 0 < result.metrics["actor/pg_clipfrac"] < 1
    assert len(result.tokens) == 0  # not on-policy: nothing to hand back


@pytest.mark.parametrize("mode", ["vanilla", "gspo"])
def test_release_scope_is_the_row_weighted_mean_of_micro_batch_losses(model_path, mode):
    """Each micro-batch aggregated on its own (GSPO's surrogate over its responses), weighted by rows."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=6), noise=0.3)
    ppo = mode_settings(mode, loss_scope="micro_batch", entropy_coeff=0.0, use_kl_loss=False)
    _, step = one_update(model_path, batch, ppo)
    model = reference_model(model_path)
    for rows in ([0, 1], [2, 3], [4, 5]):
        mb = batch.select(rows)
        logp, _ = full_logits_stats(model, mb)
        pg, _ = reference_policy_loss(logp, mb, ppo)
        (pg * len(rows) / 6).backward()
    assert_all_rel_close(step, grads(model), GRAD_REL, "grad")


@pytest.mark.parametrize("mode", MODES)
def test_token_budget_micro_batches_give_the_same_update(model_path, mode):
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=7), noise=0.3)
    fixed = one_update(model_path, batch, mode_settings(mode))
    longest = int(batch["attention_mask"].sum(1).max())
    budget = one_update(model_path, batch, mode_settings(mode, max_tokens=longest + 3))
    assert_same_update(fixed, budget)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_on_policy_shortcut_equals_the_two_pass_update(model_path, layout):
    """No old_log_probs: the old log-probs are the update's own (detached) ones. Loss, gradients and
    metrics equal the update given old log-probs from a separate pass; the log-probs and entropies
    of the forward come back."""
    ppo = settings(forward=ForwardSettings(TEMPERATURE, layout, chunk_size=7))
    batch = with_old_log_probs(model_path, with_repeated_prompts(ragged_rollouts(seed=8)))
    two_pass = one_update(model_path, batch, ppo)
    batch = Batch({k: v for k, v in batch.tensors.items() if k != "old_log_probs"})
    shortcut = one_update(model_path, batch, ppo)
    assert_same_update(shortcut, two_pass)
    assert shortcut[0].metrics["actor/pg_clipfrac"] == 0.0 and abs(shortcut[0].metrics["actor/ppo_kl"]) < 1e-6
    tokens = shortcut[0].tokens
    logp, entropy = full_logits_stats(reference_model(model_path), batch)
    assert_rel_close(tokens["old_log_probs"], logp, FORWARD_REL, "old_log_probs")
    assert_rel_close(tokens["entropy"], entropy, FORWARD_REL, "entropy")


def test_on_policy_shortcut_refuses_several_optimizer_steps(model_path):
    batch = ragged_rollouts(seed=9)
    with pytest.raises(ValueError, match="ppo_mini_batch_size"):
        one_update(model_path, batch, settings(mini_batch_size=2))
    with pytest.raises(ValueError, match="ppo_epochs"):
        one_update(model_path, batch, settings(ppo_epochs=2))


@pytest.mark.parametrize("kl", [False, True], ids=["Co-rewarding-I", "Co-rewarding-III"])
def test_per_view_loss_is_the_sum_of_each_views_loss(kl, model_path):
    """The release form of the two views' loss (co_reward_loss=per_view, loss_agg_scope=micro_batch;
    Co-rewarding-III's default): the rows of each view form their own micro-batches, each aggregated
    on its own, and the views add up: (L_original + L_rephrased) / grad_accum over paired
    micro-batches, with III's low-variance KL to the teacher (coefficient 0.1 here) in each view's
    loss. Against a float64 reference written out here. Logged per view."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=12), noise=0.3)
    batch = Batch({**batch.tensors, "view_id": torch.tensor([0, 1, 0, 1, 0, 1])})
    ppo = settings(per_view_loss=True, loss_scope="micro_batch", micro_batch_rows=1, entropy_coeff=0.0,
                   use_kl_loss=kl)
    result, step = one_update(model_path, batch, ppo)
    model = reference_model(model_path)
    views = {0: [0, 2, 4], 1: [1, 3, 5]}
    per_view = {}
    for view, rows in views.items():
        total = 0.0
        for row in rows:  # one-row micro-batches: grad_accum = 3 per view
            mb = batch.select([row])
            logp, _ = full_logits_stats(model, mb)
            pg, _ = policy_loss(logp, mb["old_log_probs"].double(), mb["advantages"].double(), mb["response_mask"])
            loss = pg
            if kl:
                mask = mb["response_mask"].double()
                loss = pg + 0.1 * (kl_penalty(logp, mb["ref_log_probs"].double()) * mask).sum() / mask.sum()
            (loss / len(rows)).backward()
            total += float(pg.detach()) / len(rows)
        per_view[view] = total
    assert_all_rel_close(step, grads(model), GRAD_REL, "grad")
    scale = float(batch["advantages"].abs().mean())  # |pg| of a row is about |advantage| (ratios near 1)
    assert_scalar_close(result.metrics["actor/pg_loss_ori"], per_view[0], scale, FORWARD_REL, "pg_loss_ori")
    assert_scalar_close(result.metrics["actor/pg_loss_aug"], per_view[1], scale, FORWARD_REL, "pg_loss_aug")
    assert_scalar_close(result.metrics["actor/pg_loss"], per_view[0] + per_view[1], scale, FORWARD_REL, "pg_loss")
    joint = one_update(model_path, batch, settings(loss_scope="micro_batch", micro_batch_rows=1, entropy_coeff=0.0,
                                                   use_kl_loss=kl))
    assert "actor/pg_loss_ori" not in joint[0].metrics
    assert relative_error(joint[1]["model.norm.weight"], step["model.norm.weight"]) > 100 * GRAD_REL  # the joint form differs


class EveryStepRecorder(GradRecorder):
    """A GradRecorder for several optimizer steps: the gradient of each, in order (the weights never
    move, so each is its mini-batch's gradient at the same weights)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__(model)
        self.steps: list[dict[str, torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.steps.append({n: p.grad.clone() for p, n in self.names.items() if p.grad is not None})


@pytest.mark.parametrize("per_view", [False, True], ids=["joint", "per_view"])
def test_each_mini_batch_trains_both_views_of_the_same_pairs(per_view, model_path):
    """Three mini-batches of two views laid out as the trainer sends them (a rank's originals, then
    their twins in the same order): each optimizer step's gradient is that of an update on the i-th
    original and its twin alone, as the release pairs the i-th mini-batches of the two views."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=13), noise=0.3)
    batch = Batch({**batch.tensors, "view_id": torch.tensor([0, 0, 0, 1, 1, 1])})
    ppo = settings(mini_batch_size=2, per_view_loss=per_view)
    model = load(model_path)
    recorder = EveryStepRecorder(model)
    ppo_update(model, recorder, batch, ppo, 1, world_size=1, device=CPU)
    assert len(recorder.steps) == 3
    for i, step in enumerate(recorder.steps):
        _, alone = one_update(model_path, batch.select([i, i + 3]), ppo)
        assert_all_rel_close(step, alone, GRAD_REL, f"step {i}")


# ------------------------------------------------------------------------------- loss toolbox
def reference_loss_grads(model_path, batch: Batch, norm: float | None = None, mask: torch.Tensor | None = None,
                         pg_weights: torch.Tensor | None = None):
    """The gradient and pg loss of `settings()`'s whole-mini-batch loss in float64 with full logits:
    clipped surrogate (times `pg_weights`) - 0.01 entropy + 0.1 KL, each summed over `mask`'s tokens
    and divided by their count, or with `norm` by (responses x norm) (Dr. GRPO), written out here."""
    model = reference_model(model_path)
    logp, entropy = full_logits_stats(model, batch)
    mask = (batch["response_mask"] if mask is None else mask).double()
    count = mask.sum() if norm is None else (mask.sum(-1) > 0).sum() * norm

    def aggregate(x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum() / count

    terms = policy_loss_terms(logp, batch["old_log_probs"].double(), batch["advantages"].double())
    pg = aggregate(terms.losses if pg_weights is None else terms.losses * pg_weights)
    kl = aggregate(kl_penalty(logp, batch["ref_log_probs"].double()))
    (pg - 0.01 * aggregate(entropy) + 0.1 * kl).backward()
    return grads(model), float(pg.detach())


@pytest.mark.parametrize("micro_rows, scale", [(2, None), (3, 7)])
def test_dr_grpo_norm_is_exact_under_micro_batching(model_path, micro_rows, scale):
    """loss_agg_mode=seq-mean-token-sum-norm: the gradient of the whole mini-batch's sum of response
    token sums / (responses x loss_scale_factor; None: the response width), for 3 and 2 micro-batches."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=13), noise=0.3)
    result, step = one_update(model_path, batch, settings(loss_agg_mode="seq-mean-token-sum-norm",
                                                          loss_scale_factor=scale, micro_batch_rows=micro_rows))
    expected, pg = reference_loss_grads(model_path, batch, norm=scale or 12)  # 12: the response width
    assert_all_rel_close(step, expected, GRAD_REL, "grad")
    # the loss sums token terms of about |A| each, which may cancel: their magnitudes' aggregate is its scale
    scale_of_pg = float((batch["advantages"].abs()[:, None] * batch["response_mask"]).sum()) / (6 * (scale or 12))
    assert_scalar_close(result.metrics["actor/pg_loss"], pg, scale_of_pg, FORWARD_REL, "pg_loss")
    # not the length-normalised mode: the constant changes the gradient
    _, other = one_update(model_path, batch, settings(loss_agg_mode="seq-mean-token-sum", micro_batch_rows=micro_rows))
    assert relative_error(other["model.norm.weight"], step["model.norm.weight"]) > 100 * GRAD_REL


def test_mask_truncated_drops_truncated_responses_exactly(model_path):
    """mask_truncated: the update equals the whole-batch loss with the truncated rows' tokens out of
    the numerator and the token count, whatever the micro-batches; the masked share is logged."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=14), noise=0.3)
    truncated = torch.tensor([True, False, False, True, False, False])
    batch = Batch({**batch.tensors, "truncated": truncated})
    result, step = one_update(model_path, batch, settings(mask_truncated=True, micro_batch_rows=3))
    loss_mask = batch["response_mask"] * (~truncated).long()[:, None]
    expected, _ = reference_loss_grads(model_path, batch, mask=loss_mask)
    assert_all_rel_close(step, expected, GRAD_REL, "grad")
    assert result.metrics["actor/masked_truncated_ratio"] == pytest.approx(2 / 6)
    _, kept = one_update(model_path, batch, settings(micro_batch_rows=3))  # off: the truncated rows train
    assert relative_error(kept["model.norm.weight"], step["model.norm.weight"]) > 100 * GRAD_REL


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("on_policy", [False, True], ids=["two-pass", "on-policy"])
def test_rollout_correction_weights_the_pg_loss(model_path, level, on_policy):
    """algorithm.rollout_correction: the clipped surrogate of every token times the detached
    min(exp(old_logp - rollout_logp), C) (per token, or exp of the response's summed log-ratio),
    against a float64 hand computation. The sampler's log-probs are the trainer's, perturbed (on CPU
    in float32 the real mismatch is ~1e-6); KL and entropy terms are not weighted."""
    batch = with_old_log_probs(model_path, with_repeated_prompts(ragged_rollouts(seed=15)))
    g = torch.Generator().manual_seed(16)
    # the cap bites on some tokens (responses), not all; a response's summed log-ratio is in [-1.6, 0.11]
    noise, cap = (0.3, 1.2) if level == "token" else (0.2, 1.05)
    rollout = (batch["old_log_probs"] + noise * torch.randn(batch["old_log_probs"].shape, generator=g)) * batch["response_mask"]
    tensors = {**batch.tensors, "rollout_log_probs": rollout}
    if on_policy:
        del tensors["old_log_probs"]
    result, step = one_update(model_path, Batch(tensors), settings(rollout_is=level, rollout_is_threshold=cap))
    mask = batch["response_mask"].double()
    log_ratio = (batch["old_log_probs"].double() - rollout.double()) * mask
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(mask)
    weights = torch.clamp(torch.exp(log_ratio), max=cap) * mask
    expected, _ = reference_loss_grads(model_path, batch, pg_weights=weights)
    bound = GRAD_REL if not on_policy else 10 * GRAD_REL  # on-policy: the weights come from the float32 forward
    assert_all_rel_close(step, expected, bound, "grad")
    capped = (log_ratio > math.log(cap)) & mask.bool()
    share = float(capped.sum() / mask.sum()) if level == "token" else float(capped[:, 0].float().mean())
    assert 0 < share < 1
    assert result.metrics["rollout_corr/rollout_is_ratio_fraction_high"] == pytest.approx(share)
    assert result.metrics["rollout_corr/rollout_is_mean"] == pytest.approx(float((weights * mask).sum() / mask.sum()), rel=1e-5)
    _, plain = one_update(model_path, Batch(tensors), settings())
    assert relative_error(plain["model.norm.weight"], step["model.norm.weight"]) > 100 * GRAD_REL


def test_rollout_correction_needs_the_samplers_log_probs(model_path):
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=17))
    with pytest.raises(ValueError, match="rollout.name=vllm"):
        one_update(model_path, batch, settings(rollout_is="token"))
