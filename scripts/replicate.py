"""A micro-replication of the paper's central claim on this machine: the six methods on the same
settings, with the collapse monitor on, a validation set, a figure and a table.

    make replicate                                       # seeds 0-2, then seed_table.py (about 5 hours on 2 CPU cores)
    python scripts/replicate.py --methods gt co_rewarding_ii --steps 10
    python scripts/replicate.py --smoke --out outputs/replication-smoke   # 1 step each, tiny (CI)

Every method (GT reward, Majority-Voting, Self-Certainty, Entropy, Co-rewarding-I, Co-rewarding-II;
`--methods co_rewarding_iii` adds the paper's final version, `majority_voting_union` the control) trains SmolLM2-135M-Instruct through the production path (Ray, FSDP2 worker, vLLM rollout) on the
built-in arithmetic problems with their rephrased twins, with identical settings: the same seeds,
steps, questions per step, rollouts, learning rate, lengths, KL, temperature and validation set.
Nothing is tuned per method. Validation: `--val-size` questions whose texts are not training texts
(a few are training problems in other words; `scripts/decisive.py` holds out by problem),
avg@`--val-n` at T=0.8, before training (the base model) and every `--test-freq` steps; its
standard error is over questions. Each method runs in its own folder under `--out` with checkpoints: a killed replication
started again with the same command skips the finished methods and resumes the others from their
last checkpoint.

Writes (into `--figs`, default figs/): `replication.png` (per method vs step: validation accuracy
with a standard-error band, pseudo-label accuracy, majority ratio, distinct answers, entropy,
reward), `replication.md` (base / best / final validation accuracy per method, the share of groups
with a learning signal, the collapse monitor's reading) and `replication_metrics.jsonl`
(every logged step of every method).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from corewarding.experiments.builtin_runs import (
    EXTRA_METHODS, LABELS, METHODS, REPLICATED, add_run_args, run_overrides,
)
from corewarding.experiments.runs import MONITOR_NOTE, REPLICATION_DONE, monitor_cell, replay_monitor

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(REPLICATED), choices=[*METHODS, *EXTRA_METHODS])
    add_run_args(p)
    p.add_argument("--out", default=str(REPO / "outputs" / "replication"))
    p.add_argument("--figs", default=str(REPO / "figs"))
    p.add_argument("--smoke", action="store_true", help="1 step, tiny sizes (what CI runs)")
    p.add_argument("--unfaithful-fraction", type=float, default=0.0,
                   help="share of rephrased twins that ask about another number (their answer differs)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of the built-in questions; --seed leaves them (and the 64 validation questions) as they are")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.n, args.max_new_tokens, args.val_size, args.val_n, args.test_freq = 1, 2, 2, 8, 2, 1, 1
    return args


def check_same_data(out: Path, data_args: dict[str, Any]) -> None:
    """The runs in `out` resume and skip by method: refuse to mix them with runs on other data."""
    record = out / "data" / "args.json"
    if record.exists() and json.loads(record.read_text()) != data_args:
        raise SystemExit(f"error: the runs in {out} were trained on other data ({record.read_text().strip()}); this "
                         f"call asks for {json.dumps(data_args)}: give another --out")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(data_args))


def write_union(data: dict[str, Path]) -> Path:
    """The original and the rephrased questions as independent prompts in one file (the rephrased
    ones' indices offset by the number of originals)."""
    import pandas as pd

    original, rephrased = pd.read_parquet(data["train"]), pd.read_parquet(data["train_rewrite"])
    rephrased["extra_info"] = [{**info, "index": int(info["index"]) + len(original)} for info in rephrased["extra_info"]]
    path = data["train"].with_name("train_union.parquet")
    pd.concat([original, rephrased], ignore_index=True).to_parquet(path)
    return path


def method_overrides(args: argparse.Namespace, method: str, data: dict[str, Path], run_dir: Path) -> list[str]:
    """The shared configuration, with checkpoints every validation so that a killed method resumes."""
    union = []
    if method == "majority_voting_union":  # Co-rewarding-I's 2 x batch prompts per step, as independent questions
        union = [f"data.train_files={write_union(data)}", f"data.train_batch_size={2 * args.batch}",
                 f"actor_rollout_ref.actor.ppo_mini_batch_size={2 * args.batch}"]
    return [*run_overrides(args, method, data, run_dir), *union, "trainer.project_name=replication",
            "trainer.resume_mode=auto", f"trainer.save_freq={args.test_freq}", "trainer.max_actor_ckpt_to_keep=1",
            *args.overrides]


def run_method(args: argparse.Namespace, method: str, data: dict[str, Path]) -> tuple[list[dict[str, Any]], float]:
    """Train one method (resuming its last checkpoint if there is one); its logged steps and the
    seconds of the run that finished it (a resumed run counts only its own part)."""
    from corewarding.config import compose_config
    from corewarding.trainer.run import run_training
    from corewarding.trainer.tracking import read_metrics

    run_dir = Path(args.out) / method
    done = run_dir / REPLICATION_DONE
    if done.exists():
        print(f"{method}: finished before, skipped", flush=True)
    else:
        started = time.time()
        run_training(compose_config(method_overrides(args, method, data, run_dir)))
        done.write_text(json.dumps({"seconds": time.time() - started, "steps": args.steps}))
    return read_metrics(run_dir / "metrics.jsonl"), json.loads(done.read_text())["seconds"]


def summarise(method: str, history: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Base / best / final validation accuracy (with standard errors), the mean share of groups with
    a learning signal, the collapse monitor's reading, and the run time."""
    val = [h for h in history if "val/acc" in h]
    steps = [h for h in history if h["step"] > 0 and "reward/mean" in h]
    best = max(val, key=lambda h: h["val/acc"]) if val else None
    signal = [1.0 - h["monitor/zero_adv_groups"] for h in steps if "monitor/zero_adv_groups" in h]
    return {
        "method": method,
        "base": val[0] if val else None,
        "best": best,
        "final": val[-1] if val else None,
        "signal": sum(signal) / len(signal) if signal else None,
        "monitor": monitor_cell(replay_monitor(history)),
        "seconds": seconds,
    }


def _acc(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    se = entry.get("val/acc_se")
    return f"{entry['val/acc']:.3f} ± {se:.3f}" if se is not None else f"{entry['val/acc']:.3f}"


def write_table(rows: list[dict[str, Any]], args: argparse.Namespace, path: Path, command: str) -> None:
    lines = [
        "# Micro-replication: six methods, identical settings",
        "",
        f"SmolLM2-135M-Instruct, built-in arithmetic with rephrased twins, {args.steps} steps x {args.batch} questions "
        f"x {args.n} rollouts (Co-rewarding-I: {args.batch} pairs; Co-rewarding-II: {args.n} teacher rollouts), "
        f"<= {args.max_new_tokens} new tokens, T={args.temperature}, lr {args.lr}, KL {args.kl}. Validation: "
        f"{args.val_size} questions (not training texts; a few are training problems in other words), avg@{args.val_n} at T=0.8, ± one standard error over questions. "
        + MONITOR_NOTE,
        "",
        "| method | base | best (step) | final | groups with a learning signal | collapse monitor | run time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        best = f"{_acc(r['best'])} ({r['best']['step']})" if r["best"] else "-"
        signal = f"{100 * r['signal']:.0f} %" if r["signal"] is not None else "-"
        minutes = f"{r['seconds'] / 60:.0f} min"
        cells = [LABELS[r["method"]], _acc(r["base"]), best, _acc(r["final"]), signal, r["monitor"], minutes]
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(r["seconds"] for r in rows) / 60
    lines += ["", f"Command: `{command}`", "",
              f"Wall time: {total:.0f} min on this machine (2 CPU cores), the sum of the methods' run times (a method "
              "resumed after a kill counts only the run that finished it)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    from corewarding.data import write_builtin_dataset
    from corewarding.experiments.curves import plot_curves
    from corewarding.trainer.run import exit_status

    if args.model is None:
        from corewarding.model_zoo import prepare_smollm2

        args.model = str(prepare_smollm2())
    out = Path(args.out)
    check_same_data(out, {"data_seed": args.data_seed, "unfaithful_fraction": args.unfaithful_fraction,
                          "word_fraction": args.word_fraction, "n_train": args.batch * args.steps,
                          "n_val": args.val_size})
    data = write_builtin_dataset(out / "data", n_train=args.batch * args.steps, n_val=args.val_size, seed=args.data_seed,
                                 word_fraction=args.word_fraction, unfaithful_fraction=args.unfaithful_fraction)
    with exit_status():  # preempted (status 75): run again, the method in flight resumes and the rest follow
        runs = {method: run_method(args, method, data) for method in args.methods}
    histories = {method: history for method, (history, _) in runs.items()}
    rows = [summarise(method, history, seconds) for method, (history, seconds) in runs.items()]
    figs = Path(args.figs)
    figs.mkdir(parents=True, exist_ok=True)
    command = "python scripts/replicate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_table(rows, args, figs / "replication.md", command.strip())
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
