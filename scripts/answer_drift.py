"""What a run's validation answers converge to: per method and validation step, the accuracy, the
share of the single most common answer over all questions (a model that answers the question is
spread out; one that answers the same thing whatever it is asked is not), the share of the one-shot
example's answer, of single-digit answers, of responses without an answer, and the agreement of the
samples of one question, and of the digit shortcut: the answer of the problem's operation applied to
its operands' last digits (86 - 32 -> 4), wrong whenever it differs from the true answer.

With --rollouts, a second table from the training rollouts of Co-rewarding-I runs, per window of
steps: how often the pseudo-label (the twin's majority answer) is right, how often the two views'
majorities agree, agree on a wrong answer, or are the digit shortcut, and how often the rollouts
answer with the shortcut or a single digit. A shortcut that only needs the numbers, which a twin
shares with its original, lets both views agree on the same wrong answer and reward it.

    python scripts/answer_drift.py --root outputs/replication --seeds 0 1 2 --out figs/answer_drift.md
    python scripts/answer_drift.py --root outputs/replication --seeds 0 --methods co_rewarding_i --rollouts
    python scripts/answer_drift.py --runs "per-view loss=outputs/perview/co_rewarding_i" --rollouts

Reads `<root>/seed<S>/<method>/validation/<step>.jsonl` and `rollouts/<step>.jsonl` (or
`<root>/<method>/...` without --seeds, or the folders given as `--runs label=<folder>`), the
per-sample files every replication run writes.
"""

from __future__ import annotations

import argparse
import operator
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from corewarding.data.builtin import ONE_SHOT_EXAMPLE_ANSWER as EXAMPLE_ANSWER
from corewarding.experiments.builtin_runs import EXTRA_METHODS, REPLICATED
from corewarding.trainer.tracking import read_metrics  # any JSONL file of records

OPERATIONS = (operator.add, operator.sub, operator.mul)
METHODS = (*REPLICATED, *EXTRA_METHODS)  # the replication's methods and the union control


def digit_shortcut(question: str, truth: str | None) -> str | None:
    """The problem's operation applied to the last digits of its two numbers (86 - 32 -> "4") where that
    differs from the true answer; None when it does not, or for a question that is not such a problem."""
    numbers = [int(x) for x in re.findall(r"\d+", question)]
    if len(numbers) != 2 or truth is None or not truth.lstrip("-").isdigit():
        return None
    for x, y in (numbers, numbers[::-1]):  # "how much is 32 less than 86" names the operands in reverse
        for op in OPERATIONS:
            if op(x, y) == int(truth):
                shortcut = str(op(x % 10, y % 10))
                return shortcut if shortcut != truth else None
    return None


def drift(rows: list[dict[str, Any]], example_answer: str = EXAMPLE_ANSWER) -> dict[str, float]:
    """The answer statistics of one validation file's samples (see the module docstring)."""
    answers = [r.get("answer") for r in rows]
    given = [a for a in answers if a is not None]
    by_question: dict[str, list] = defaultdict(list)
    for r in rows:
        by_question[r["prompt"]].append(r.get("answer"))
    n = len(rows)
    return {
        "acc": sum(float(r["reward"]) for r in rows) / n,  # the validation scorer's verdict, as val/acc
        "top_answer": Counter(given).most_common(1)[0][1] / n if given else 0.0,
        "example_answer": answers.count(example_answer) / n,
        "single_digit": sum(is_single_digit(a) for a in answers) / n,
        "no_answer": answers.count(None) / n,
        "agreement": sum(max(Counter(v).values()) / len(v) for v in by_question.values()) / len(by_question),
        "digit_shortcut": sum(r.get("answer") is not None and r["answer"] == digit_shortcut(r["prompt"], r["ground_truth"])
                              for r in rows) / n,
    }


def is_single_digit(answer: str | None) -> bool:
    return answer is not None and len(answer) == 1 and answer.isdigit()


