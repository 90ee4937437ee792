"""What a run's validation answers converge to: per method and validation step, the accuracy, the
share of the single most common answer over all questions (a model that answers the question is
spread out; one that answers the same thing whatever it is asked is not), the share of the one-shot
example's answer, of single-digit answers, of responses without an answer, and the agreement of the
samples of one question.

    python scripts/answer_drift.py --root outputs/replication --seeds 0 1 2 --out figs/answer_drift.md

Reads `<root>/seed<S>/<method>/validation/<step>.jsonl` (or `<root>/<method>/validation/` without
--seeds), the per-sample files every replication run writes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corewarding.data import ONE_SHOT_SYSTEM_PROMPT  # noqa: E402 - after the path

EXAMPLE_ANSWER = re.search(r"\\boxed\{(\d+)\}", ONE_SHOT_SYSTEM_PROMPT).group(1)  # the one-shot example's answer
METHODS = ("gt", "majority_voting", "self_certainty", "entropy", "co_rewarding_i", "co_rewarding_ii", "majority_voting_union")


def drift(rows: list[dict[str, Any]], example_answer: str = EXAMPLE_ANSWER) -> dict[str, float]:
    """The answer statistics of one validation file's samples (see the module docstring)."""
    answers = [r.get("answer") for r in rows]
    given = [a for a in answers if a is not None]
    by_question: dict[str, list] = defaultdict(list)
    for r in rows:
        by_question[r["prompt"]].append(r.get("answer"))
    n = len(rows)
    return {
        "acc": sum(r.get("answer") is not None and r["answer"] == r["ground_truth"] for r in rows) / n,
        "top_answer": Counter(given).most_common(1)[0][1] / n if given else 0.0,
        "example_answer": answers.count(example_answer) / n,
        "single_digit": sum(a is not None and len(a) == 1 and a.isdigit() for a in answers) / n,
        "no_answer": answers.count(None) / n,
        "agreement": sum(max(Counter(v).values()) / len(v) for v in by_question.values()) / len(by_question),
    }


def read_run(folder: Path) -> dict[int, dict[str, float]]:
    """step -> drift of every validation file of one run folder."""
    out = {}
    for path in sorted((folder / "validation").glob("*.jsonl"), key=lambda p: int(p.stem)):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[int(path.stem)] = drift(rows)
    return out


def table(runs: dict[str, dict[int, dict[str, float]]]) -> str:
    """A markdown table: one row per run and step."""
    keys = ("acc", "top_answer", "example_answer", "single_digit", "no_answer", "agreement")
    lines = ["| run | step | " + " | ".join(keys) + " |", "| --- | ---: |" + " ---: |" * len(keys)]
    for name, steps in runs.items():
        for step, values in steps.items():
            lines.append(f"| {name} | {step} | " + " | ".join(f"{values[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", default=None, help="write the table here (markdown)")
    args = p.parse_args(argv)
    root = Path(args.root)
    folders = {f"{m} seed {s}": root / f"seed{s}" / m for s in args.seeds for m in args.methods} if args.seeds else \
        {m: root / m for m in args.methods}
    runs = {name: read_run(folder) for name, folder in folders.items() if (folder / "validation").is_dir()}
    text = table({name: steps for name, steps in runs.items() if steps})
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
