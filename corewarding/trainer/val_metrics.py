"""Validation metrics over several responses per question, as verl's `process_validation_metrics`
(verl/trainer/ppo/metric_utils.py) reports them when `actor_rollout_ref.rollout.val_kwargs.n` > 1.

Per question with N scored responses: `mean@N` and `std@N` of its scores; for every subset size n
in 2, 4, 8, ... (below N) and N, `best@n`, `worst@n` and `maj@n` as the mean and std over 1000
bootstrap subsets of n responses drawn with replacement (`/mean`, `/std`). maj@n is the score of
the subset's majority answer: the project's vote (`corewarding.rewards.vote_classes`, the
equivalence `reward_model.vote_equivalence` names; responses without an answer never win; a tie
goes to the class seen first in the subset) and, as verl, the score of its first response in the
subset. Each metric is then averaged over the questions of a data source.

The subsets are drawn exactly as verl draws them (a NumPy RandomState seeded with 42 for every
question and subset size), so a run reports the numbers verl would for the same scores.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from corewarding.rewards.voting import vote_classes
from corewarding.trainer.rollout_stats import mean, standard_error_over_questions

__all__ = ["answer_classes", "question_metrics", "subset_sizes", "validation_metrics"]

N_BOOTSTRAP = 1000  # verl's
SEED = 42  # verl's


def subset_sizes(n: int) -> list[int]:
    """verl's subset sizes for N responses: 2, 4, 8, ... below N, then N (none for N = 1)."""
    if n <= 1:
        return []
    sizes, size = [], 2
    while size < n:
        sizes.append(size)
        size *= 2
    return sizes + [n]


def answer_classes(answers: Sequence[str | None], equivalence: str) -> np.ndarray:
    """Per response, the index of its answer's vote class (first seen = 0), -1 without an answer."""
    classes = np.full(len(answers), -1, dtype=np.int64)
    for k, cls in enumerate(vote_classes(list(answers), equivalence)):
        classes[cls.members] = k
    return classes


def _majority_scores(draws: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per bootstrap subset (a row of response indices), the score of its majority answer's first
    response; a subset without any answer gives its first response's score."""
    rows, size = draws.shape
    drawn = classes[draws]
    if classes.max(initial=-1) < 0:
        return scores[draws[:, 0]]
    member = drawn[..., None] == np.arange(classes.max() + 1)  # [subset, position, class]
    counts = member.sum(axis=1)
    first = np.where(member.any(axis=1), member.argmax(axis=1), size)
    winner = (counts * (size + 1) - first).argmax(axis=1)  # most votes, then seen first
    position = first[np.arange(rows), winner]
    out = scores[draws[np.arange(rows), np.minimum(position, size - 1)]]
    none = counts.max(axis=1) == 0
    out[none] = scores[draws[none, 0]]
    return out


def question_metrics(scores: Sequence[float], classes: Sequence[int], n_bootstrap: int = N_BOOTSTRAP,
                     seed: int = SEED) -> dict[str, float]:
    """verl's metrics of one question's scored responses (`classes`: `answer_classes`)."""
    values = np.asarray(scores, dtype=np.float64)
    votes = np.asarray(classes, dtype=np.int64)
    n = len(values)
    out = {f"mean@{n}": float(values.mean())}
    if n > 1:
        out[f"std@{n}"] = float(values.std())
    for size in subset_sizes(n):
        draws = np.random.RandomState(seed).choice(n, size=(n_bootstrap, size), replace=True)
        picked = values[draws]
        for name, per_subset in (("best", picked.max(axis=1)), ("worst", picked.min(axis=1)),
                                 ("maj", _majority_scores(draws, values, votes))):
            out[f"{name}@{size}/mean"] = float(per_subset.mean())
            out[f"{name}@{size}/std"] = float(per_subset.std())
    return out


def validation_metrics(sources: Sequence[str], questions: Sequence[Hashable], scores: Sequence[float],
                       answers: Sequence[str | None], equivalence: str, n_bootstrap: int = N_BOOTSTRAP,
                       seed: int = SEED) -> dict[str, float]:
    """`val/<source>/<metric>` for every data source: `question_metrics` averaged over its questions."""
    rows: dict[str, dict[Hashable, list[int]]] = {}
    for i, (source, question) in enumerate(zip(sources, questions, strict=True)):
        rows.setdefault(source, {}).setdefault(question, []).append(i)
    out: dict[str, float] = {}
    for source in sorted(rows):
        per_metric: dict[str, list[float]] = {}
        for indices in rows[source].values():
            classes = answer_classes([answers[i] for i in indices], equivalence)
            found = question_metrics([scores[i] for i in indices], classes, n_bootstrap, seed)
            for name, value in found.items():
                per_metric.setdefault(name, []).append(value)
        out.update({f"val/{source}/{name}": float(np.mean(values)) for name, values in per_metric.items()})
    return out


def summarize_validation(sources: Sequence[str], questions: Sequence[Hashable], scores: Sequence[float],
                         answers: Sequence[str | None], lengths: Sequence[float], n: int,
                         equivalence: str) -> dict[str, float]:
    """A validation's metrics from its samples: `val/<source>/acc`, `val/acc` (the mean over all
    samples) and its standard error over questions, the share with an answer, the mean response
    length; with `n` > 1 samples per question also `validation_metrics`."""
    metrics = {f"val/{source}/acc": mean(s for s, d in zip(scores, sources) if d == source) for source in sorted(set(sources))}
    metrics["val/acc"] = mean(scores)
    metrics["val/acc_se"] = standard_error_over_questions(scores, questions)
    metrics["val/answer_present"] = mean(a is not None for a in answers)
    if n > 1:
        metrics.update(validation_metrics(sources, questions, scores, answers, equivalence))
    metrics["val/response_length/mean"] = mean(lengths)
    return metrics
