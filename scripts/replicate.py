"""A micro-replication of the paper's central claim on this machine: the six methods on the same
settings, with the collapse monitor on, a held-out validation set, a figure and a table.

    make replicate                                       # the full run (about 2 hours on 2 CPU cores)
    python scripts/replicate.py --methods gt co_rewarding_ii --steps 10
    python scripts/replicate.py --smoke --out outputs/replication-smoke   # 1 step each, tiny (CI)

Every method (GT reward, Majority-Voting, Self-Certainty, Entropy, Co-rewarding-I, Co-rewarding-II)
trains SmolLM2-135M-Instruct through the production path (Ray, FSDP2 worker, vLLM rollout) on the
built-in arithmetic problems with their rephrased twins, with identical settings: the same seeds,
steps, questions per step, rollouts, learning rate, lengths, KL, temperature and validation set.
Nothing is tuned per method. Validation: `--val-size` held-out questions, avg@`--val-n` at T=0.8,
before training (the base model) and every `--test-freq` steps; its standard error is over
questions. Each method runs in its own folder under `--out` with checkpoints: a killed replication
started again with the same command skips the finished methods and resumes the others from their
last checkpoint.

Writes (into `--figs`, default figs/): `replication.png` (per method vs step: validation accuracy
with a standard-error band, pseudo-label accuracy, majority ratio, distinct answers, entropy,
reward), `replication.md` (base / best / final validation accuracy per method, the share of groups
with a learning signal, the step where a collapse sign first fired) and `replication_metrics.jsonl`
(every logged step of every method).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# name in the figure and table -> reward_model.reward_manager
METHODS = {"gt": "naive", "majority_voting": "majority_voting", "self_certainty": "self_certainty",
           "entropy": "entropy", "co_rewarding_i": "co_reward", "co_rewarding_ii": "co_rewarding_II"}
LABELS = {"gt": "GT reward", "majority_voting": "Majority-Voting", "self_certainty": "Self-Certainty",
          "entropy": "Entropy", "co_rewarding_i": "Co-rewarding-I", "co_rewarding_ii": "Co-rewarding-II"}
DONE = "replication_done.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=8, help="questions per step (Co-rewarding-I: pairs)")
    p.add_argument("--n", type=int, default=8, help="rollouts per question (and teacher rollouts)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--kl", type=float, default=0.001)
    p.add_argument("--word-fraction", type=float, default=0.0, help="share of word problems in the data")
    p.add_argument("--val-size", type=int, default=64)
    p.add_argument("--val-n", type=int, default=4)
    p.add_argument("--test-freq", type=int, default=4)
    p.add_argument("--rollout", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--out", default=str(REPO / "outputs" / "replication"))
    p.add_argument("--figs", default=str(REPO / "figs"))
    p.add_argument("--smoke", action="store_true", help="1 step, tiny sizes (what CI runs)")
    p.add_argument("overrides", nargs="*", help="extra hydra overrides for every method (key=value)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.n, args.max_new_tokens, args.val_size, args.val_n, args.test_freq = 1, 2, 2, 8, 2, 1, 1
    return args


def method_overrides(args: argparse.Namespace, method: str, data: dict[str, Path], run_dir: Path) -> list[str]:
    """The one configuration every method shares; only the reward manager differs."""
    micro = math.gcd(8, args.batch * args.n // args.workers)  # 8 rollouts per pass, or what divides a worker's share
    return [
        f"reward_model.reward_manager={METHODS[method]}", f"actor_rollout_ref.model.path={args.model}",
        f"data.train_files={data['train']}", f"data.train_aug_files={data['train_rewrite']}",
        f"data.val_files={data['val']}", f"data.train_batch_size={args.batch}", "data.max_prompt_length=256",
        f"data.max_response_length={args.max_new_tokens}", f"data.seed={args.seed}",
        f"actor_rollout_ref.rollout.name={args.rollout}", f"actor_rollout_ref.rollout.n={args.n}",
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
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9", "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
        "trainer.device=cpu", "trainer.nnodes=1", f"trainer.n_gpus_per_node={args.workers}",
        f"trainer.total_training_steps={args.steps}", "trainer.logger=[console]",
        f"trainer.project_name=replication", f"trainer.experiment_name={method}",
        f"trainer.default_local_dir={run_dir}", f"trainer.validation_data_dir={run_dir / 'validation'}",
        "trainer.resume_mode=auto", f"trainer.save_freq={args.test_freq}", "trainer.max_actor_ckpt_to_keep=1",
        "trainer.val_before_train=True", f"trainer.test_freq={args.test_freq}",
        f"ray_init.temp_dir={Path('/tmp') / f'cw-replicate-{os.getuid()}'}",
        *args.overrides,
    ]


def run_method(args: argparse.Namespace, method: str, data: dict[str, Path]) -> list[dict[str, Any]]:
    """Train one method (resuming its last checkpoint if there is one); its logged steps."""
    from corewarding.config import compose_config
    from corewarding.trainer.run import run_training
    from corewarding.trainer.tracking import read_metrics

    run_dir = Path(args.out) / method
    done = run_dir / DONE
    if done.exists():
        print(f"{method}: finished before, skipped", flush=True)
    else:
        started = time.time()
        run_training(compose_config(method_overrides(args, method, data, run_dir)))
        done.write_text(json.dumps({"seconds": time.time() - started, "steps": args.steps}))
    return read_metrics(run_dir / "metrics.jsonl")


def summarise(method: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Base / best / final validation accuracy (with standard errors), the mean share of groups with
    a learning signal, and the first step with a collapse sign."""
    val = [h for h in history if "val/acc" in h]
    steps = [h for h in history if h["step"] > 0 and "reward/mean" in h]
    best = max(val, key=lambda h: h["val/acc"]) if val else None
    signal = [1.0 - h["monitor/zero_adv_groups"] for h in steps if "monitor/zero_adv_groups" in h]
    collapsed = [h["step"] for h in steps if h.get("monitor/collapse")]
    return {
        "method": method,
        "base": val[0] if val else None,
        "best": best,
        "final": val[-1] if val else None,
        "signal": sum(signal) / len(signal) if signal else None,
        "collapse_step": collapsed[0] if collapsed else None,
    }


