"""What the worker tests share: the typed config of a tiny model on 2 CPU workers (`make_config`),
the module-scoped Ray worker group (`setup`, rolled back by `reset`) and tokenizer fixtures, the
prompt, rollout and training batches they take, and the same model loaded plainly in transformers."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import Config, compose_config, load_config, replace_in

TEMPERATURE = 0.9
N = 2  # rollouts per prompt
R = 6  # max response length
LR = 1e-3


def make_config(model_path: Path, **extra: Any) -> Config:
    """The typed config of these tests: the tiny model, 2 CPU workers, the HF engine, `extra` overrides."""
    overrides = {
        "trainer.device": "cpu",
        "trainer.nnodes": 1,
        "trainer.n_gpus_per_node": 2,
        "trainer.cpus_per_worker": 1,
        "actor_rollout_ref.model.path": str(model_path),
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        "actor_rollout_ref.rollout.name": "hf",
        "actor_rollout_ref.rollout.n": N,
        "actor_rollout_ref.rollout.temperature": TEMPERATURE,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 3,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": False,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 2,
        "data.max_prompt_length": 16,
        "data.max_response_length": R,
        "data.train_batch_size": 8,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4,  # prompts -> 4 x 2 / 2 = 4 rows per rank
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 2,
        "actor_rollout_ref.actor.optim.lr": LR,
        # Adam divides by sqrt(v) + eps: with eps 1e-8 a weight whose gradient is ~0 turns the
        # two-rank reduce-scatter's different summation order into a visible step difference;
        # a large eps keeps the update linear in the gradient, so 1e-5 compares the math itself.
        "actor_rollout_ref.actor.optim.eps": 1e-3,
        "actor_rollout_ref.actor.optim.lr_warmup_steps": 0,
        "actor_rollout_ref.actor.optim.warmup_style": "constant",
        "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.kl_loss_coef": 0.1,
        "actor_rollout_ref.actor.entropy_coeff": 0.01,
        **extra,
    }
    # the bare workers below take TP groups on CPU (recording engines), which a run would refuse
    tp = overrides.pop("actor_rollout_ref.rollout.tensor_model_parallel_size", 1)
    config = load_config(compose_config([f"{k}={v}" for k, v in overrides.items()]), check_paths=False)
    return replace_in(config, "actor_rollout_ref.rollout", tensor_model_parallel_size=tp)


@pytest.fixture(scope="module")
def setup(tiny_model_path):
    import ray

    from corewarding.workers.group import RayWorkerGroup

    # a short folder under /tmp: Ray's socket paths must stay under 108 bytes
    tmp = Path(tempfile.mkdtemp(prefix="cw_wk_", dir="/tmp"))
    config = make_config(tiny_model_path)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp / "ray"), log_to_driver=False)
    group = RayWorkerGroup(config)
    try:
        group.init_model(10)
        initial = tmp / "initial"
        group.save_checkpoint(str(initial))  # fresh optimizer: no state saved
        yield {"group": group, "config": config, "tmp": tmp, "initial": initial, "path": tiny_model_path}
    finally:
        group.close()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # checkpoints and Ray's session: ~700 MB a run


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def reset(setup) -> None:
    setup["group"].load_checkpoint(str(setup["initial"]))


def prompt_batch(tokenizer, texts: list[str]) -> Batch:
    """Prompts as the trainer sends them: token-id lists."""
    return Batch(rows={"prompt_ids": [tokenizer.encode(t) for t in texts], "uid": [f"u{i}" for i in range(len(texts))]})


def generate(group_or_worker, prompts: Batch, role: str = "policy") -> Batch:
    """Rollouts of `prompts` (a worker group, which answers as one worker, or one worker), prompts
    padded to their longest."""
    width = max(len(p) for p in prompts.rows["prompt_ids"])
    return group_or_worker.generate_sequences(prompts, role=role, prompt_width=width).rollouts


def rollout_batch(num_prompts: int, seed: int, vocab: int = 49152, prompt_width: int = 7) -> Batch:
    """Synthetic rollouts: left-padded random prompts, right-padded random responses."""
    g = torch.Generator().manual_seed(seed)
    rows = num_prompts * N
    prompt_len = torch.randint(2, prompt_width + 1, (rows,), generator=g)
    resp_len = torch.randint(1, R + 1, (rows,), generator=g)
    prompts = torch.randint(3, vocab, (rows, prompt_width), generator=g)
    pmask = (torch.arange(prompt_width)[None] >= prompt_width - prompt_len[:, None]).long()
    prompts = torch.where(pmask.bool(), prompts, torch.full_like(prompts, 2))
    responses = torch.randint(3, vocab, (rows, R), generator=g)
    rmask = (torch.arange(R)[None] < resp_len[:, None]).long()
    responses = torch.where(rmask.bool(), responses, torch.full_like(responses, 2))
    attn = torch.cat([pmask, rmask], dim=1)
    return Batch(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "response_mask": rmask,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attn,
            "position_ids": (attn.cumsum(1) - 1).clamp(min=0),
        },
        rows={"uid": [f"u{i // N}" for i in range(rows)]},
    )


def load_plain(path: Path, state: dict | None = None, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    if state is not None:
        model.load_state_dict(state, strict=False)
        model.tie_weights()
    return model


def full_state(setup, which: str = "actor") -> dict[str, torch.Tensor]:
    return setup["group"].get_full_state_dict(which)


def training_batch(setup, seed: int, num_prompts: int = 8) -> Batch:
    batch = rollout_batch(num_prompts=num_prompts, seed=seed)
    group = setup["group"]
    old = group.compute_log_prob(batch)["old_log_probs"]
    refl = group.compute_log_prob(batch, model="ref")["ref_log_probs"]
    g = torch.Generator().manual_seed(seed + 100)
    tensors = dict(batch.tensors)
    tensors["old_log_probs"] = old + 0.2 * torch.randn(old.shape, generator=g)  # ratios off 1: clipping bites
    tensors["ref_log_probs"] = refl + 0.1 * torch.randn(refl.shape, generator=g)
    tensors["advantages"] = torch.randn(len(batch), generator=g)
    return Batch(tensors=tensors, rows=batch.rows)
