"""Co-rewarding-I with unfaithful twins (issue 20): how its accuracy and its pseudo-labels hold up
when a share f of the rephrased questions asks about another number, beside Majority-Voting on
both views as independent prompts (the union baseline).

    python scripts/robustness_table.py --runs 0=<root>/seed0/co_rewarding_i 0.25=<root>/f025/co_rewarding_i \\
        0.5=<root>/f050/co_rewarding_i --union <root>/union/majority_voting_union --figs figs

A run is a folder with the `metrics.jsonl` that `scripts/replicate.py` writes (`<out>/<method>/`;
the metrics file itself is accepted too), given as `f=<folder>`. Where replicate.py's
`<out>/data/args.json` lies beside the run, its recorded unfaithful fraction must equal f (`--union`
may leave f out and take it from there). Writes into `--figs`: `robustness.md` (per run: base /
best / final validation accuracy with its standard error where logged, mean pseudo-label accuracy
over the training steps, its split by faithful / unfaithful pairs and the share of unfaithful
originals labelled with their twin's answer where logged, the collapse monitor's reading) and
`robustness.png` (validation and pseudo-label accuracy vs step per f, the union dashed; the split
vs step; best / final vs f).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from corewarding.experiments.builtin_runs import LABELS
from corewarding.experiments.runs import MONITOR_NOTE, accuracy_cells, monitor_cell, parse_run_arg, points, run_summary

REPO = Path(__file__).resolve().parents[1]

PSEUDO = "reward/pseudo_label_acc"
# the Co-rewarding-I reward's split (corewarding.rewards.functions._faithfulness_metrics): key -> column
SPLIT = {"reward/pseudo_label_acc_faithful": "faithful pairs", "reward/pseudo_label_acc_unfaithful": "unfaithful pairs",
         "reward/pseudo_label_twin_acc_unfaithful": "unfaithful: label = twin's answer"}
UNION = "majority_voting_union"


def recorded_fraction(run_dir: Path) -> float | None:
    """The unfaithful fraction replicate.py recorded for the data of the runs beside `run_dir`."""
    record = run_dir.parent / "data" / "args.json"
    return float(json.loads(record.read_text()).get("unfaithful_fraction", 0.0)) if record.is_file() else None


def parse_run(text: str, need_f: bool) -> tuple[float | None, Path]:
    """(f, metrics file) of `f=<folder>` (or `<folder>` where f may come from the recorded data)."""
    name, path = parse_run_arg(text)
    given = None
    if "=" in text and not Path(text).exists():
        try:
            given = float(name)
        except ValueError:
            raise SystemExit(f"error: {text}: give the run as f=<folder>, f a number (the unfaithful fraction)") from None
    recorded = recorded_fraction(path.parent)
    if given is not None and recorded is not None and abs(given - recorded) > 1e-9:
        raise SystemExit(f"error: {text}: the run was trained at f={recorded:g} ({path.parent.parent / 'data' / 'args.json'})")
    if given is None and need_f and recorded is None:
        raise SystemExit(f"error: {text}: give the run as f=<folder> (no recorded unfaithful fraction beside it)")
    return (given if given is not None else recorded), path


def _mean_of(steps: list[dict[str, Any]], key: str) -> float | None:
    values = [float(h[key]) for h in steps if isinstance(h.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def fraction_summary(method: str, f: float | None, metrics_file: Path) -> dict[str, Any]:
    """The run's summary (`corewarding.experiments.runs.run_summary`: validation by step, base / best
    / final, the collapse monitor replayed, the history) with its method, its f and the mean over training
    steps of the pseudo-label accuracy and of its split."""
    run = run_summary(metrics_file)
    training = [h for h in run["history"] if h["step"] > 0]
    return {"method": method, "f": f, **run, "pseudo": _mean_of(training, PSEUDO),
            "split": {key: _mean_of(training, key) for key in SPLIT}}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _f(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def write_table(runs: list[dict[str, Any]], path: Path, command: str) -> None:
    lines = ["# Co-rewarding-I with unfaithful twins", "",
             "A share f of the training pairs' rephrased twins asks about another number (the same wording, "
             "another true answer) and still carries the original's ground truth, as a model's rewrite file "
             "would. Validation accuracy ± one standard error over questions (where logged); a run's best step is "
             "the maximum over its steps, so it is biased upwards. The pseudo-label columns are means over the "
             "training steps of the share of groups whose pseudo-label equals the ground truth, over all groups, "
             "the groups of faithful pairs and those of unfaithful pairs; the last of them is, over the original "
             "questions of unfaithful pairs, the share labelled with the twin's own answer (the model answered the "
             "twin right and so taught the original a wrong label). " + MONITOR_NOTE, "",
             "| method | f | base | best (step) | final | pseudo-label acc | " + " | ".join(SPLIT.values())
             + " | collapse monitor |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        cells = [LABELS[run["method"]], _f(run["f"]), *accuracy_cells(run), _cell(run["pseudo"]),
                 *(_cell(run["split"][k]) for k in SPLIT), monitor_cell(run["monitor"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{command}`"]
    path.write_text("\n".join(lines) + "\n")


def _band(ax: Any, run: dict[str, Any], **style: Any) -> None:
    """Validation accuracy vs step, with a standard-error band where every point has one."""
    steps = sorted(run["val"])
    values = [run["val"][s] for s in steps]
    line = ax.plot(steps, values, marker="o", markersize=3, **style)[0]
    if all(s in run["se"] for s in steps):
        ax.fill_between(steps, [v - run["se"][s] for v, s in zip(values, steps)],
                        [v + run["se"][s] for v, s in zip(values, steps)], color=line.get_color(), alpha=0.15, linewidth=0)


def plot(runs: list[dict[str, Any]], out: Path) -> Path:
    """Four panels: validation accuracy and pseudo-label accuracy vs step (one line per f, the union
    dashed), the faithful / unfaithful / twin split vs step, best and final accuracy vs f."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.4))
    (val_ax, pseudo_ax), (split_ax, f_ax) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    co = [r for r in runs if r["method"] != UNION]
    for i, run in enumerate(runs):
        union = run["method"] == UNION
        style = {"color": "0.4" if union else colours[i % len(colours)], "linestyle": "--" if union else "-",
                 "label": f"{LABELS[run['method']]}, f={_f(run['f'])}" if union else f"f={_f(run['f'])}"}
        _band(val_ax, run, **style)
        found = points(run["history"], PSEUDO)
        if found is not None:
            pseudo_ax.plot(*found, **style)
        for key, dash in zip(SPLIT, ("-", ":", "-.")):
            found = points(run["history"], key)
            if found is not None:
                split_ax.plot(*found, color=style["color"], linestyle=dash, label=f"{style['label']}: {SPLIT[key]}")
    xs = [r["f"] for r in co]
    for which, marker, colour in (("best", "o", "black"), ("final", "s", "tab:purple")):  # apart from the f colours
        f_ax.errorbar(xs, [r["val"][r[which]] for r in co], yerr=[r["se"].get(r[which], 0.0) for r in co],
                      marker=marker, color=colour, capsize=3, label=f"Co-rewarding-I, {which}")
    for run in (r for r in runs if r["method"] == UNION):
        for which, dash in (("best", "--"), ("final", ":")):
            f_ax.axhline(run["val"][run[which]], color="0.4", linestyle=dash,
                         label=f"{LABELS[UNION]}, f={_f(run['f'])}, {which}")
    titles = ("validation accuracy", "pseudo-label accuracy", "pseudo-label accuracy by pair", "validation accuracy vs f")
    for ax, title in zip(axes.flat, titles):
        ax.set_title(title)
        ax.set_xlabel("unfaithful fraction f" if ax is f_ax else "step")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    if not split_ax.get_lines():
        split_ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=split_ax.transAxes)
    fig.suptitle("Co-rewarding-I with a share f of unfaithful twins")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="f=<run folder> of Co-rewarding-I, one per f")
    p.add_argument("--union", nargs="*", default=[], help="[f=]<run folder> of Majority-Voting on both views")
    p.add_argument("--figs", default=str(REPO / "figs"))
    args = p.parse_args(argv)
    co = sorted((fraction_summary("co_rewarding_i", *parse_run(t, need_f=True)) for t in args.runs), key=lambda r: r["f"])
    runs = co + [fraction_summary(UNION, *parse_run(t, need_f=False)) for t in args.union]
    figs = Path(args.figs)
    figs.mkdir(parents=True, exist_ok=True)
    command = "python scripts/robustness_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_table(runs, figs / "robustness.md", command.strip())
    plot(runs, figs / "robustness.png")
    print((figs / "robustness.md").read_text())
    return runs


if __name__ == "__main__":
    main()
