"""The replication over several seeds: per method, base / best / final validation accuracy as the
mean over seeds with its standard error, each seed's final and the collapse monitor's reading, and paired
differences between methods (paired by question within a seed, standard error over seeds).

    python scripts/seed_table.py --root outputs/seeds --seeds 0 1 2 --figs figs

`--root` holds one folder per seed (`seed<S>/<method>/`, what `scripts/replicate.py --seed S --out
<root>/seed<S>` writes): `metrics.jsonl` and `validation/<step>.jsonl` (every validation sample).
A method missing for some seed is summarised over the seeds it has (the table says how many).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from corewarding.experiments.builtin_runs import EXTRA_METHODS, LABELS, METHODS, REPLICATED
from corewarding.experiments.curves import plot_curves
from corewarding.experiments.runs import MONITOR_NOTE, REPLICATION_DONE, monitor_cell, plus_minus, run_summary

REPO = Path(__file__).resolve().parents[1]

# the differences docs/results.md states in words: (method, baseline)
PAIRS = [("co_rewarding_ii", "entropy"), ("co_rewarding_ii", "majority_voting"), ("co_rewarding_i", "majority_voting")]


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (None for a single value)."""
    if len(values) < 2:
        return values[0], None
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def question_accuracy(run_dir: Path, step: int) -> dict[str, float]:
    """Validation accuracy per question (avg@n over its samples) at `step`."""
    samples: dict[str, list[float]] = {}
    for line in (run_dir / "validation" / f"{step}.jsonl").read_text().splitlines():
        record = json.loads(line)
        samples.setdefault(record["prompt"], []).append(float(record["reward"]))
    return {prompt: statistics.fmean(rewards) for prompt, rewards in samples.items()}


def seed_summary(run_dir: Path) -> dict[str, Any]:
    """One seed of one method: the run's summary (`corewarding.experiments.runs.run_summary`) with
    its run time in minutes (from replicate.py's finished marker; None without one)."""
    done = run_dir / REPLICATION_DONE
    minutes = json.loads(done.read_text())["seconds"] / 60 if done.is_file() else None
    return {**run_summary(run_dir / "metrics.jsonl"), "minutes": minutes}


def paired_difference(runs_a: dict[int, dict], runs_b: dict[int, dict], which: str) -> dict[str, Any]:
    """A - B at each seed's `which` step (final or best) of each method, paired by question within
    each seed. `mean` is the mean of the seeds' paired means; `se` its standard error over seeds
    (the questions of one seed share one training run, so they are not independent draws), or,
    with a single seed, the standard error over its questions (`se_over`)."""
    per_seed, diffs = {}, []
    for seed in sorted(set(runs_a) & set(runs_b)):
        a = question_accuracy(runs_a[seed]["dir"], runs_a[seed][which])
        b = question_accuracy(runs_b[seed]["dir"], runs_b[seed][which])
        diffs = [a[q] - b[q] for q in sorted(set(a) & set(b))]
        per_seed[seed] = statistics.fmean(diffs)
    if len(per_seed) > 1:
        mean, se = mean_se(list(per_seed.values()))
        return {"mean": mean, "se": se, "se_over": "seeds", "per_seed": per_seed}
    mean, se = mean_se(diffs)
    return {"mean": mean, "se": se, "se_over": "questions", "per_seed": per_seed}


def per_seed(by_seed: dict[int, Any], cell: Callable[[Any], str]) -> str:
    """One table cell listing `cell` of each seed's value: `s0: ..., s1: ...`."""
    return ", ".join(f"s{seed}: {cell(value)}" for seed, value in by_seed.items())


