"""The worker's update room in one process (no Ray, no process group): packed vs padded forward,
token-budget vs fixed micro-batches, the on-policy shortcut vs the two-pass path, the two loss
scopes, against plain full-logits torch computations on a tiny random Llama."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corewarding.algos import agg_loss, kl_penalty, policy_loss
from corewarding.batch import Batch
from corewarding.workers.actor import (
    ForwardSettings,
    PPOSettings,
    compute_token_stats,
    forward_token_stats,
    install_token_stats,
    ppo_update,
)
from corewarding.workers.packing import (
    packed_inputs,
    padded_inputs,
    scatter_to_rows,
    shared_prefix_inputs,
    token_budget_groups,
)

TEMPERATURE = 0.8
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_path(tiny_model_path):
    return tiny_model_path


def load(path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    install_token_stats(model)
    return model


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
    """Log-probs and entropy from the model's own full logits (the plain way), [N, R]."""
    width = batch["responses"].shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    logsm = torch.log_softmax(out.logits[:, -width - 1 : -1].float() / TEMPERATURE, dim=-1)
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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_token_stats_and_gradients_match_full_logits(model_path, layout):
    """Padded, packed or with shared prompts, with the chunked output embedding: log-probs,
    entropies and the gradients of a loss on both equal the plain full-logits forward of the padded
    rows (rows with repeated prompts, so that shared_prefix shares them)."""
    model = load(model_path)
    batch = with_repeated_prompts(ragged_rollouts(seed=2))
    weights = torch.randn(batch["responses"].shape, generator=torch.Generator().manual_seed(3))
    stats = forward_token_stats(model, batch, ForwardSettings(TEMPERATURE, layout, chunk_size=5))
    ((stats.log_probs * weights).sum() + (stats.entropy * weights).sum()).backward()
    got = grads(model)
    model.zero_grad()
    logp, entropy = full_logits_stats(model, batch)
    ((logp * weights).sum() + (entropy * weights).sum()).backward()
    torch.testing.assert_close(stats.log_probs, logp.detach(), atol=2e-5, rtol=0)
    torch.testing.assert_close(stats.entropy, entropy.detach(), atol=2e-5, rtol=0)
    expected = grads(model)
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


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


