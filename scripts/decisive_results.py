"""The decisive experiment's analysis, exactly as figs/decisive/PROTOCOL.md fixes it: the primary
endpoint with its t-test, the secondary endpoints, each run's collapse status, and the verdict.

    python scripts/decisive_results.py                   # figs/decisive/RESULTS.md and decisive.png
    python scripts/decisive_results.py --root figs/decisive/runs --out figs/decisive

Reads the records `scripts/decisive.py` keeps (`<root>/seed<S>/<run>/`: metrics.jsonl,
heldout/<step>.jsonl.gz, decisive_done.json; `<root>/base/heldout/0.jsonl.gz`). Before the primary
seeds are all in, it writes an interim report and no verdict. The follow-up of EXPLORATORY.md
(`--exploratory`, the same layout) gets a section of its own after the protocol's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from corewarding.experiments.decisive_protocol import HELDOUT_STEPS, PRIMARY, PRIMARY_SEEDS
from corewarding.data.builtin import ONE_SHOT_EXAMPLE_ANSWER as EXAMPLE_ANSWER
from corewarding.experiments.decisive_posthoc import answer_table, operation_table
from corewarding.experiments.decisive_runs import LABELS, Run, by_method, label, read_runs, split_name
from corewarding.experiments.runs import merged_steps, monitor_cell, replay_monitor
from corewarding.trainer.monitor import CollapseMonitor

REPO = Path(__file__).resolve().parents[1]
FIGS = REPO / "figs" / "decisive"
EXTENDED_SEEDS = 12
MIN_EFFECT = 0.03
TABLE_STEPS = (0, *HELDOUT_STEPS)  # the base model and the graded checkpoints
# step 1's metrics of the policy's own rollouts and log-probs, which no change of the teacher touches
POLICY_OWN = ("actor/entropy", "prompt_length/", "response_length/", "reward/answer_present", "reward/gt_acc",
              "monitor/majority_ratio", "monitor/distinct_answers", "monitor/majority_acc", "rollout/log_prob_diff")


# ----------------------------------------------------------------------------- statistics
def t_summary(values: list[float]) -> dict[str, float]:
    """Mean, its standard error, the one-sample t against 0 (S - 1 degrees of freedom), the
    two-sided p and the 90 % interval."""
    from scipy import stats

    n = len(values)
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else math.nan
    t = mean / se if n > 1 and se > 0 else math.nan
    half = stats.t.ppf(0.95, n - 1) * se if n > 1 else math.nan
    p = 2 * stats.t.sf(abs(t), n - 1) if n > 1 and se > 0 else math.nan
    return {"mean": mean, "se": se, "t": t, "df": n - 1, "p": p, "lo90": mean - half, "hi90": mean + half, "n": n}


def fisher_greater(a: int, n_a: int, b: int, n_b: int) -> float:
    """One-sided Fisher exact p that group a collapses more often than group b."""
    from scipy import stats

    return float(stats.fisher_exact([[a, n_a - a], [b, n_b - b]], alternative="greater").pvalue)


def status(run: Run, base_accuracy: float) -> str:
    """The protocol's reading of a run at step 48: collapsed, truncation, fell (neither sign) or held."""
    acc16, acc48 = run.accuracy(16), run.accuracy(48)
    if acc16 is None or acc48 is None:
        return "unfinished"
    if acc48 >= 0.5 * max(base_accuracy, acc16):
        return "held"
    if run.truncated():
        return "truncation"
    return "collapsed" if (run.late_mean("monitor/majority_ratio") or 0.0) >= 0.9 else "fell"


def monitor_agrees(first: dict[str, int], reading: str) -> bool:
    """The collapse monitor, replayed over a run's metrics (`first`: `replay_monitor`'s), flags a
    collapse exactly when the protocol reads the run as collapsed, and a degenerate run exactly when
    it reads truncation."""
    return ((CollapseMonitor.COLLAPSE in first) == (reading == "collapsed")
            and (CollapseMonitor.DEGENERATE in first) == (reading == "truncation"))