def write_table(runs: dict[str, dict[int, dict]], seeds: list[int], path: Path, command: str) -> None:
    lines = ["# Micro-replication over seeds", "",
             f"Seeds {', '.join(map(str, seeds))}; mean ± standard error over seeds (a method's best step is its own "
             "per seed: the maximum over steps, so it is biased upwards). " + MONITOR_NOTE, "",
             "| method | seeds | base | best | final | final per seed | collapse monitor per seed | minutes per seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, by_seed in runs.items():
        cols = {k: mean_se([r["val"][r[k]] for r in by_seed.values()]) for k in ("base", "best", "final")}
        finals = per_seed(by_seed, lambda r: f"{r['val'][r['final']]:.3f}")
        collapse = per_seed(by_seed, lambda r: monitor_cell(r["monitor"]))
        minutes = per_seed(by_seed, lambda r: f"{r['minutes']:.1f}" if r["minutes"] is not None else "-")
        lines.append(f"| {LABELS[method]} | {len(by_seed)} | {plus_minus(*cols['base'])} | {plus_minus(*cols['best'])} | "
                     f"{plus_minus(*cols['final'])} | {finals} | {collapse} | {minutes} |")
    lines += ["", "Paired differences (paired by question within each seed, at each method's own final / best "
              "step): the mean of the seeds' paired means ± its standard error over seeds (the questions of one "
              "seed share its training run); with one seed, over its questions.", "",
              "| difference | final | best | final, per seed | s.e. over |", "| --- | --- | --- | --- | --- |"]
    for a, b in PAIRS:
        if a in runs and b in runs:
            final, best = paired_difference(runs[a], runs[b], "final"), paired_difference(runs[a], runs[b], "best")
            seeds_cell = per_seed(final["per_seed"], lambda v: f"{v:+.3f}")
            lines.append(f"| {LABELS[a]} - {LABELS[b]} | {final['mean']:+.3f} ± {final['se'] or 0:.3f} | "
                         f"{best['mean']:+.3f} ± {best['se'] or 0:.3f} | {seeds_cell} | {final['se_over']} |")
    lines += ["", f"Command: `{command}`"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict[str, dict[int, dict]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(REPLICATED), choices=[*METHODS, *EXTRA_METHODS])
    p.add_argument("--figs", default=str(REPO / "figs"))
    args = p.parse_args(argv)
    root, figs = Path(args.root), Path(args.figs)
    runs: dict[str, dict[int, dict]] = {}
    for method in args.methods:
        found = {s: root / f"seed{s}" / method for s in args.seeds}
        done = {s: seed_summary(d) for s, d in found.items() if (d / "metrics.jsonl").is_file()}
        if done:
            runs[method] = done
    if not runs:
        raise SystemExit(f"error: no run under {root}/seed<S>/<method>/metrics.jsonl for seeds {args.seeds}")
    figs.mkdir(parents=True, exist_ok=True)
    command = "python scripts/seed_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_table(runs, args.seeds, figs / "replication.md", command.strip())
    with open(figs / "replication_metrics.jsonl", "w") as handle:
        for method, by_seed in runs.items():
            for seed, run in by_seed.items():
                for entry in run["history"]:
                    handle.write(json.dumps({"method": method, "seed": seed, **entry}) + "\n")
    curves = [(LABELS[m], [r["history"] for r in by_seed.values()]) for m, by_seed in runs.items()]
    plot_curves([(label, seed_mean(histories)) for label, histories in curves], figs / "replication.png",
                title=f"SmolLM2-135M-Instruct, seeds {', '.join(map(str, args.seeds))}: mean ± s.e. over seeds, "
                      "each seed thin", thin={label: histories for label, histories in curves})
    print((figs / "replication.md").read_text())
    return runs


def seed_mean(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One history whose every numeric metric is the mean over the seeds that logged it at that step,
    with `<key>_se` (standard error over seeds) beside it, which plot_curves draws as a band."""
    by_step: dict[int, dict[str, list[float]]] = {}
    for history in histories:
        for entry in history:
            values = by_step.setdefault(entry["step"], {})
            for key, value in entry.items():
                if key != "step" and not key.endswith("_se") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    values.setdefault(key, []).append(float(value))
    out = []
    for step in sorted(by_step):
        entry: dict[str, Any] = {"step": step}
        for key, values in by_step[step].items():
            entry[key], se = mean_se(values)
            if se is not None:
                entry[key + "_se"] = se
        out.append(entry)
    return out


if __name__ == "__main__":
    main()
