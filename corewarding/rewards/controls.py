"""The controls and a baseline that a label-free result is reviewed against: rewards that say nothing
about an answer's correctness (`random_reward`), only about its form (`format_reward`) or point away
from it (`incorrect`), after Spurious Rewards (Shao et al., arXiv 2506.10947), and EMPO's soft
majority vote (`empo`, Zhang et al., arXiv 2504.05812). The methods are registered in
`corewarding.methods`; docs/method.md describes them.

The contract and the metrics are those of `corewarding.rewards.functions` (score_mean,
answer_present, gt_acc, pseudo_label_acc and majority_ratio where there is a label, the
math-verify counters), plus `rewarded_gt_acc`: over the rollouts with a ground truth and a
reward above 0, the share whose answer is right, each weighted by its reward (for a 0 / 1 reward,
the share of the rewarded rollouts that are right; left out when nothing is rewarded).

Draws come from `stable_uniform`, a hash of named inputs: never from an RNG whose state a
process, a resume or a second call of the same reward (dynamic sampling scores a batch twice)
would change.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string
from typing import Hashable, Sequence

from corewarding.batch import Batch
from corewarding.rewards.answers import answers_equivalent
from corewarding.rewards.common import (
    DEFAULT_METRIC_BUDGET_S,
    RewardOutput,
    Verifier,
    boxed_answers,
    common_metrics,
    ground_truth_verifier,
    ground_truths,
    group_ground_truth,
    group_rows,
    gt_correct,
    mean_or_zero,
    require_rows,
    reward_output,
    verify_metrics,
    vote_metrics,
)
from corewarding.rewards.hendrycks import hendrycks_equivalent
from corewarding.rewards.voting import Vote, class_vote, vote_classes

__all__ = ["OFFSETS", "empo", "format_reward", "incorrect", "random_reward", "stable_uniform", "wrong_label"]

OFFSETS = (1, 2, 3)  # how far `wrong_label` moves a ground truth's last integer (or letter)
_INTEGER = re.compile(r"\d+")


def stable_uniform(*key: object) -> float:
    """A number in [0, 1) that depends on `key` alone (SHA-256 of its parts written as strings): the
    same in every process and on every call, whatever the state of any random generator."""
    digest = hashlib.sha256(json.dumps([str(part) for part in key]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _rows(batch: Batch, key: str) -> list:
    """Row `key`, or None for every rollout when the batch has no such row."""
    values = batch.rows.get(key)
    return list(values) if values is not None else [None] * len(batch)


def _metrics(
    scores: Sequence[float], answers: list[str | None], gts: list[str | None], gt_scorer: str,
    metric_budget_s: float | None,
) -> tuple[dict[str, float], Verifier]:
    """The common metrics and `rewarded_gt_acc`, with the verifier that judged them (its math-verify
    time bounded by `metric_budget_s`)."""
    verifier = ground_truth_verifier(gt_scorer, metric_budget_s)
    correct = gt_correct(answers, gts, verifier)
    metrics = common_metrics(list(scores), answers, gts, verifier, correct)
    rewarded = [(s, c) for s, c, g in zip(scores, correct, gts) if g is not None and s > 0]
    if rewarded:
        metrics["rewarded_gt_acc"] = sum(s for s, c in rewarded if c) / sum(s for s, _ in rewarded)
    return metrics, verifier


def random_reward(
    batch: Batch, teacher: Batch | None = None, *, gt_scorer: str = "math_verify", p: float = 0.5, seed: int = 0,
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Random reward (Spurious Rewards): 1 with probability `p`, independently of the response.

    The draw of a rollout is `stable_uniform("random", seed, data_source, index, uid, sample_index)`
    < p: the question (its data source and `extra_info.index`), the prompt row of the step (`uid`,
    which the trainer writes as ``<step>-<row>``, ``<step>-<gen>-<row>`` under dynamic sampling, so
    it changes every step and a resumed step re-forms it) and the rollout's place in its group. The
    response's text is left out: the reward carries no information about the response, and a resumed
    step draws the same rewards even where the engine does not sample the same tokens again.
    `p` and `seed` come from `reward_model.reward_kwargs`."""
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"random: reward_model.reward_kwargs.p={p} must be in [0, 1]")
    require_rows(batch, ["response_text", "uid", "sample_index"], "random")
    keys = zip(_rows(batch, "data_source"), _rows(batch, "index"), batch.rows["uid"], batch.rows["sample_index"])
    scores = [float(stable_uniform("random", seed, source, index, uid, int(k)) < float(p)) for source, index, uid, k in keys]
    answers, gts = boxed_answers(batch), ground_truths(batch)
    metrics, verifier = _metrics(scores, answers, gts, gt_scorer, metric_budget_s)
    return reward_output(scores, verify_metrics(metrics, verifier), answers, [None] * len(batch))


