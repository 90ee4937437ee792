"""What the actor tests (tests/test_actor_*.py) share: the tiny random Llama (`model_path`, their
module-scoped fixture), ragged rollouts, float64 full-logits references, PPO settings and an optimizer
that records the update's gradient."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from corewarding.batch import Batch
from corewarding.workers.model import segment_attention
from corewarding.workers.update.actor import ppo_update
from corewarding.workers.update.ppo_settings import PPOSettings
from corewarding.workers.model.forward import ForwardSettings, compute_token_stats, install_token_stats


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


def with_old_log_probs(model_path, batch: Batch, noise: float = 0.0) -> Batch:
    """The model's own log-probs (+ `noise`) as the old ones, and a reference 0.2 away from them: a
    KL well inside its clamp of 10, where it has a gradient (ragged_rollouts' reference is ~8 away)."""
    stats = compute_token_stats(load(model_path), batch, settings().forward, micro_rows=4, max_tokens=None)
    old = stats.log_probs + noise * torch.randn(stats.log_probs.shape, generator=torch.Generator().manual_seed(4))
    ref = stats.log_probs + 0.2 * torch.randn(stats.log_probs.shape, generator=torch.Generator().manual_seed(6))
    mask = batch["response_mask"]
    return Batch({**batch.tensors, "old_log_probs": old * mask, "ref_log_probs": ref * mask})
