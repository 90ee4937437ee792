"""Validation metrics over several responses per question (verl's process_validation_metrics),
against hand computations on a small table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from corewarding.trainer.val_metrics import answer_classes, question_metrics, subset_sizes, validation_metrics

# two data sources; question q1 has four responses, q2 and q3 four each, scores by hand
TABLE = [  # source, question, score, answer
    ("math", "q1", 1.0, "1/2"), ("math", "q1", 1.0, "\\frac{1}{2}"), ("math", "q1", 0.0, "3"), ("math", "q1", 0.0, "3"),
    ("math", "q2", 0.0, "7"), ("math", "q2", 0.0, "7"), ("math", "q2", 0.0, None), ("math", "q2", 0.0, "8"),
    ("gsm", "q3", 1.0, "4"), ("gsm", "q3", 1.0, "4"), ("gsm", "q3", 1.0, "4"), ("gsm", "q3", 1.0, "4"),
]


def _reference(scores, labels, size, n_bootstrap=1000, seed=42):
    """Plain loops over the same bootstrap draws as verl (np.random.seed(42); np.random.choice):
    best / worst / majority per subset; `labels` are the answer classes written by hand (None: no
    answer, never a majority); majority ties go to the label seen first in the subset."""
    draws = np.random.RandomState(seed).choice(len(scores), size=(n_bootstrap, size), replace=True)
    best, worst, maj = [], [], []
    for row in draws:
        subset = [int(i) for i in row]
        best.append(max(scores[i] for i in subset))
        worst.append(min(scores[i] for i in subset))
        counts: dict = {}
        for i in subset:
            if labels[i] is not None:
                counts.setdefault(labels[i], []).append(i)
        if counts:
            top = max(len(v) for v in counts.values())
            label = next(k for k, v in counts.items() if len(v) == top)  # dicts keep first-seen order
            maj.append(scores[counts[label][0]])
        else:
            maj.append(scores[subset[0]])
    return {name: (float(np.mean(v)), float(np.std(v))) for name, v in (("best", best), ("worst", worst), ("maj", maj))}


def test_subset_sizes_are_verls():
    assert subset_sizes(1) == [] and subset_sizes(2) == [2] and subset_sizes(4) == [2, 4]
    assert subset_sizes(5) == [2, 4, 5] and subset_sizes(8) == [2, 4, 8]


def test_answer_classes_use_the_vote_equivalence():
    answers = ["1/2", "\\frac{1}{2}", "3", None, "3"]
    assert answer_classes(answers, "math").tolist() == [0, 0, 1, -1, 1]
    assert answer_classes(answers, "string").tolist() == [0, 1, 2, -1, 2]


@pytest.mark.parametrize("equivalence, labels", [
    ("math", ["half", "half", "three", "three"]),  # 1/2 and \frac{1}{2} are one answer
    ("string", ["1/2", "frac", "three", "three"]),  # ... or two, each outvoted by the two 3s
])
def test_question_metrics_by_hand(equivalence, labels):
    rows = [r for r in TABLE if r[1] == "q1"]
    scores, answers = [r[2] for r in rows], [r[3] for r in rows]
    found = question_metrics(scores, answer_classes(answers, equivalence))
    assert found["mean@4"] == 0.5 and found["std@4"] == 0.5
    for size in (2, 4):
        expected = _reference(scores, labels, size)
        for name in ("best", "worst", "maj"):
            assert found[f"{name}@{size}/mean"] == pytest.approx(expected[name][0], abs=1e-12), (name, size)
            assert found[f"{name}@{size}/std"] == pytest.approx(expected[name][1], abs=1e-12), (name, size)
    # closed forms, up to the bootstrap's error (1000 subsets: 4 standard errors): best@2 is the chance
    # that a pair holds a right answer, 1 - 1/4, and its std that of a Bernoulli
    assert found["best@2/mean"] == pytest.approx(0.75, abs=4 * math.sqrt(0.75 * 0.25 / 1000))
    assert found["best@2/std"] == pytest.approx(math.sqrt(0.75 * 0.25), abs=0.03)
    assert found["worst@2/mean"] == pytest.approx(0.25, abs=4 * math.sqrt(0.75 * 0.25 / 1000))
    if equivalence == "math":  # a 2-2 tie goes to the answer seen first: right half the time
        assert found["maj@4/mean"] > 0.4


def test_validation_metrics_average_questions_per_source():
    sources, questions, scores, answers = (list(c) for c in zip(*TABLE))
    metrics = validation_metrics(sources, questions, scores, answers, "math")
    # gsm: one question, all right: every statistic is 1, every std 0
    for name in ("mean@4", "best@2/mean", "best@4/mean", "worst@4/mean", "maj@2/mean", "maj@4/mean"):
        assert metrics[f"val/gsm/{name}"] == 1.0, name
    assert metrics["val/gsm/std@4"] == 0.0 and metrics["val/gsm/maj@4/std"] == 0.0
    # math: q1 as above, q2 all wrong (0 whatever is drawn): the mean of the two questions
    q1 = question_metrics(scores[:4], answer_classes(answers[:4], "math"))
    for name, value in q1.items():
        assert metrics[f"val/math/{name}"] == pytest.approx(value / 2, abs=1e-12), name
    assert metrics["val/math/mean@4"] == 0.25
    assert validation_metrics(sources, questions, scores, answers, "math") == metrics  # seeded
