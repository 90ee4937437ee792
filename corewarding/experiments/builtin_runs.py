"""What the runs on the built-in data share (`scripts/demo.py`, `scripts/replicate.py`,
`scripts/decisive.py`): the methods by name and their labels, the command-line knobs of a short CPU
run, and the one configuration those knobs make."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from corewarding.rollout_engines import ENGINE_NAMES

# name on the command line -> reward_model.reward_manager
METHODS = {"gt": "naive", "majority_voting": "majority_voting", "self_certainty": "self_certainty",
           "entropy": "entropy", "co_rewarding_i": "co_reward", "co_rewarding_ii": "co_rewarding_II",
           "co_rewarding_iii": "co_rewarding_III", "random": "random", "format": "format", "incorrect": "incorrect",
           "empo": "empo"}
LABELS = {"gt": "GT reward", "majority_voting": "Majority-Voting", "self_certainty": "Self-Certainty",
          "entropy": "Entropy", "co_rewarding_i": "Co-rewarding-I", "co_rewarding_ii": "Co-rewarding-II",
          "co_rewarding_iii": "Co-rewarding-III", "majority_voting_union": "Majority-Voting, both views",
          "random": "Random reward", "format": "Format reward", "incorrect": "Incorrect label", "empo": "EMPO"}
# the six methods of the committed three-seed replication (figs/replication.md): what
# `scripts/replicate.py` and `scripts/seed_table.py` run and read unless --methods says otherwise
REPLICATED = ("gt", "majority_voting", "self_certainty", "entropy", "co_rewarding_i", "co_rewarding_ii")
# Majority-Voting trained on the original and the rephrased questions as independent prompts, with
# Co-rewarding-I's prompts and rollouts per step (scripts/replicate.py --methods majority_voting_union)
EXTRA_METHODS = {"majority_voting_union": "majority_voting"}


def add_run_args(p: argparse.ArgumentParser, **defaults: object) -> None:
    """The knobs of a run; `defaults` overrides the values below (keyword = option with '_')."""
    values = {"steps": 16, "batch": 8, "n": 8, "max_new_tokens": 40, "lr": 2e-5, "temperature": 0.7, "kl": 0.001,
              "word_fraction": 0.0, "val_size": 64, "val_n": 4, "test_freq": 4, "rollout": "vllm", "workers": 2,
              "seed": 0, "dtype": "auto", **defaults}
    p.add_argument("--steps", type=int, default=values["steps"])
    p.add_argument("--batch", type=int, default=values["batch"], help="questions per step (Co-rewarding-I: pairs)")
    p.add_argument("--n", type=int, default=values["n"], help="rollouts per question (and teacher rollouts)")
    p.add_argument("--max-new-tokens", type=int, default=values["max_new_tokens"])
    p.add_argument("--lr", type=float, default=values["lr"])
    p.add_argument("--temperature", type=float, default=values["temperature"],
                   help="training rollouts (the paper: 1.0; SmolLM2 agrees with itself too rarely at 1.0)")
    p.add_argument("--kl", type=float, default=values["kl"], help="KL loss coefficient")
    p.add_argument("--word-fraction", type=float, default=values["word_fraction"],
                   help="share of word problems in the built-in data")
    p.add_argument("--val-size", type=int, default=values["val_size"], help="validation questions (not training texts)")
    p.add_argument("--val-n", type=int, default=values["val_n"], help="validation samples per question (avg@n, T=0.8)")
    p.add_argument("--test-freq", type=int, default=values["test_freq"], help="validate every this many steps")
    p.add_argument("--rollout", default=values["rollout"], choices=ENGINE_NAMES)
    p.add_argument("--workers", type=int, default=values["workers"])
    p.add_argument("--dtype", default=values["dtype"], choices=["auto", "float32", "bfloat16"],
                   help="compute dtype of training and rollout (float32 master weights); auto: bfloat16 on CPUs "
                   "that multiply it natively (avx512_bf16, AMX), float32 elsewhere")
    p.add_argument("--seed", type=int, default=values["seed"])
    p.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("overrides", nargs="*", help="extra hydra overrides (key=value), applied last")


def run_overrides(args: argparse.Namespace, method: str, data: dict[str, Path], run_dir: Path) -> list[str]:
    """The configuration of one run: every method gets the same one, only the reward manager differs."""
    micro = math.gcd(8, args.batch * args.n // args.workers)  # 8 rollouts per pass, or what divides a worker's share
    return [
        f"reward_model.reward_manager={({**METHODS, **EXTRA_METHODS})[method]}", f"actor_rollout_ref.model.path={args.model}",
        f"data.train_files={data['train']}", f"data.train_aug_files={data['train_rewrite']}",
        f"data.val_files={data['val']}", f"data.train_batch_size={args.batch}", "data.max_prompt_length=256",
        f"data.max_response_length={args.max_new_tokens}", f"data.seed={args.seed}",
        f"actor_rollout_ref.model.dtype={args.dtype}", f"actor_rollout_ref.rollout.name={args.rollout}", f"actor_rollout_ref.rollout.n={args.n}",
        f"actor_rollout_ref.rollout.teacher_n={args.n}", f"actor_rollout_ref.rollout.temperature={args.temperature}",
        f"actor_rollout_ref.rollout.seed={args.seed}", f"actor_rollout_ref.rollout.val_kwargs.n={args.val_n}",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0.8", "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
        f"actor_rollout_ref.actor.optim.lr={args.lr}", "actor_rollout_ref.actor.optim.warmup_style=constant",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0", f"actor_rollout_ref.actor.kl_loss_coef={args.kl}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        # a short run: the teacher follows the policy faster than in the paper's 3-epoch runs
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9", "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
        "trainer.device=cpu", "trainer.nnodes=1", f"trainer.n_gpus_per_node={args.workers}",
        f"trainer.total_training_steps={args.steps}", "trainer.logger=[console]", f"trainer.experiment_name={method}",
        f"trainer.default_local_dir={run_dir}", f"trainer.validation_data_dir={run_dir / 'validation'}",
        f"trainer.rollout_data_dir={run_dir / 'rollouts'}",
        "trainer.val_before_train=True", f"trainer.test_freq={args.test_freq}",
        f"ray_init.temp_dir={Path('/tmp') / f'corewarding-cpu-{os.getuid()}'}",
    ]