def paired_differences(runs: list[Run], a: str, b: str, step: int) -> dict[int, float]:
    """Per seed that has both: mean over questions of a's correctness minus b's at `step`."""
    by = {(r.name, r.seed): r for r in runs}
    seeds = sorted({r.seed for r in runs if (a, r.seed) in by and (b, r.seed) in by})
    return {s: statistics.fmean(x - y for x, y in zip(by[a, s].heldout[step], by[b, s].heldout[step]))
            for s in seeds if step in by[a, s].heldout and step in by[b, s].heldout}


def verdict(primary: dict[str, float], collapses: dict[str, int], seeds: int) -> tuple[str, str]:
    """The protocol's verdict rules, with the clause that decided it."""
    from scipy import stats

    mv, cr = collapses[PRIMARY[0]], collapses[PRIMARY[1]]
    critical = stats.t.ppf(0.975, seeds - 1)
    if primary["mean"] >= MIN_EFFECT and primary["t"] >= critical:
        return "supported", f"D = {primary['mean']:+.3f} >= +{MIN_EFFECT} and t = {primary['t']:.2f} >= {critical:.3f}"
    if 2 * mv >= seeds and cr == 0:
        return "supported", f"Majority-Voting collapsed in {mv} of {seeds} seeds, Co-rewarding-II in none"
    if primary["hi90"] < MIN_EFFECT and (mv <= 1 or cr >= mv):
        return "refuted", (f"the 90 % interval of D ends at {primary['hi90']:+.3f} < +{MIN_EFFECT}, and Majority-Voting "
                           f"collapsed in {mv} seeds, Co-rewarding-II in {cr}")
    return "inconclusive", f"neither rule holds (D = {primary['mean']:+.3f}, t = {primary['t']:.2f}; collapses {mv} / {cr})"


# ----------------------------------------------------------------------------- the report
def _fmt(stat: dict[str, float]) -> str:
    if stat["n"] < 2:
        return f"{stat['mean']:+.3f} (1 seed)"
    p = f"p = {stat['p']:.3f}" if stat["p"] >= 0.001 else "p < 0.001"
    return (f"{stat['mean']:+.3f} ± {stat['se']:.3f} (t = {stat['t']:.2f}, df {stat['df']}, {p}; "
            f"90 % interval {stat['lo90']:+.3f} .. {stat['hi90']:+.3f})")


def accuracy_table(runs: list[Run]) -> list[str]:
    lines = ["| run | seeds | " + " | ".join(f"step {s}" for s in TABLE_STEPS) + " | minutes per run |",
             "| --- | --- |" + " --- |" * (len(TABLE_STEPS) + 1)]
    for name in LABELS:
        mine = [r for r in runs if r.name == name]
        if not mine:
            continue
        cells = []
        for step in TABLE_STEPS:
            values = [r.accuracy(step) for r in mine if r.accuracy(step) is not None]
            se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
            cells.append(f"{statistics.fmean(values):.3f}" + (f" ± {se:.3f}" if se is not None else ""))
        minutes = statistics.fmean(r.minutes for r in mine)
        lines.append(f"| {LABELS[name]} | {len(mine)} | " + " | ".join(cells) + f" | {minutes:.0f} |")
    return lines


def validation_table(runs: list[Run]) -> list[str]:
    """The 64-question set's avg@4 (T = 0.8, `val/acc` as the trainer logs it) at steps 0, 8, ..., 48:
    mean ± s.e. over seeds per method, then each seed."""
    steps = range(0, 49, 8)
    lines = ["| run | seeds | " + " | ".join(f"step {s}" for s in steps) + " |", "| --- | --- |" + " --- |" * len(steps)]
    for name in LABELS:
        mine = sorted((r for r in runs if r.name == name), key=lambda r: r.seed)
        curves = [{h["step"]: h["val/acc"] for h in r.history if "val/acc" in h} for r in mine]
        if not mine:
            continue
        cells = []
        for step in steps:
            values = [c[step] for c in curves if step in c]
            se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
            cells.append((f"{statistics.fmean(values):.3f}" + (f" ± {se:.3f}" if se is not None else "")) if values else "-")
        lines.append(f"| {LABELS[name]} | {len(mine)} | " + " | ".join(cells) + " |")
        lines += [f"| s{r.seed} | | " + " | ".join(f"{c[step]:.3f}" if step in c else "-" for step in steps) + " |"
                  for r, c in zip(mine, curves)]
    return lines


