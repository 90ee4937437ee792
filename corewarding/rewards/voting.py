"""Majority vote over answers, equivalent answers (math or string) forming one class."""

from __future__ import annotations

from collections import Counter
from typing import Iterable, NamedTuple, Sequence

from corewarding.rewards.answers import normalised_equivalent, normalize_answer


class Vote(NamedTuple):
    label: str | None
    ratio: float
    n_valid: int


class _Class:
    __slots__ = ("key", "size", "spellings", "members")

    def __init__(self, key: str) -> None:
        self.key = key
        self.size = 0
        self.spellings: Counter[str] = Counter()  # insertion order = first seen
        self.members: list[int] = []


def vote_classes(answers: Sequence[str | None], equivalence: str = "math") -> list[_Class]:
    """Answer classes in first-seen order. "string": identical after strip. "math": buckets of
    identical `normalize_answer`, then bucket representatives merged with `answers_equivalent`
    (each new bucket joins the first earlier class it is equivalent to), so math-verify runs
    O(#distinct answers x #classes) times, not O(n^2)."""
    if equivalence not in ("math", "string"):
        raise ValueError(f"equivalence must be 'math' or 'string', got {equivalence!r}")
    buckets: dict[str, _Class] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        spelling = answer.strip()
        key = spelling if equivalence == "string" else normalize_answer(spelling)
        if not key:
            continue
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Class(key)
        bucket.size += 1
        bucket.spellings[spelling] += 1
        bucket.members.append(i)
    if equivalence == "string":
        return list(buckets.values())
    classes: list[_Class] = []
    for bucket in buckets.values():
        for cls in classes:
            if normalised_equivalent(bucket.key, cls.key):
                cls.size += bucket.size
                cls.spellings.update(bucket.spellings)
                cls.members.extend(bucket.members)
                break
        else:
            classes.append(bucket)
    return classes


def majority_vote(answers: Iterable[str | None], equivalence: str = "math") -> Vote:
    """The majority answer of `answers`.

    None / empty answers never win. With ``"math"`` equivalent answers (``0.5``, ``\\frac{1}{2}``,
    ``1/2``, ``\\dfrac12``) form one class, and the label is the class's most frequent spelling
    (stripped; ties -> first seen). Ties between classes go to the class seen first. With
    ``"string"`` this is the release exactly: exact match after strip, ``Counter.most_common``
    (first seen on a tie). ``ratio`` = size of the winning class / len(answers) (None included);
    no valid answer -> ``Vote(None, 0.0, 0)``.
    """
    answers = list(answers)
    return class_vote(vote_classes(answers, equivalence), len(answers))


def class_vote(classes: Sequence[_Class], n: int) -> Vote:
    """The vote of `vote_classes` over `n` answers (None included): the largest class, the first
    seen on a tie, spelt as its most frequent spelling; no class -> ``Vote(None, 0.0, 0)``."""
    if not classes:
        return Vote(None, 0.0, 0)
    best = classes[0]
    for cls in classes[1:]:
        if cls.size > best.size:
            best = cls
    label = best.spellings.most_common(1)[0][0]
    n_valid = sum(cls.size for cls in classes)
    return Vote(label, best.size / n, n_valid)
