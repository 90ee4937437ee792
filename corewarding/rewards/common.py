"""What every reward shares: `RewardOutput` and the reward's signature, the batch rows it reads,
the check of an answer against the ground truth (`ground_truth_verifier`, its time budget) and the
metrics every method logs (`common_metrics`, `vote_metrics`, `verify_metrics`;
`corewarding.rewards.functions` says what each means)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import torch

from corewarding.batch import Batch
from corewarding.rewards.answers import VerifyBudget, answers_equivalent
from corewarding.rewards.extraction import extract_boxed_answer
from corewarding.rewards.hendrycks import hendrycks_equivalent
from corewarding.rewards.voting import Vote, majority_vote

GT_SCORERS = ("math_verify", "hendrycks")
# Wall-clock seconds that one reward call may spend in math-verify for its ground-truth metrics
# (gt_acc of the label-free methods, pseudo_label_acc); env COREWARDING_METRIC_VERIFY_BUDGET.
DEFAULT_METRIC_BUDGET_S = float(os.environ.get("COREWARDING_METRIC_VERIFY_BUDGET", "10"))


@dataclass
class RewardOutput:
    scores: torch.Tensor  # [N] float32
    metrics: dict[str, float] = field(default_factory=dict)
    rows: dict[str, list] = field(default_factory=dict)  # per rollout: "answer", "pseudo_label"

    def select(self, indices: list[int]) -> RewardOutput:
        """The scores and rows of the rollouts at `indices`, in that order; the metrics as they are."""
        return RewardOutput(self.scores[torch.as_tensor(indices, dtype=torch.long)], dict(self.metrics),
                            {key: [values[i] for i in indices] for key, values in self.rows.items()})


RewardFn = Callable[..., RewardOutput]

def boxed_answers(batch: Batch) -> list[str | None]:
    if "response_text" not in batch.rows:
        return [None] * len(batch)
    return [extract_boxed_answer(t) for t in batch.rows["response_text"]]


def ground_truths(batch: Batch) -> list[str | None]:
    values = batch.rows.get("ground_truth")
    if values is None:
        return [None] * len(batch)
    return [None if v is None or str(v).strip() == "" else str(v) for v in values]


def require_rows(batch: Batch, keys: Sequence[str], who: str) -> None:
    missing = [k for k in keys if k not in batch.rows]
    if missing:
        raise KeyError(f"{who} needs batch rows {missing}; the batch has {sorted(batch.rows)}")


def group_rows(ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    out: dict[Hashable, list[int]] = {}
    for i, key in enumerate(ids):
        out.setdefault(key, []).append(i)
    return out


class HendrycksCheck:
    """The release's MATH string check: instant, so it needs no time budget."""

    timeouts = 0
    skipped = 0

    @staticmethod
    def equivalent(a: str | None, b: str | None) -> bool:
        return hendrycks_equivalent(a, b)


Verifier = VerifyBudget | HendrycksCheck


def ground_truth_verifier(gt_scorer: str, budget_s: float | None) -> Verifier:
    """The (answer, ground truth) check named by `reward_model.gt_scorer`; math-verify under a
    wall-clock budget of `budget_s` seconds for the whole reward call (None: no budget)."""
    if gt_scorer == "math_verify":
        return VerifyBudget(budget_s)
    if gt_scorer == "hendrycks":
        return HendrycksCheck()
    raise ValueError(f"reward_model.gt_scorer={gt_scorer!r} is unknown; use one of {' | '.join(GT_SCORERS)}")


def vote_in_generation_order(
    answers: list[str | None], sample_index: Sequence[int], indices: Sequence[int], equivalence: str
) -> Vote:
    """`majority_vote` over the answers of rows `indices`, taken in generation order so that a tie
    goes to the answer generated first (spelling only orders rows that share a sample_index)."""
    ordered = sorted(indices, key=lambda i: (int(sample_index[i]), answers[i] is None, answers[i] or ""))
    return majority_vote([answers[i] for i in ordered], equivalence)


def matches_label(answer: str | None, label: str | None, equivalence: str) -> bool:
    if answer is None or label is None:
        return False
    if equivalence == "string":
        return answer.strip() == label
    return answers_equivalent(answer, label)


def mean_or_zero(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def gt_correct(answers: list[str | None], gts: list[str | None], verifier: Verifier) -> list[bool]:
    """Per rollout: does the answer match the ground truth (False where there is none)."""
    return [g is not None and verifier.equivalent(a, g) for a, g in zip(answers, gts)]


def common_metrics(
    scores: list[float], answers: list[str | None], gts: list[str | None], verifier: Verifier,
    correct: list[bool] | None = None,
) -> dict[str, float]:
    """score_mean, answer_present and, over the rows with a ground truth, gt_acc; `correct` is
    `gt_correct(answers, gts, ...)` when the caller has it already."""
    metrics = {
        "score_mean": mean_or_zero(scores),
        "answer_present": mean_or_zero([a is not None for a in answers]),
    }
    with_gt = [i for i, g in enumerate(gts) if g is not None]
    if with_gt:
        if correct is None:
            correct = gt_correct(answers, gts, verifier)
        metrics["gt_acc"] = mean_or_zero([correct[i] for i in with_gt])
    return metrics


def verify_metrics(metrics: dict[str, float], *verifiers: VerifyBudget) -> dict[str, float]:
    """math-verify checks that hit their time limit, and pairs left unchecked when the budget ran out."""
    metrics["verify_timeouts"] = float(sum(v.timeouts for v in verifiers))
    metrics["verify_skipped"] = float(sum(v.skipped for v in verifiers))
    return metrics


def group_ground_truth(indices: Sequence[int], gts: list[str | None]) -> str | None:
    for i in indices:
        if gts[i] is not None:
            return gts[i]
    return None


def vote_metrics(
    metrics: dict[str, float], group_votes: list[tuple[Vote, str | None]], verifier: Verifier
) -> dict[str, float]:
    """Adds majority_ratio (all groups) and pseudo_label_acc (groups with a ground truth)."""
    metrics["majority_ratio"] = mean_or_zero([vote.ratio for vote, _ in group_votes])
    judged = [verifier.equivalent(vote.label, gt) for vote, gt in group_votes if gt is not None]
    if judged:
        metrics["pseudo_label_acc"] = mean_or_zero(judged)
    return metrics


def reward_output(scores: list[float], metrics: dict[str, float], answers, labels) -> RewardOutput:
    return RewardOutput(
        scores=torch.tensor(scores, dtype=torch.float32).reshape(len(scores)),
        metrics={k: float(v) for k, v in metrics.items()},
        rows={"answer": list(answers), "pseudo_label": list(labels)},
    )