def _acc(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    se = entry.get("val/acc_se")
    return f"{entry['val/acc']:.3f} ± {se:.3f}" if se is not None else f"{entry['val/acc']:.3f}"


def write_table(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path, command: str, wall_s: float) -> None:
    lines = [
        "# Micro-replication: six methods, identical settings",
        "",
        f"SmolLM2-135M-Instruct, built-in arithmetic with rephrased twins, {args.steps} steps x {args.batch} questions "
        f"x {args.n} rollouts (Co-rewarding-I: {args.batch} pairs; Co-rewarding-II: {args.n} teacher rollouts), "
        f"<= {args.max_new_tokens} new tokens, T={args.temperature}, lr {args.lr}, KL {args.kl}. Validation: "
        f"{args.val_size} held-out questions, avg@{args.val_n} at T=0.8, ± one standard error over questions.",
        "",
        "| method | base | best (step) | final | groups with a learning signal | first collapse sign |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        best = f"{_acc(r['best'])} ({r['best']['step']})" if r["best"] else "-"
        signal = f"{100 * r['signal']:.0f} %" if r["signal"] is not None else "-"
        collapse = f"step {r['collapse_step']}" if r["collapse_step"] is not None else "none"
        lines.append(f"| {LABELS[r['method']]} | {_acc(r['base'])} | {best} | {_acc(r['final'])} | {signal} | {collapse} |")
    lines += ["", f"Command: `{command}`", "", f"Wall time: {wall_s / 60:.0f} min on this machine (2 CPU cores)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    started = time.time()
    from corewarding.data import write_builtin_dataset
    from plot_curves import plot_curves

    if args.model is None:
        from corewarding.model_zoo import prepare_smollm2

        args.model = str(prepare_smollm2())
    out = Path(args.out)
    data = write_builtin_dataset(out / "data", n_train=args.batch * args.steps, n_val=args.val_size, seed=args.seed,
                                 word_fraction=args.word_fraction)
    histories = {method: run_method(args, method, data) for method in args.methods}
    rows = [summarise(method, history) for method, history in histories.items()]
    figs = Path(args.figs)
    figs.mkdir(parents=True, exist_ok=True)
    command = "python scripts/replicate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_table(rows, args, figs / "replication.md", command.strip(), time.time() - started)
    with open(figs / "replication_metrics.jsonl", "w") as handle:
        for method, history in histories.items():
            for entry in history:
                handle.write(json.dumps({"method": method, **entry}) + "\n")
    plot_curves([(LABELS[m], h) for m, h in histories.items()], figs / "replication.png",
                title=f"SmolLM2-135M-Instruct, {args.steps} steps, identical settings for every method")
    print((figs / "replication.md").read_text())
    return rows


if __name__ == "__main__":
    main()
