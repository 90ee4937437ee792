"""The worker's forward in one process (no Ray, no process group) on a tiny random Llama: padded,
packed and shared-prompt inputs, and the chunked token statistics and their
gradients (float32 and bfloat16) against plain full-logits float64 computations."""

from __future__ import annotations

import pytest
import torch

from corewarding.workers.model.forward import ForwardSettings, compute_token_stats, forward_token_stats
from corewarding.workers.model.packing import (
    packed_inputs,
    padded_inputs,
    scatter_to_rows,
    shared_prefix_inputs,
)

from actor_setup import (
    LAYOUTS,
    TEMPERATURE,
    full_logits_stats,
    grads,
    load,
    ragged_rollouts,
    reference_model,
    settings,
    with_repeated_prompts,
)
from actor_setup import model_path  # fixture
from compile_support import needs_compiler
from numerics import BF16_FORWARD_REL, BF16_GRAD_REL, FORWARD_REL, GRAD_REL, assert_all_rel_close, assert_rel_close


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