def one_update(model_path, batch: Batch, ppo: PPOSettings, rollouts_per_prompt: int = 1):
    """ppo_update with plain SGD (lr 1): the weight change is minus the gradient."""
    model = load(model_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    result = ppo_update(model, optimizer, batch, ppo, rollouts_per_prompt, world_size=1, device=CPU)
    step = {n: before[n] - p.detach() for n, p in model.named_parameters()}
    return result, step


def assert_same_update(a, b, atol: float = 1e-6) -> None:
    (result_a, step_a), (result_b, step_b) = a, b
    for name in step_a:
        torch.testing.assert_close(step_a[name], step_b[name], atol=atol, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert result_a.metrics.keys() == result_b.metrics.keys()
    for key, value in result_a.metrics.items():
        assert value == pytest.approx(result_b.metrics[key], rel=1e-4, abs=1e-6), key


def with_old_log_probs(model_path, batch: Batch, noise: float = 0.0) -> Batch:
    stats = compute_token_stats(load(model_path), batch, settings().forward, micro_rows=4, max_tokens=None)
    old = stats.log_probs + noise * torch.randn(stats.log_probs.shape, generator=torch.Generator().manual_seed(4))
    return Batch({**batch.tensors, "old_log_probs": old * batch["response_mask"]})


def test_exact_update_equals_the_plain_mini_batch_loss(model_path):
    """The mini-batch scope: the gradient of the whole mini-batch's token-mean loss, computed in one
    piece with full logits, whatever the micro-batches."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=5), noise=0.3)
    result, step = one_update(model_path, batch, settings())
    model = load(model_path)
    logp, entropy = full_logits_stats(model, batch)
    mask = batch["response_mask"]
    pg, metrics = policy_loss(logp, batch["old_log_probs"], batch["advantages"], mask)
    kl = agg_loss(kl_penalty(logp, batch["ref_log_probs"]), mask)
    (pg - 0.01 * agg_loss(entropy, mask) + 0.1 * kl).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(step[name], p.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert result.metrics["actor/pg_loss"] == pytest.approx(float(pg.detach()), abs=1e-6)
    assert result.metrics["actor/kl_loss"] == pytest.approx(float(kl.detach()), abs=1e-6)
    assert result.metrics["actor/pg_clipfrac"] == pytest.approx(metrics["pg_clipfrac"], abs=1e-6)
    assert result.metrics["actor/pg_clipfrac"] > 0
    assert len(result.tokens) == 0  # not on-policy: nothing to hand back


def test_release_scope_is_the_row_weighted_mean_of_micro_batch_losses(model_path):
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=6), noise=0.3)
    _, step = one_update(model_path, batch, settings(loss_scope="micro_batch", entropy_coeff=0.0, use_kl_loss=False))
    model = load(model_path)
    for rows in ([0, 1], [2, 3], [4, 5]):
        mb = batch.select(rows)
        logp, _ = full_logits_stats(model, mb)
        pg, _ = policy_loss(logp, mb["old_log_probs"], mb["advantages"], mb["response_mask"])
        (pg * len(rows) / 6).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(step[name], p.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_token_budget_micro_batches_give_the_same_update(model_path):
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=7), noise=0.3)
    fixed = one_update(model_path, batch, settings())
    longest = int(batch["attention_mask"].sum(1).max())
    budget = one_update(model_path, batch, settings(max_tokens=longest + 3))
    assert_same_update(fixed, budget)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_on_policy_shortcut_equals_the_two_pass_update(model_path, layout):
    """No old_log_probs: the old log-probs are the update's own (detached) ones. Loss, gradients and
    metrics equal the update given old log-probs from a separate pass; the log-probs and entropies
    of the forward come back."""
    ppo = settings(forward=ForwardSettings(TEMPERATURE, layout, chunk_size=7))
    batch = with_repeated_prompts(ragged_rollouts(seed=8))
    shortcut = one_update(model_path, batch, ppo)
    two_pass = one_update(model_path, with_old_log_probs(model_path, batch), ppo)
    assert_same_update(shortcut, two_pass)
    assert shortcut[0].metrics["actor/pg_clipfrac"] == 0.0 and abs(shortcut[0].metrics["actor/ppo_kl"]) < 1e-6
    tokens = shortcut[0].tokens
    logp, entropy = full_logits_stats(load(model_path), batch)
    torch.testing.assert_close(tokens["old_log_probs"], logp.detach(), atol=2e-5, rtol=0)
    torch.testing.assert_close(tokens["entropy"], entropy.detach(), atol=2e-5, rtol=0)


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
    for a, b in zip(fixed, budget):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    logp, _ = full_logits_stats(model, batch)
    torch.testing.assert_close(fixed.log_probs, logp.detach(), atol=2e-5, rtol=0)


def test_per_view_loss_is_the_sum_of_each_views_loss(model_path):
    """Co-rewarding-I's release form (co_reward_loss=per_view, loss_agg_scope=micro_batch): the rows
    of each view form their own micro-batches, each aggregated on its own, and the views add up:
    (L_original + L_rephrased) / grad_accum over paired micro-batches. Logged per view."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=12), noise=0.3)
    batch = Batch({**batch.tensors, "view_id": torch.tensor([0, 1, 0, 1, 0, 1])})
    ppo = settings(per_view_loss=True, loss_scope="micro_batch", micro_batch_rows=1, entropy_coeff=0.0,
                   use_kl_loss=False)
    result, step = one_update(model_path, batch, ppo)
    model = load(model_path)
    views = {0: [0, 2, 4], 1: [1, 3, 5]}
    per_view = {}
    for view, rows in views.items():
        total = 0.0
        for row in rows:  # one-row micro-batches: grad_accum = 3 per view
            mb = batch.select([row])
            logp, _ = full_logits_stats(model, mb)
            pg, _ = policy_loss(logp, mb["old_log_probs"], mb["advantages"], mb["response_mask"])
            (pg / len(rows)).backward()
            total += float(pg.detach()) / len(rows)
        per_view[view] = total
    for name, p in model.named_parameters():
        torch.testing.assert_close(step[name], p.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert result.metrics["actor/pg_loss_ori"] == pytest.approx(per_view[0], abs=1e-6)
    assert result.metrics["actor/pg_loss_aug"] == pytest.approx(per_view[1], abs=1e-6)
    assert result.metrics["actor/pg_loss"] == pytest.approx(per_view[0] + per_view[1], abs=1e-6)
    joint = one_update(model_path, batch, settings(loss_scope="micro_batch", micro_batch_rows=1, entropy_coeff=0.0,
                                                   use_kl_loss=False))
    assert "actor/pg_loss_ori" not in joint[0].metrics
    assert not torch.allclose(joint[1]["model.norm.weight"], step["model.norm.weight"])  # the joint form differs
