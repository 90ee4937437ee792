"""Grading responses and the benchmark metrics (pure): the last `\\boxed{}` answer of each response
against the ground truth, each question's k samples, and pass@1 / avg@k / maj@k / pass@k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from corewarding import rewards
from corewarding.eval import EvalError


@dataclass
class GradedSample:
    response: str
    answer: str | None
    correct: bool


@dataclass
class QuestionScore:
    """The k samples of one question, graded."""

    n_samples: int
    n_correct: int
    n_present: int
    majority_answer: str | None
    majority_ratio: float
    majority_correct: bool

    @property
    def mean_correct(self) -> float:
        return self.n_correct / self.n_samples if self.n_samples else 0.0

    @property
    def any_correct(self) -> bool:
        return self.n_correct > 0


VERIFY_TIMEOUT_S = 5.0  # per math-verify check: evaluation is off the hot path, so be generous


def gt_equivalent(answer: str | None, ground_truth: str, gt_scorer: str = "math_verify") -> bool:
    """Does `answer` match the ground truth under `gt_scorer` (reward_model.gt_scorer's choices)."""
    if gt_scorer == "hendrycks":
        return bool(rewards.hendrycks_equivalent(answer, ground_truth))
    if gt_scorer != "math_verify":
        raise EvalError(f"--gt_scorer {gt_scorer!r} is unknown; use one of {' | '.join(rewards.GT_SCORERS)}")
    return bool(answer is not None and rewards.answers_equivalent(answer, ground_truth, timeout=VERIFY_TIMEOUT_S))


def grade_response(response: str, ground_truth: str, gt_scorer: str = "math_verify") -> GradedSample:
    """Extract the last \\boxed{} answer of a response and grade it against the ground truth."""
    answer = rewards.extract_boxed_answer(response)  # None for a missing, unbalanced or empty box
    correct = answer is not None and gt_equivalent(answer, ground_truth, gt_scorer)
    return GradedSample(response=response, answer=answer, correct=correct)


def score_question(answers: Sequence[str | None], correct: Sequence[bool], ground_truth: str,
                   gt_scorer: str = "math_verify") -> QuestionScore:
    """Score one question's k samples: correctness per sample is given; the majority answer of the
    extracted answers (math equivalence, empty answers never win) is graded here."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    present = [a for a in answers if a is not None and str(a).strip()]
    vote = rewards.majority_vote(list(answers), equivalence="math")  # label: None or a non-empty answer
    majority_correct = vote.label is not None and gt_equivalent(vote.label, ground_truth, gt_scorer)
    return QuestionScore(
        n_samples=len(answers),
        n_correct=sum(bool(c) for c in correct),
        n_present=len(present),
        majority_answer=vote.label,
        majority_ratio=float(vote.ratio),
        majority_correct=majority_correct,
    )


def aggregate(scores: Sequence[QuestionScore]) -> dict[str, float | int]:
    """Benchmark metrics from per-question scores. All accuracies are fractions in [0, 1]."""
    if not scores:
        raise ValueError("no questions to aggregate")
    ks = {s.n_samples for s in scores}
    if len(ks) != 1:
        raise ValueError(f"questions have different sample counts {sorted(ks)}: every question of a benchmark needs the same k")
    k = ks.pop()
    n = len(scores)
    pass1 = sum(s.mean_correct for s in scores) / n
    total_samples = sum(s.n_samples for s in scores)
    return {
        "n_questions": n,
        "k": k,
        "pass@1": pass1,
        f"avg@{k}": pass1,
        f"maj@{k}": sum(s.majority_correct for s in scores) / n,
        f"pass@{k}": sum(s.any_correct for s in scores) / n,
        "answer_present": sum(s.n_present for s in scores) / total_samples if total_samples else 0.0,
    }


def score_samples(
    responses: Sequence[Sequence[str]], ground_truths: Sequence[str], gt_scorer: str = "math_verify"
) -> tuple[dict[str, float | int], list[list[GradedSample]], list[QuestionScore]]:
    """Grade k responses for each question and aggregate: `responses[i]` are the samples of the
    question whose ground truth is `ground_truths[i]`. Returns (metrics, graded, per-question)."""
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} response groups but {len(ground_truths)} ground truths")
    graded = [[grade_response(r, gt, gt_scorer) for r in group] for group, gt in zip(responses, ground_truths)]
    scores = [
        score_question([g.answer for g in group], [g.correct for g in group], gt, gt_scorer)
        for group, gt in zip(graded, ground_truths)
    ]
    return aggregate(scores), graded, scores