def collapse_table(runs: list[Run], base_accuracy: float, monitors: dict[int, dict[str, int]]) -> list[str]:
    """Each run's reading by the protocol and by the collapse monitor (`monitors`: id(run) -> first)."""
    lines = ["| run | seed | step 16 | step 32 | step 48 | majority ratio 45-48 | truncated 45-48 | answered 45-48 "
             "| reading | collapse monitor | minutes |", "| --- |" + " --- |" * 10]
    finished = [r for r in runs if status(r, base_accuracy) != "unfinished"]
    for r in by_method(finished):
        late = [r.late_mean(key) for key in ("monitor/majority_ratio", "response_length/clip_ratio",
                                             "reward/answer_present")]
        cells = [label(r.name), str(r.seed), *(f"{r.accuracy(step):.3f}" for step in HELDOUT_STEPS),
                 *(f"{value:.2f}" if value is not None else "-" for value in late),
                 status(r, base_accuracy), monitor_cell(monitors[id(r)]),
                 f"{r.minutes:.0f}" if r.minutes is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def truncation_note(runs: list[Run]) -> str:
    """What "truncated" and "answered" count, and the runs whose late rollouts are mostly cut yet answered."""
    cut = [f"{label(r.name)} s{r.seed}" for r in runs
           if r.truncated() and (r.late_mean("reward/answer_present") or 0.0) >= 0.5]
    return ("Truncated: the share of training rollouts cut at the 40-token cap; answered: the share with an "
            "extractable (boxed) answer. A rollout can be both: it answers, then writes on to the cap"
            + (f" (mostly so in {', '.join(cut)}: cut but answered, not a degenerate run)." if cut else "."))


def reading_counts(runs: list[Run], base_accuracy: float) -> str:
    """How many runs of each method got each reading (`status`), e.g. `Majority-Voting: fell 4, held 1`."""
    counts: dict[str, Counter] = {}
    for r in by_method(runs):
        counts.setdefault(label(r.name), Counter())[status(r, base_accuracy)] += 1
    return "; ".join(f"{label}: " + ", ".join(f"{word} {k}" for word, k in sorted(c.items()))
                     for label, c in counts.items())


def step_one_check(run: Run, twin: Run) -> str:
    """EXPLORATORY.md's check (as amended): a variant of the teacher leaves the policy's step 1 as the
    protocol's run of its method and seed computed it, unless the two trainers compute differently.
    The teacher's own step 1 differs: its EMA update, with the variant's weight, comes before it."""
    first = [next((h for h in r.history if h.get("step") == 1), {}) for r in (run, twin)]
    keys = sorted(k for k in first[0].keys() & first[1].keys() if k.startswith(POLICY_OWN))
    gaps = {k: abs(first[0][k] - first[1][k]) / max(abs(first[1][k]), 1e-12) for k in keys if first[0][k] != first[1][k]}
    if not keys:
        return "no step 1 to compare"
    if not gaps:
        return f"equal ({len(keys)} metrics)"
    worst = max(gaps, key=gaps.get)
    return f"differs in {len(gaps)} of {len(keys)} metrics (largest: {worst}, relative {gaps[worst]:.1e})"


def exploratory_section(runs: list[Run], explored: Sequence[Run], base_accuracy: float) -> list[str]:
    """EXPLORATORY.md's runs, each beside the protocol's run of its method on the same seed."""
    lines = ["## Exploratory, outside the protocol: figs/decisive/EXPLORATORY.md", "",
             "Each run of the follow-up (`exploratory/`, pre-registered in EXPLORATORY.md, never in the verdict) "
             "under the protocol's run of its method on the same seed. The last column checks that the two "
             "trainers computed the policy's step 1 alike (its rollouts and log-probs; the teacher's differ).", "",
             "| run | seed | step 16 | step 32 | step 48 | reading | share answering " + EXAMPLE_ANSWER
             + " at step 48 | the policy's step 1 against the protocol's run |", "| --- |" + " --- |" * 7]
    for run in sorted(explored, key=lambda r: (r.name, r.seed)):
        twin = next((r for r in runs if r.name == split_name(run.name)[0] and r.seed == run.seed), None)
        for r, check in ((run, step_one_check(run, twin) if twin else "no protocol run"), (twin, "-")):
            if r is None:
                continue
            cells = [label(r.name), str(r.seed),
                     *(f"{r.accuracy(s):.3f}" if r.accuracy(s) is not None else "-" for s in HELDOUT_STEPS),
                     status(r, base_accuracy), f"{r.answer_share(EXAMPLE_ANSWER):.2f}" if r.final_answers else "-", check]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(base: list[int], runs: list[Run], ops: Sequence[str], explored: Sequence[Run] = ()) -> str:
    """RESULTS.md: the endpoints, the collapse readings and, once the primary seeds are in, the verdict;
    then the post-hoc answers and the exploratory runs (`explored`), outside the protocol."""
    base_accuracy = statistics.fmean(base)
    primary = paired_differences(runs, PRIMARY[1], PRIMARY[0], 48)
    counts = {name: sum(status(r, base_accuracy) == "collapsed" for r in runs if r.name == name and r.seed in primary)
              for name in PRIMARY}
    lines = ["# The decisive experiment: results", "",
             f"Computed by `python scripts/decisive_results.py` from `figs/decisive/runs/` as `PROTOCOL.md` fixes it. "
             f"Base model on the 1,024 held-out questions (greedy): {base_accuracy:.3f}.", "",
             "## Held-out accuracy (greedy, 1,024 questions; mean ± s.e. over seeds)", "", *accuracy_table(runs), "",
             "## The replication's 64 questions (avg@4 at T = 0.8, validated in the trainer; mean ± s.e. over seeds, "
             "then each seed)", "", *validation_table(runs), ""]
    lines += ["## Primary: Co-rewarding-II − Majority-Voting at step 48, paired by question within a seed", ""]
    if primary:
        per_seed = ", ".join(f"s{s}: {d:+.3f}" for s, d in primary.items())
        lines += [f"D = {_fmt(t_summary(list(primary.values())))}", "", f"Per seed: {per_seed}", ""]
    else:
        lines += ["No seed has both runs finished yet.", ""]
    changes = {name: [r.accuracy(48) - r.accuracy(16) for r in runs if r.name == name] for name in PRIMARY}
    lines += ["## Secondary", "", "Change from step 16 to step 48 (held-out):", ""]
    lines += [f"- {LABELS[name]}: {_fmt(t_summary(v))}" for name, v in changes.items() if v]
    by_seed = {name: {r.seed: r.accuracy(48) - r.accuracy(16) for r in runs if r.name == name} for name in PRIMARY}
    both = sorted(set(by_seed[PRIMARY[0]]) & set(by_seed[PRIMARY[1]]))
    if both:
        gap = [by_seed[PRIMARY[1]][s] - by_seed[PRIMARY[0]][s] for s in both]
        lines.append(f"- Co-rewarding-II's change − Majority-Voting's, paired by seed: {_fmt(t_summary(gap))}")
    n = len(primary)
    monitors = {id(r): replay_monitor(merged_steps(r.history)) for r in runs}
    fisher = fisher_greater(counts[PRIMARY[0]], n, counts[PRIMARY[1]], n) if n else math.nan
    lines += ["", f"Collapses over the {n} paired seeds: Majority-Voting {counts[PRIMARY[0]]}, Co-rewarding-II "
              f"{counts[PRIMARY[1]]} (one-sided Fisher p = {fisher:.3f}). Readings: {reading_counts(runs, base_accuracy)}. "
              "Each run's reading:", "", *collapse_table(runs, base_accuracy, monitors), ""]
    disagree = [f"{label(r.name)} s{r.seed}" for r in runs
                if not monitor_agrees(monitors[id(r)], status(r, base_accuracy))]
    lines += [truncation_note(runs), ""]
    fell_apart = [f"{label(r.name)} s{r.seed}" for r in runs if status(r, base_accuracy) != "unfinished"
                  and (CollapseMonitor.FELL in monitors[id(r)]) != (status(r, base_accuracy) != "held")]
    lines += ["The collapse monitor (`corewarding/trainer/monitor.py`, replayed over each run's metrics at this "
              "version's rules; it reads the 64-question validation set where the protocol reads the held-out one) "
              + (f"disagrees with the protocol's reading on {', '.join(disagree)}." if disagree else
                 "flags a collapse or a degenerate run exactly where the protocol reads one.")
              + " Its warning that validation accuracy fell (below half its best so far, at any step) is not the "
              "protocol's fall (step 48 below half of step 16)" + (f"; the two differ on {', '.join(fell_apart)}."
                                                                   if fell_apart else ", yet they agree on every run."), ""]
    lines += ["## Verdict", ""]
    if n >= PRIMARY_SEEDS:
        word, reason = verdict(t_summary(list(primary.values())), counts, n)
        lines.append(f"**{word}** at this scale, at {n} seeds: {reason}.")
    else:
        lines.append(f"None yet: {n} of the protocol's {PRIMARY_SEEDS} primary seed pairs are finished (an interim "
                     "look; the verdict is taken at 8 seeds, or at 12 after the one extension).")
    lines += ["", "## Post-hoc, outside the protocol: what the runs answer at step 48", "",
              "Every prompt carries the built-in task's one-shot example, `23 + 45 = 68 ... \\boxed{68}`: copying its "
              f"answer {EXAMPLE_ANSWER} is a consensus that any reward by agreement pays for.", "", *answer_table(runs, ops, EXAMPLE_ANSWER),
              "", "Held-out accuracy on each operation's questions (greedy; mean over a method's seeds):", "",
              *operation_table(base, runs, ops)]
    if explored:
        lines += ["", *exploratory_section(runs, explored, base_accuracy)]
    return "\n".join(lines) + "\n"


def plot(base: list[int], runs: list[Run], path: Path) -> None:
    """Per method: held-out accuracy, majority ratio and truncated share against the step (mean over
    seeds, each seed faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held-out accuracy (greedy)", None), ("majority ratio", "monitor/majority_ratio"),
              ("truncated share", "response_length/clip_ratio")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for index, name in enumerate(n for n in LABELS if any(r.name == n for r in runs)):
        colour = f"C{index}"
        mine = [r for r in runs if r.name == name]
        for ax, (title, key) in zip(axes, panels):
            curves = []
            for r in mine:
                steps = sorted(r.heldout) if key is None else [h["step"] for h in r.history if key in h]
                values = [r.accuracy(s) for s in steps] if key is None else [h[key] for h in r.history if key in h]
                ax.plot(steps, values, color=colour, alpha=0.2, linewidth=0.8)
                curves.append(dict(zip(steps, values)))
            common = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(common, [statistics.fmean(c[s] for c in curves) for s in common], color=colour, linewidth=2,
                    label=f"{LABELS[name]} ({len(mine)})")
            ax.set_title(title)
            ax.set_xlabel("step")
    axes[0].axhline(statistics.fmean(base), color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_ops(path: Path, questions: int) -> list[str]:
    """Each held-out question's operation, in index order, from the set the runs were graded on."""
    ops = [json.loads(line)["op"] for line in path.read_text().splitlines()]
    if len(ops) != questions:
        raise SystemExit(f"error: {path} has {len(ops)} questions, the records {questions}: pass the set they were "
                         "graded on with --set")
    return ops


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(FIGS / "runs"))
    p.add_argument("--exploratory", default=str(FIGS / "exploratory"), help="the follow-up's records (EXPLORATORY.md)")
    p.add_argument("--set", default=str(FIGS / "val_1024.jsonl"), help="the held-out questions (their operations)")
    p.add_argument("--out", default=str(FIGS))
    args = p.parse_args(argv)
    base, runs = read_runs(Path(args.root))
    explored = read_runs(Path(args.exploratory))[1] if Path(args.exploratory).is_dir() else []
    text = report(base, runs, read_ops(Path(args.set), len(base)), explored)
    out = Path(args.out)
    (out / "RESULTS.md").write_text(text)
    if runs:
        plot(base, runs, out / "decisive.png")
    print(text)
    return text


if __name__ == "__main__":
    main()
