"""Co-rewarding-I's variants side by side (issue 20, item 5: why it gives back its gain): one row
per run, e.g. the default joint loss, the release's per-view loss, half the pairs per step (the
prompt count of Majority-Voting) and Majority-Voting on both views.

    python scripts/ablation_table.py --runs "Co-rewarding-I=figs/runs/seed0/co_rewarding_i" \\
        "per-view loss=figs/runs/perview/co_rewarding_i" "4 pairs per step=figs/runs/batch4/co_rewarding_i" \\
        --figs figs

A run is `label=<folder>` (or a folder, labelled by its name) with the `metrics.jsonl` that
`scripts/replicate.py` writes. Writes into `--figs`: `ablations.md` (per run: base / best / final
validation accuracy ± its standard error over questions, the pseudo-label accuracy, the majority
ratio and the share of rollouts with an answer, each averaged over the first and the second half of
the training steps, and the collapse monitor's reading) and `ablations.png` (the replication's panels, one
line per run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from corewarding.experiments.curves import plot_curves
from corewarding.experiments.runs import MONITOR_NOTE, accuracy_cells, monitor_cell, parse_run_arg, run_summary

REPO = Path(__file__).resolve().parents[1]

# metric -> column, each reported as "first half / second half" of the training steps
HALVES = {"reward/pseudo_label_acc": "pseudo-label acc", "monitor/majority_ratio": "majority ratio",
          "reward/answer_present": "answer present"}


def half_means(history: list[dict[str, Any]], key: str) -> tuple[float, float] | None:
    """The mean of `key` over the first and over the second half of the training steps (an odd
    middle step goes to the second half); None where the run did not log it."""
    values = [float(h[key]) for h in history if h["step"] > 0 and isinstance(h.get(key), (int, float))]
    if len(values) < 2:
        return None
    middle = len(values) // 2
    return statistics.fmean(values[:middle]), statistics.fmean(values[middle:])


def summarise(text: str) -> dict[str, Any]:
    """One row: the run's summary (validation by step, best / final, collapse) with the half means
    of HALVES."""
    label, metrics_file = parse_run_arg(text)
    run = run_summary(metrics_file)
    run["label"] = label
    run["halves"] = {key: half_means(run["history"], key) for key in HALVES}
    return run


def _halves(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.2f} / {pair[1]:.2f}"


def write_table(runs: list[dict[str, Any]], path: Path, command: str) -> None:
    lines = ["# Co-rewarding-I's variants", "",
             "Validation accuracy ± one standard error over questions; a run's best step is the maximum over its "
             "steps, so it is biased upwards. The next three columns are means over the first / the second half "
             "of the training steps: the share of groups whose pseudo-label equals the ground truth, the share of a "
             "group's rollouts that give its most common answer, and the share of rollouts with an answer. "
             + MONITOR_NOTE, "",
             "| run | base | best (step) | final | " + " | ".join(f"{name}, 1st / 2nd half" for name in HALVES.values())
             + " | collapse monitor |",
             "| --- | --- | --- | --- | " + "--- | " * len(HALVES) + "--- |"]
    for run in runs:
        cells = [run["label"], *accuracy_cells(run), *(_halves(run["halves"][key]) for key in HALVES), monitor_cell(run["monitor"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{command}`"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="label=<run folder>, one per row")
    p.add_argument("--figs", default=str(REPO / "figs"))
    args = p.parse_args(argv)
    runs = [summarise(text) for text in args.runs]
    labels = [run["label"] for run in runs]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"error: two runs share a label ({', '.join(labels)}): give each as label=<folder>")
    figs = Path(args.figs)
    figs.mkdir(parents=True, exist_ok=True)
    command = "python scripts/ablation_table.py " + " ".join(f'"{a}"' if " " in a else a
                                                            for a in (argv if argv is not None else sys.argv[1:]))
    write_table(runs, figs / "ablations.md", command)
    plot_curves([(run["label"], run["history"]) for run in runs], figs / "ablations.png",
                title="Co-rewarding-I's variants, SmolLM2-135M-Instruct")
    print((figs / "ablations.md").read_text())
    return runs


if __name__ == "__main__":
    main()
