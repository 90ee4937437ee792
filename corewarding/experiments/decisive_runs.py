"""The decisive experiment's finished runs as `scripts/decisive.py` keeps their records: each run's
held-out correctness per graded step, its logged metrics and its run time (read by
`scripts/decisive_results.py` and the monitor's tests)."""

from __future__ import annotations

import gzip
import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from corewarding.experiments.decisive_protocol import DONE, LATE_STEPS, TRUNCATED
from corewarding.trainer.tracking import read_metrics

# each run name's label in the tables, in their order
LABELS = {"gt": "GT reward", "majority_voting": "Majority-Voting", "entropy": "Entropy",
          "co_rewarding_i": "Co-rewarding-I", "co_rewarding_ii": "Co-rewarding-II",
          "co_rewarding_iii": "Co-rewarding-III", "majority_voting-float32": "Majority-Voting (float32)",
          "co_rewarding_iii-release_ema": "Co-rewarding-III (release's EMA teacher)"}


def split_name(name: str) -> tuple[str, str]:
    """A run name's method and variant: `<method>` or `<method>-<variant>` (variant "" for the first)."""
    method, _, variant = name.partition("-")
    return method, variant


def label(name: str) -> str:
    """A run's label in the tables: `LABELS`', or its method's with the variant named."""
    if name in LABELS:
        return LABELS[name]
    method, variant = split_name(name)
    return LABELS.get(method, method) + (f" ({variant})" if variant else "")


def heldout_records(path: Path) -> list[dict[str, Any]]:
    """A graded checkpoint's per-question records (`correct`, `extracted_answer`, ...), in index order."""
    with gzip.open(path, "rt") as handle:
        return sorted((json.loads(line) for line in handle), key=lambda r: r["index"])


def correctness(records: list[dict[str, Any]]) -> list[int]:
    """Per question, 1 when the greedy answer was right."""
    return [int(r["correct"]) for r in records]


@dataclass
class Run:
    name: str
    seed: int
    heldout: dict[int, list[int]]  # step -> per-question correctness (step 0: the base model)
    history: list[dict[str, Any]]
    minutes: float | None
    final_answers: list[str | None]  # per held-out question, the greedy answer at step 48 (post-hoc; None: none)

    def accuracy(self, step: int) -> float | None:
        return statistics.fmean(self.heldout[step]) if step in self.heldout else None

    def late_mean(self, key: str) -> float | None:
        values = [h[key] for h in self.history if h.get("step") in LATE_STEPS and key in h]
        return statistics.fmean(values) if values else None

    def answer_counts(self, questions: Iterable[int] | None = None) -> Counter:
        """How many of `questions` (indices; default all) got each answer at step 48, None included."""
        indices = range(len(self.final_answers)) if questions is None else questions
        return Counter(self.final_answers[i] for i in indices)

    def answer_share(self, answer: str) -> float:
        """The share of the held-out questions answered `answer` at step 48 (the run has that grading)."""
        return self.answer_counts()[answer] / len(self.final_answers)

    def truncated(self) -> bool:
        """The protocol's test: at least TRUNCATED of the late rollouts cut at the length cap."""
        return (self.late_mean("response_length/clip_ratio") or 0.0) >= TRUNCATED


def read_runs(root: Path) -> tuple[list[int], list[Run]]:
    """The base model's correctness and every finished run under `root`."""
    base = correctness(heldout_records(root / "base" / "heldout" / "0.jsonl.gz"))
    runs = []
    for done in sorted(root.glob(f"seed*/*/{DONE}")):
        folder, marker = done.parent, json.loads(done.read_text())
        graded = {int(p.name.split(".")[0]): heldout_records(p) for p in (folder / "heldout").glob("*.jsonl.gz")}
        heldout = {0: base} | {step: correctness(records) for step, records in graded.items()}
        if any(len(correct) != len(base) for correct in heldout.values()):
            raise SystemExit(f"error: {folder}: graded on {sorted({len(c) for c in heldout.values()})} held-out questions, "
                             f"the base model in {root} on {len(base)}: records of another set do not belong here")
        history = read_metrics(folder / "metrics.jsonl")
        seconds = marker.get("train_seconds", 0.0) + sum(marker.get("eval_seconds", {}).values())
        runs.append(Run(folder.name, int(folder.parent.name.removeprefix("seed")), heldout, history, seconds / 60,
                        [r["extracted_answer"] for r in graded.get(48, [])]))
    return base, runs


def by_method(runs: list[Run]) -> list[Run]:
    """Runs in the tables' order: by method (as `LABELS` lists them), then seed."""
    return sorted(runs, key=lambda r: (list(LABELS).index(r.name) if r.name in LABELS else 99, r.seed))
