"""The worker's update room in one process (no Ray, no process group): packed vs padded forward,
token-budget vs fixed micro-batches, the on-policy shortcut vs the two-pass path, the two loss
scopes, the policy-loss modes, against plain full-logits torch computations on a tiny random Llama."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from corewarding.algos import agg_loss, kl_penalty, loss_mode_terms, policy_agg_mode, policy_loss, policy_loss_terms
from corewarding.batch import Batch
from corewarding.workers.model import segment_attention
from corewarding.workers.update.actor import ppo_update
from corewarding.workers.update.ppo_settings import PPOSettings
from corewarding.workers.model.forward import ForwardSettings, compute_token_stats, forward_token_stats, install_token_stats
from corewarding.workers.model.packing import (
    packed_inputs,
    padded_inputs,
    scatter_to_rows,
    shared_prefix_inputs,
    token_budget_groups,
)

from compile_support import needs_compiler
from numerics import (
    BF16_FORWARD_REL,
    BF16_GRAD_REL,
    FORWARD_REL,
    GRAD_REL,
    WEIGHTS_REL,
    assert_all_rel_close,
    assert_rel_close,
    assert_scalar_close,
    relative_error,
)

TEMPERATURE = 0.8
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_path(tiny_model_path):
    return tiny_model_path


def load(path, dtype: torch.dtype = torch.float32, attn: str = "sdpa") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    if attn == segment_attention.NAME:
        segment_attention.register()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    install_token_stats(model)
    return model


def reference_model(path) -> torch.nn.Module:
    """The same weights in float64: the references below are the exact computation, up to 1e-16."""
    return load(path, torch.float64)


def ragged_rollouts(seed: int, rows: int = 6, prompt_width: int = 9, response_width: int = 12) -> Batch:
    """Left-padded prompts and right-padded responses of very different lengths (1 .. full width)."""
    g = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(1, prompt_width + 1, (rows,), generator=g)
    prompt_len[0], prompt_len[1] = 1, prompt_width
    resp_len = torch.randint(1, response_width + 1, (rows,), generator=g)
    resp_len[0], resp_len[1] = response_width, 1
    prompts = torch.randint(3, 49152, (rows, prompt_width), generator=g)
    pmask = (torch.arange(prompt_width)[None] >= prompt_width - prompt_len[:, None]).long()
    responses = torch.randint(3, 49152, (rows, response_width), generator=g)
    rmask = (torch.arange(response_width)[None] < resp_len[:, None]).long()
    prompts, responses = prompts * pmask + 2 * (1 - pmask), responses * rmask + 2 * (1 - rmask)
    attention = torch.cat([pmask, rmask], dim=1)
    return Batch(tensors={
        "responses": responses, "response_mask": rmask, "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention, "position_ids": (attention.cumsum(1) - 1).clamp(min=0),
        "advantages": torch.randn(rows, generator=g),
        "ref_log_probs": -3 + torch.randn(rows, response_width, generator=g),
    })


def full_logits_stats(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropy from the model's own full logits (the plain way), [N, R], in the model's dtype."""
    width = batch["responses"].shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    logsm = torch.log_softmax(out.logits[:, -width - 1 : -1] / TEMPERATURE, dim=-1)
    logp = logsm.gather(-1, batch["responses"][..., None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    mask = batch["response_mask"]
    return logp * mask, entropy * mask


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------- packing
def test_packed_and_padded_inputs_point_at_the_same_tokens():
    batch = ragged_rollouts(seed=1)
    mask = batch["response_mask"]
    padded = padded_inputs(batch["input_ids"], batch["attention_mask"], batch["position_ids"], mask)
    packed = packed_inputs(batch["input_ids"], batch["attention_mask"], mask)
    assert torch.equal(padded.targets, batch["responses"][mask.bool()]) and torch.equal(packed.targets, padded.targets)
    # each predicting position holds, in both layouts, the token just before its target
    before_padded = padded.input_ids.reshape(-1)[padded.target_positions]
    before_packed = packed.input_ids.reshape(-1)[packed.target_positions]
    assert torch.equal(before_packed, before_padded)
    assert packed.input_ids.shape == (1, int(batch["attention_mask"].sum())) and packed.attention_mask is None
    starts = (packed.position_ids[0] == 0).nonzero().squeeze(-1).tolist()
    assert starts == [0, *torch.cumsum(batch["attention_mask"].sum(1), 0)[:-1].tolist()]
    values = torch.arange(len(padded.targets), dtype=torch.float32)
    rows = scatter_to_rows(values, mask)
    assert torch.equal(rows[mask.bool()], values) and rows[~mask.bool()].abs().sum() == 0


LAYOUTS = ["padded", "packed", "shared_prefix"]


def with_repeated_prompts(batch: Batch, repeats: int = 3) -> Batch:
    """Rows 0 .. N-1 with every prompt used by `repeats` consecutive rows (responses unchanged), as a
    GRPO micro-batch holds several rollouts of one prompt."""
    width = batch["input_ids"].shape[1] - batch["responses"].shape[1]
    source = [i - i % repeats for i in range(len(batch))]
    ids, attention = batch["input_ids"].clone(), batch["attention_mask"].clone()
    ids[:, :width], attention[:, :width] = ids[source, :width], attention[source, :width]
    return Batch({**batch.tensors, "input_ids": ids, "attention_mask": attention,
                  "position_ids": (attention.cumsum(1) - 1).clamp(min=0)})


# every layout on both attentions, and the CPU workers' default (sdpa_segments, shared prompts) with
# the output head compiled (actor.use_torch_compile)
FORWARD_CASES = [(attn, layout, False) for attn in ("sdpa", "sdpa_segments") for layout in LAYOUTS] + [
    pytest.param("sdpa_segments", "shared_prefix", True, marks=needs_compiler)]


@pytest.mark.parametrize("attn,layout,compiled", FORWARD_CASES)
def test_forward_token_stats_and_gradients_match_full_logits(model_path, layout, attn, compiled):
    """Padded, packed or with shared prompts, with the chunked output embedding, on SDPA (a mask) or
    on the CPU workers' sdpa_segments (one SDPA call per row / prompt / response, no mask): log-probs,
    entropies and the gradients of a loss on both equal the plain full-logits forward of the padded
    rows in float64 (rows with repeated prompts, so that shared_prefix shares them)."""
    model = load(model_path, attn=attn)
    batch = with_repeated_prompts(ragged_rollouts(seed=2))
    weights = torch.randn(batch["responses"].shape, generator=torch.Generator().manual_seed(3))
    stats = forward_token_stats(model, batch, ForwardSettings(TEMPERATURE, layout, chunk_size=5, compiled=compiled))
    ((stats.log_probs * weights).sum() + (stats.entropy * weights).sum()).backward()
    got = grads(model)
    reference = reference_model(model_path)
    logp, entropy = full_logits_stats(reference, batch)
    ((logp * weights).sum() + (entropy * weights).sum()).backward()
    assert_rel_close(stats.log_probs, logp, FORWARD_REL, "log_probs")
    assert_rel_close(stats.entropy, entropy, FORWARD_REL, "entropy")
    assert_all_rel_close(got, grads(reference), GRAD_REL, "grad")


@pytest.mark.parametrize("attn,layout,compiled", FORWARD_CASES)
def test_bfloat16_compute_matches_float64_to_bfloat16_rounding(model_path, layout, attn, compiled):
    """The bfloat16 path (model.dtype=bfloat16 or auto on a CPU with native bf16: the weights cast to
    bf16, logits and loss in float32) against float64 on the same bf16-rounded weights. Log-probs
    are compared by their deviations from the mean: on a random tiny model they all sit near
    -log(vocabulary), which would hide any error under a plain relative norm."""
    model = load(model_path, dtype=torch.bfloat16, attn=attn)
    batch = with_repeated_prompts(ragged_rollouts(seed=2))
    weights = torch.randn(batch["responses"].shape, generator=torch.Generator().manual_seed(3))
    stats = forward_token_stats(model, batch, ForwardSettings(TEMPERATURE, layout, chunk_size=5, compiled=compiled))
    assert stats.log_probs.dtype == torch.float32
    ((stats.log_probs * weights).sum() + (stats.entropy * weights).sum()).backward()
    reference = load(model_path, dtype=torch.bfloat16).to(torch.float64)
    logp, entropy = full_logits_stats(reference, batch)
    ((logp * weights).sum() + (entropy * weights).sum()).backward()
    mask = batch["response_mask"].bool()
    spread = logp[mask] - logp[mask].mean()
    assert_rel_close(stats.log_probs[mask] - logp[mask].mean(), spread, BF16_FORWARD_REL, "bf16 log_probs")
    assert_all_rel_close(grads(model), grads(reference), BF16_GRAD_REL, "bf16 grad")


def test_shared_prefix_inputs_hold_each_prompt_once():
    batch = with_repeated_prompts(ragged_rollouts(seed=11))  # rows 0-2 share a prompt, rows 3-5 another
    mask = batch["response_mask"]
    packed = packed_inputs(batch["input_ids"], batch["attention_mask"], mask)
    shared = shared_prefix_inputs(batch["input_ids"], batch["attention_mask"], mask)
    prompt_width = batch["input_ids"].shape[1] - mask.shape[1]
    prompt_tokens = batch["attention_mask"][:, :prompt_width].sum(1)
    assert shared.input_ids.shape[1] == packed.input_ids.shape[1] - int(prompt_tokens[[1, 2, 4, 5]].sum())
    assert torch.equal(shared.targets, packed.targets)
    # the predicting token of each target is the same token in both layouts
    assert torch.equal(shared.input_ids[0][shared.target_positions], packed.input_ids[0][packed.target_positions])
    visible = shared.attention_mask[0, 0]
    assert visible.shape == (shared.input_ids.shape[1],) * 2 and not visible.triu(1).any()  # causal
    # the first response (row 0) starts right after its prompt; row 1's response cannot see row 0's
    start0 = int(prompt_tokens[0])
    length0 = int(mask[0].sum())
    start1 = start0 + length0
    assert visible[start1, :start0].all() and not visible[start1, start0:start1].any()
    assert shared.position_ids[0, start1] == prompt_tokens[0]  # each response continues its prompt's positions


def test_token_budget_groups():
    lengths = [10, 3, 7, 2, 8, 5]
    groups = token_budget_groups(lengths, budget=12)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(sum(lengths[i] for i in g) <= 12 for g in groups)
    assert len(groups) == 3  # 35 tokens need at least 3 bins of 12; first-fit decreasing finds 3
    with pytest.raises(ValueError, match="budget"):
        token_budget_groups(lengths, budget=9)


# ------------------------------------------------------------------------------- update
def settings(**changes) -> PPOSettings:
    base = PPOSettings(
        forward=ForwardSettings(TEMPERATURE, layout="packed", chunk_size=7), mini_batch_size=6,
        micro_batch_rows=2, use_kl_loss=True, kl_loss_coef=0.1, entropy_coeff=0.01, grad_clip=0.0,
    )
    return dataclasses.replace(base, **changes)


class GradRecorder(torch.optim.Optimizer):
    """An optimizer that keeps the weights and records the gradient its step is given (the tests
    below take one step), so the update's gradient is read exactly, not as a weight difference."""

    def __init__(self, model: torch.nn.Module):
        self.names = {p: n for n, p in model.named_parameters()}
        super().__init__(list(self.names), {})
        self.grads: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        assert not self.grads, "these tests take one optimizer step"
        self.grads = {n: p.grad.clone() for p, n in self.names.items() if p.grad is not None}


def one_update(model_path, batch: Batch, ppo: PPOSettings, rollouts_per_prompt: int = 1):
    """ppo_update of the float32 model; its metrics and the gradient of its optimizer step."""
    model = load(model_path)
    optimizer = GradRecorder(model)
    result = ppo_update(model, optimizer, batch, ppo, rollouts_per_prompt, world_size=1, device=CPU)
    return result, optimizer.grads


def assert_same_update(a, b) -> None:
    """Two float32 updates that are equal in exact arithmetic (other micro-batches or layouts)."""
    (result_a, step_a), (result_b, step_b) = a, b
    assert_all_rel_close(step_a, step_b, GRAD_REL, "grad")
    assert result_a.metrics.keys() == result_b.metrics.keys()
    for key, value in result_a.metrics.items():
        assert_scalar_close(value, result_b.metrics[key], max(abs(result_b.metrics[key]), 1.0), FORWARD_REL, key)


def with_old_log_probs(model_path, batch: Batch, noise: float = 0.0) -> Batch:
    """The model's own log-probs (+ `noise`) as the old ones, and a reference 0.2 away from them: a
    KL well inside its clamp of 10, where it has a gradient (ragged_rollouts' reference is ~8 away)."""
    stats = compute_token_stats(load(model_path), batch, settings().forward, micro_rows=4, max_tokens=None)
    old = stats.log_probs + noise * torch.randn(stats.log_probs.shape, generator=torch.Generator().manual_seed(4))
    ref = stats.log_probs + 0.2 * torch.randn(stats.log_probs.shape, generator=torch.Generator().manual_seed(6))
    mask = batch["response_mask"]
    return Batch({**batch.tensors, "old_log_probs": old * mask, "ref_log_probs": ref * mask})


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


def test_compute_token_stats_keeps_row_order_with_a_token_budget(model_path):
    model = load(model_path)
    batch = ragged_rollouts(seed=10)
    fixed = compute_token_stats(model, batch, settings().forward, micro_rows=4, max_tokens=None)
    longest = int(batch["attention_mask"].sum(1).max())
    budget = compute_token_stats(model, batch, settings().forward, micro_rows=4, max_tokens=longest + 2)
    for name, a, b in zip(("log_probs", "entropy", "self_certainty"), fixed, budget):
        if a is not None:
            assert_rel_close(b, a, FORWARD_REL, name)
    logp, _ = full_logits_stats(reference_model(model_path), batch)
    assert_rel_close(fixed.log_probs, logp, FORWARD_REL, "log_probs")


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


def test_deferred_sync_keeps_the_gathered_parameters_between_micro_batches(model_path, tmp_path):
    """With `defer_grad_sync` (CPU workers) the FSDP2 layers gather their parameters once per
    mini-batch: the micro-batches after the first find them still gathered (no all-gather, no cast),
    the last backward reshards them and the layers' reshard_after_forward comes back; the weights
    after the step equal those of an update that gathers per micro-batch (GPUs)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from corewarding.workers.model import sharding

    batch = with_old_log_probs(model_path, ragged_rollouts(seed=7), noise=0.3)
    own = not dist.is_initialized()  # a single-process run earlier in this pytest process may hold one
    if own:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        weights = {}
        for defer in (True, False):
            model = load(model_path)
            sharding.shard_model(model, init_device_mesh("cpu", (1,)), torch.float32, offload=False, reshard=True,
                                 rank=0, device=CPU)
            q_proj = model.get_decoder().layers[0].self_attn.q_proj
            held: list[bool] = []  # per forward: layer 0's parameters already gathered when the model starts
            model.get_decoder().register_forward_pre_hook(lambda *_: held.append(not isinstance(q_proj.weight, DTensor)))
            ppo_update(model, torch.optim.SGD(model.parameters(), lr=0.1), batch,
                       settings(defer_grad_sync=defer), 1, world_size=1, device=CPU)
            assert held == ([False, True, True] if defer else [False, False, False])  # 3 micro-batches of 2 rows
            assert all(isinstance(p, DTensor) for p in model.parameters())  # resharded after the last backward
            with torch.no_grad():
                model(input_ids=torch.tensor([[5, 6, 7]]))
            assert isinstance(q_proj.weight, DTensor)  # reshard_after_forward is back
            weights[defer] = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    finally:
        if own:
            dist.destroy_process_group()
    assert_all_rel_close(weights[True], weights[False], WEIGHTS_REL, "weights")


def test_rollout_correction_needs_the_samplers_log_probs(model_path):
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=17))
    with pytest.raises(ValueError, match="rollout.name=vllm"):
        one_update(model_path, batch, settings(rollout_is="token"))


def test_deferred_gradient_sync_reduces_once_per_mini_batch(model_path):
    """With `defer_grad_sync` (CPU workers) a mini-batch's micro-batches run backward without reducing
    gradients over ranks (FSDP2's `set_requires_gradient_sync(False)`) but its last, which reduces the
    sum; the two-rank update still equals one process's (`test_workers.py`)."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=7), noise=0.3)
    ppo = settings()  # one mini-batch of 6 rows in micro-batches of 2: 3 micro-batches
    model = load(model_path)
    sync = {"now": True}
    seen: list[bool] = []  # the setting each micro-batch's forward ran under
    model.set_requires_gradient_sync = lambda requires: sync.update(now=requires)
    model.get_decoder().register_forward_pre_hook(lambda module, args: seen.append(sync["now"]))
    ppo_update(model, GradRecorder(model), batch, dataclasses.replace(ppo, defer_grad_sync=True), 1, world_size=1,
               device=CPU)
    assert seen == [False, False, True]
    seen.clear()
    ppo_update(model, GradRecorder(model), batch, ppo, 1, world_size=1, device=CPU)
    assert seen == [True, True, True]  # GPUs: every backward reduces (FSDP2's default), nothing is changed
