"""A short training run inside the test's own process (`trainer.single_process=True`, HF rollout,
CPU): the settings the custom-method and control tests share, and the run itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def one_process_overrides(model: Path, data: dict[str, Path], out: Path, steps: int, n: int, micro: int,
                          *extra: str) -> list[str]:
    """2 prompts x `n` rollouts per step, 12 new tokens, no checkpoint, no validation; `extra` first."""
    return [
        *extra, f"actor_rollout_ref.model.path={model}", f"data.train_files={data['train']}",
        f"data.val_files={data['val']}", "data.train_batch_size=2", "data.max_prompt_length=192",
        "data.max_response_length=12", "actor_rollout_ref.rollout.name=hf", f"actor_rollout_ref.rollout.n={n}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2", f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "trainer.device=cpu", "trainer.single_process=True", "trainer.nnodes=1", "trainer.n_gpus_per_node=1",
        f"trainer.total_training_steps={steps}", "trainer.logger=[console]", f"trainer.default_local_dir={out}",
        "trainer.resume_mode=disable", "trainer.val_before_train=False", "trainer.test_freq=-1", "trainer.save_freq=-1",
    ]


def run_in_process(overrides: list[str]) -> list[dict[str, Any]]:
    """The run's logged steps; the test's torch thread count is restored (the worker, here the test's
    own process, sets its threads)."""
    from corewarding.config import compose_config
    from corewarding.trainer.run import run_training

    threads = torch.get_num_threads()
    try:
        return run_training(compose_config(overrides), progress=False)["history"]
    finally:
        torch.set_num_threads(threads)