def pair_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The pseudo-label statistics of one training step of Co-rewarding-I (policy rollouts with a
    `pair_id` and a `view`): shares over (pair, view) labels, over pairs, and over rollouts."""
    policy = [r for r in rows if r.get("role") == "policy" and r.get("pair_id") is not None]
    shortcuts = [digit_shortcut(r["prompt"], r["ground_truth"]) for r in policy]
    # (label, truth, shortcut) of each (pair, view): its rollouts share them
    label = {(r["pair_id"], r["view"]): (r["pseudo_label"], r["ground_truth"], s) for r, s in zip(policy, shortcuts)}
    views = defaultdict(list)
    for (pair, _), value in label.items():
        views[pair].append(value)
    both = [v for v in views.values() if len(v) == 2]
    agreed = [v[0] for v in both if v[0][0] is not None and v[0][0] == v[1][0]]  # judged by the first view's truth
    return {
        "label_acc": sum(lab is not None and lab == truth for lab, truth, _ in label.values()) / len(label),
        "views_agree": len(agreed) / len(both),
        "agree_wrong": sum(lab != truth for lab, truth, _ in agreed) / len(both),
        "label_shortcut": sum(lab is not None and lab == short for lab, _, short in label.values()) / len(label),
        "answer_shortcut": sum(r["answer"] is not None and r["answer"] == short
                               for r, short in zip(policy, shortcuts)) / len(policy),
        "single_digit": sum(is_single_digit(r["answer"]) for r in policy) / len(policy),
    }


def read_rollouts(folder: Path, window: int) -> dict[str, dict[str, float]]:
    """"first-last" steps -> the mean of `pair_stats` over each window of `window` training steps."""
    per_step = {}
    for path in sorted((folder / "rollouts").glob("*.jsonl"), key=lambda p: int(p.stem)):
        rows = read_metrics(path)
        if any(r.get("pair_id") is not None for r in rows):
            per_step[int(path.stem)] = pair_stats(rows)
    out = {}
    steps = sorted(per_step)
    for start in range(0, len(steps), window):
        chunk = steps[start:start + window]
        out[f"{chunk[0]}-{chunk[-1]}"] = {k: statistics.fmean(per_step[s][k] for s in chunk) for k in per_step[chunk[0]]}
    return out


def read_run(folder: Path) -> dict[int, dict[str, float]]:
    """step -> drift of every validation file of one run folder."""
    out = {}
    for path in sorted((folder / "validation").glob("*.jsonl"), key=lambda p: int(p.stem)):
        rows = read_metrics(path)
        if rows:
            out[int(path.stem)] = drift(rows)
    return out


def table(runs: dict[str, dict[Any, dict[str, float]]], step_label: str = "step") -> str:
    """A markdown table: one row per run and step (or window of steps), a column per statistic."""
    keys = list(next(iter(next(iter(runs.values())).values())))
    lines = [f"| run | {step_label} | " + " | ".join(keys) + " |", "| --- | ---: |" + " ---: |" * len(keys)]
    for name, steps in runs.items():
        for step, values in steps.items():
            lines.append(f"| {name} | {step} | " + " | ".join(f"{values[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="the runs folder: <root>/seed<S>/<method> with --seeds, else <root>/<method>")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--runs", nargs="+", default=[], help="label=<run folder>, instead of (or beside) --root")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", default=None, help="write the table(s) here (markdown)")
    p.add_argument("--rollouts", action="store_true", help="also the pseudo-label table of the training rollouts")
    p.add_argument("--window", type=int, default=4, help="training steps per row of the rollouts table")
    args = p.parse_args(argv)
    if args.root is None and not args.runs:
        raise SystemExit("error: give the runs as --root <folder> [--seeds ...] or --runs label=<folder> ...")
    folders = {}
    if args.root is not None:
        root = Path(args.root)
        folders = {f"{m} seed {s}": root / f"seed{s}" / m for s in args.seeds for m in args.methods} if args.seeds else \
            {m: root / m for m in args.methods}
    for text in args.runs:
        label, folder = text.split("=", 1) if "=" in text else (Path(text).name, text)
        if not (Path(folder) / "validation").is_dir():
            raise SystemExit(f"error: {text}: {folder} has no validation/ folder (a replicate.py run folder)")
        folders[label] = Path(folder)
    runs = {name: read_run(folder) for name, folder in folders.items() if (folder / "validation").is_dir()}
    text = table({name: steps for name, steps in runs.items() if steps})
    if args.rollouts:
        pairs = {name: read_rollouts(folder, args.window) for name, folder in folders.items()
                 if (folder / "rollouts").is_dir()}
        pairs = {name: windows for name, windows in pairs.items() if windows}
        if pairs:
            text += "\n\nTraining rollouts (Co-rewarding-I pairs):\n\n" + table(pairs, step_label="steps")
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