def format_reward(
    batch: Batch, teacher: Batch | None = None, *, gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Format reward (Spurious Rewards): 1 when the response has an answer, i.e. its last ``\\boxed{}``
    (or ``\\fbox{}``) is complete and not empty (`extract_boxed_answer`), else 0."""
    require_rows(batch, ["response_text"], "format")
    answers, gts = boxed_answers(batch), ground_truths(batch)
    scores = [float(answer is not None) for answer in answers]
    metrics, verifier = _metrics(scores, answers, gts, gt_scorer, metric_budget_s)
    return reward_output(scores, verify_metrics(metrics, verifier), answers, [None] * len(batch))


def _moved(ground_truth: str, offset: int) -> str | None:
    """The ground truth with its last integer literal raised by `offset` (its width kept: ``0.05`` ->
    ``0.06``), or a single letter moved `offset` places on in the alphabet (a multiple-choice
    answer); None when it has neither."""
    literals = list(_INTEGER.finditer(ground_truth))
    if literals:
        last = literals[-1]
        moved = str(int(last.group()) + offset).zfill(len(last.group()))
        return ground_truth[:last.start()] + moved + ground_truth[last.end():]
    if len(ground_truth) == 1 and ground_truth in string.ascii_letters:
        first = ord("A") if ground_truth.isupper() else ord("a")
        return chr(first + (ord(ground_truth) - first + offset) % 26)
    return None


@functools.lru_cache(maxsize=1 << 16)
def wrong_label(ground_truth: str, seed: int = 0, data_source: Hashable = None, index: Hashable = None) -> str | None:
    """The fixed wrong label of a question: its ground truth with the last integer literal raised by
    an offset from `OFFSETS` (``12`` -> ``14``, ``\\frac{1}{2}`` -> ``\\frac{1}{3}``, ``-3`` -> ``-4``),
    or a one-letter answer moved on by it. The offset is drawn once per question, from (seed,
    data_source, index); a candidate that math-verify or the MATH string check finds equal to the
    ground truth (``1^{2}`` -> ``1^{3}``) is passed over for the next offset. None when no candidate
    is left, or the ground truth has no digit and is not one letter (``\\pi``, ``\\text{odd}``)."""
    truth = ground_truth.strip()
    start = int(stable_uniform("incorrect", seed, data_source, index) * len(OFFSETS))
    for k in range(len(OFFSETS)):
        candidate = _moved(truth, OFFSETS[(start + k) % len(OFFSETS)])
        if candidate is None:
            return None
        if not (answers_equivalent(candidate, truth) or hendrycks_equivalent(candidate, truth)):
            return candidate
    return None


def incorrect(
    batch: Batch, teacher: Batch | None = None, *, gt_scorer: str = "math_verify", seed: int = 0,
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Incorrect-label reward (Spurious Rewards): the GT reward against a fixed wrong label per
    question (`wrong_label`): 1 when the answer equals that label under `gt_scorer` (checked without
    a time budget, as the GT reward), else 0. A deviation: Spurious Rewards labels each question with
    the model's own most common wrong answer from a pass over the training set; this label comes from
    the ground truth alone. A question without a wrong label rewards nothing; `wrong_label_coverage`
    is the share of rollouts with a ground truth whose question has one. `pseudo_label` is the wrong
    label, and `pseudo_label_acc` (0 by construction) checks it against the ground truth."""
    require_rows(batch, ["response_text", "ground_truth"], "incorrect")
    answers, gts = boxed_answers(batch), ground_truths(batch)
    keys = zip(gts, _rows(batch, "data_source"), _rows(batch, "index"))
    labels = [None if g is None else wrong_label(g, seed, source, index) for g, source, index in keys]
    judge = ground_truth_verifier(gt_scorer, None)
    scores = [float(label is not None and judge.equivalent(a, label)) for a, label in zip(answers, labels)]
    metrics, verifier = _metrics(scores, answers, gts, gt_scorer, metric_budget_s)
    with_gt = [i for i, g in enumerate(gts) if g is not None]
    if with_gt:
        metrics["wrong_label_coverage"] = mean_or_zero([labels[i] is not None for i in with_gt])
    groups = group_rows(batch.rows["uid"] if "uid" in batch.rows else range(len(batch)))
    truths = [(labels[idx[0]], group_ground_truth(idx, gts)) for idx in groups.values()]
    judged = [verifier.equivalent(label, gt) for label, gt in truths if label is not None and gt is not None]
    if judged:
        metrics["pseudo_label_acc"] = mean_or_zero(judged)
    return reward_output(scores, verify_metrics(metrics, verifier, judge), answers, labels)


def empo(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """EMPO (semantic entropy minimisation): the reward of a rollout is the share of its group (same
    ``uid``, all G rollouts, answerless ones included) whose answer is in the rollout's answer class,
    the classes those of the vote (`vote_classes` under `reward_model.vote_equivalence`, rollouts in
    generation order). A rollout without an answer gets 0 and forms no class (EMPO's release makes
    each answerless response a class of its own, worth 1/G).

    A soft majority vote: where majority_voting gives 1 to the largest class and 0 to every other,
    EMPO gives each class its share, so a minority answer still earns something and the reward of
    the majority grows with its size (a 5-of-8 majority earns 5/8, a unanimous group 1). In a group
    the advantages then rank the classes by size. The row `pseudo_label` and the metrics
    `majority_ratio` / `pseudo_label_acc` are those of the group's majority vote, which the reward
    does not use otherwise."""
    require_rows(batch, ["response_text", "uid", "sample_index"], "empo")
    answers, gts, order = boxed_answers(batch), ground_truths(batch), batch.rows["sample_index"]
    groups = group_rows(batch.rows["uid"])
    scores = [0.0] * len(batch)
    labels: list[str | None] = [None] * len(batch)
    votes: dict[Hashable, Vote] = {}
    for key, indices in groups.items():
        ordered = sorted(indices, key=lambda i: (int(order[i]), answers[i] is None, answers[i] or ""))
        classes = vote_classes([answers[i] for i in ordered], equivalence)
        for cls in classes:
            for member in cls.members:
                scores[ordered[member]] = cls.size / len(indices)
        votes[key] = class_vote(classes, len(indices))
        for i in indices:
            labels[i] = votes[key].label
    metrics, verifier = _metrics(scores, answers, gts, gt_scorer, metric_budget_s)
    vote_metrics(metrics, [(votes[k], group_ground_truth(idx, gts)) for k, idx in groups.items()], verifier)
    return reward_output(scores, verify_metrics(metrics, verifier), answers, labels)
