"""Does GRPO learn at all? A short GT-reward run through the production path (Ray, 2 FSDP2 workers
over gloo, the HF rollout engine, `run_training`) on a target the tiny model can clearly learn.

The `boxing_model` answers every prompt with "The answer is \\boxed{d}." for a random d in {1, 2, 3};
here every question's ground truth is 1, so about a third of the first rollouts are right and a
working trainer pushes that share up within about a dozen steps (lr 1e-3). The statistic: the per-rollout rewards
(0 or 1) of the first `WINDOW` steps against those of the last `WINDOW` steps, a one-sided
two-proportion z-test; the test asks for z >= 3 (p < 0.0014) and a last-window mean of at least
0.8. Each of these breaks makes it fail (checked by hand once, see the issue note): the advantage
sign flipped, the rollout engine kept at its initial weights (no weight push), log-probs read one
token off.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from corewarding.config import compose_config

pytestmark = pytest.mark.slow

STEPS = 16
WINDOW = 3
TARGET = "1"


@pytest.fixture(scope="module")
def fixed_target_data(tmp_path_factory) -> dict[str, Path]:
    from corewarding.data import write_builtin_dataset

    paths = write_builtin_dataset(tmp_path_factory.mktemp("learn_data"), n_train=64, n_val=8, seed=1)
    for path in paths.values():
        frame = pd.read_parquet(path)
        frame["reward_model"] = [{"ground_truth": TARGET, "style": "rule"}] * len(frame)
        frame.to_parquet(path, index=False)
    return paths


def rewards_per_step(rollout_dir: Path) -> list[list[float]]:
    steps = []
    for step in range(1, STEPS + 1):
        records = [json.loads(line) for line in (rollout_dir / f"{step}.jsonl").read_text().splitlines()]
        steps.append([r["reward"] for r in records if r["role"] == "policy"])
    return steps


def two_proportion_z(before: list[float], after: list[float]) -> float:
    """One-sided z statistic for mean(after) > mean(before) of 0/1 samples (pooled variance)."""
    n1, n2 = len(before), len(after)
    p1, p2 = sum(before) / n1, sum(after) / n2
    pooled = (sum(before) + sum(after)) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return (p2 - p1) / se if se > 0 else (math.inf if p2 > p1 else 0.0)


def test_gt_grpo_learns_a_fixed_target(ray_session, boxing_model, fixed_target_data, tmp_path):
    from corewarding.trainer.run import run_training

    overrides = [
        "reward_model.reward_manager=naive",
        f"actor_rollout_ref.model.path={boxing_model}",
        f"data.train_files={fixed_target_data['train']}",
        "data.val_files=null",
        "data.train_batch_size=4",
        "data.max_prompt_length=192",
        "data.max_response_length=16",
        "data.seed=0",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.rollout.temperature=1.0",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
        "actor_rollout_ref.actor.optim.warmup_style=constant",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
        "trainer.device=cpu",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=2",
        f"trainer.total_training_steps={STEPS}",
        "trainer.logger=[console]",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        f"trainer.rollout_data_dir={tmp_path / 'rollouts'}",
        "trainer.resume_mode=disable",
        "trainer.val_before_train=False",
        "trainer.save_freq=-1",
    ]
    run_training(compose_config(overrides), progress=False)
    steps = rewards_per_step(tmp_path / "rollouts")
    before = [r for step in steps[:WINDOW] for r in step]
    after = [r for step in steps[-WINDOW:] for r in step]
    z = two_proportion_z(before, after)
    means = [round(sum(s) / len(s), 2) for s in steps]
    assert z >= 3.0 and sum(after) / len(after) >= 0.8, f"no learning: reward per step {means}, z = {z:.2f}"
