"""One reward function per method (the methods themselves are registered in `corewarding.methods`).

Every function has the signature ``fn(batch, teacher=None, **options) -> RewardOutput`` and sees
the whole batch. Input rows: ``response_text``, ``uid``, ``ground_truth`` (optional; None or absent
for label-free data), ``sample_index`` for the voting methods (the teacher's batch too),
``pair_id`` + ``view`` ("original" / "rephrased") for Co-rewarding-I; tensors ``entropy`` /
``self_certainty`` with ``response_mask`` [N, R] for the certainty methods.

Grouping is by ids, never by position. A vote takes the group's answers in generation order
(``sample_index``, which the worker sets as it produces the rollouts, so it travels with the rows
through any reordering), and a tie goes to the answer generated first: the release's
``Counter.most_common``, independent of row order. With ``equivalence="string"`` the vote is the
release's.

``gt_scorer`` (every function) chooses how an answer is compared with the ground truth:
``"math_verify"`` (math equivalence, ours) or ``"hendrycks"`` (the MATH benchmark's string
normalisation, the release's). It decides the GT reward and the ground-truth metrics.

Metrics: ``score_mean``, ``answer_present`` (fraction of rollouts with an extracted answer),
``majority_ratio`` (mean over groups, vote-based methods), and wherever ground truth exists
``gt_acc`` (fraction of rollouts whose answer matches the ground truth: what the GT reward would
give) and ``pseudo_label_acc`` (fraction of groups whose pseudo-label matches the ground truth).
GT metrics are computed over the rows / groups that have a ground truth and left out when none do.
Their math-verify time per call is bounded by ``metric_budget_s`` (`DEFAULT_METRIC_BUDGET_S`, 10 s;
each distinct pair is checked once): ``verify_timeouts`` counts checks that hit the per-check time
limit and ``verify_skipped`` the pairs left unchecked (counted as wrong) once the budget was spent.
The GT reward itself has no budget (a reward must not depend on the machine's speed).

Co-rewarding-I on pairs whose rows carry ``faithful`` / ``twin_answer`` (the built-in data's
unfaithful twins, `corewarding.data.dataset.PAIR_DIAGNOSTIC_KEYS`) also gives
``pseudo_label_acc_faithful`` / ``pseudo_label_acc_unfaithful`` (pseudo_label_acc over the groups
of faithful / unfaithful pairs, each only when there are such groups) and
``pseudo_label_twin_acc_unfaithful`` (see `_faithfulness_metrics`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import torch

from corewarding.algos import masked_mean
from corewarding.batch import Batch
from corewarding.rewards.answers import VerifyBudget, answers_equivalent
from corewarding.rewards.extraction import extract_boxed_answer
from corewarding.rewards.hendrycks import hendrycks_equivalent
from corewarding.rewards.voting import Vote, majority_vote
from corewarding.roles import VIEWS, twin

GT_SCORERS = ("math_verify", "hendrycks")
# Wall-clock seconds that one reward call may spend in math-verify for its ground-truth metrics
# (gt_acc of the label-free methods, pseudo_label_acc); env COREWARDING_METRIC_VERIFY_BUDGET.
DEFAULT_METRIC_BUDGET_S = float(os.environ.get("COREWARDING_METRIC_VERIFY_BUDGET", "10"))


@dataclass
class RewardOutput:
    scores: torch.Tensor  # [N] float32
    metrics: dict[str, float] = field(default_factory=dict)
    rows: dict[str, list] = field(default_factory=dict)  # per rollout: "answer", "pseudo_label"


RewardFn = Callable[..., RewardOutput]

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _answers(batch: Batch) -> list[str | None]:
    if "response_text" not in batch.rows:
        return [None] * len(batch)
    return [extract_boxed_answer(t) for t in batch.rows["response_text"]]


def _ground_truth(batch: Batch) -> list[str | None]:
    values = batch.rows.get("ground_truth")
    if values is None:
        return [None] * len(batch)
    return [None if v is None or str(v).strip() == "" else str(v) for v in values]


def _require_rows(batch: Batch, keys: Sequence[str], who: str) -> None:
    missing = [k for k in keys if k not in batch.rows]
    if missing:
        raise KeyError(f"{who} needs batch rows {missing}; the batch has {sorted(batch.rows)}")


def _groups(ids: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    out: dict[Hashable, list[int]] = {}
    for i, key in enumerate(ids):
        out.setdefault(key, []).append(i)
    return out


class _HendrycksCheck:
    """The release's MATH string check: instant, so it needs no time budget."""

    timeouts = 0
    skipped = 0

    @staticmethod
    def equivalent(a: str | None, b: str | None) -> bool:
        return hendrycks_equivalent(a, b)


Verifier = VerifyBudget | _HendrycksCheck


def ground_truth_verifier(gt_scorer: str, budget_s: float | None) -> Verifier:
    """The (answer, ground truth) check named by `reward_model.gt_scorer`; math-verify under a
    wall-clock budget of `budget_s` seconds for the whole reward call (None: no budget)."""
    if gt_scorer == "math_verify":
        return VerifyBudget(budget_s)
    if gt_scorer == "hendrycks":
        return _HendrycksCheck()
    raise ValueError(f"reward_model.gt_scorer={gt_scorer!r} is unknown; use one of {' | '.join(GT_SCORERS)}")


def _vote_in_generation_order(
    answers: list[str | None], sample_index: Sequence[int], indices: Sequence[int], equivalence: str
) -> Vote:
    """`majority_vote` over the answers of rows `indices`, taken in generation order so that a tie
    goes to the answer generated first (spelling only orders rows that share a sample_index)."""
    ordered = sorted(indices, key=lambda i: (int(sample_index[i]), answers[i] is None, answers[i] or ""))
    return majority_vote([answers[i] for i in ordered], equivalence)


def _matches(answer: str | None, label: str | None, equivalence: str) -> bool:
    if answer is None or label is None:
        return False
    if equivalence == "string":
        return answer.strip() == label
    return answers_equivalent(answer, label)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def _gt_correct(answers: list[str | None], gts: list[str | None], verifier: Verifier) -> list[bool]:
    """Per rollout: does the answer match the ground truth (False where there is none)."""
    return [g is not None and verifier.equivalent(a, g) for a, g in zip(answers, gts)]


def _common_metrics(
    scores: list[float], answers: list[str | None], gts: list[str | None], verifier: Verifier,
    correct: list[bool] | None = None,
) -> dict[str, float]:
    """score_mean, answer_present and, over the rows with a ground truth, gt_acc; `correct` is
    `_gt_correct(answers, gts, ...)` when the caller has it already."""
    metrics = {
        "score_mean": _mean(scores),
        "answer_present": _mean([a is not None for a in answers]),
    }
    with_gt = [i for i, g in enumerate(gts) if g is not None]
    if with_gt:
        if correct is None:
            correct = _gt_correct(answers, gts, verifier)
        metrics["gt_acc"] = _mean([correct[i] for i in with_gt])
    return metrics


def _verify_metrics(metrics: dict[str, float], *verifiers: VerifyBudget) -> dict[str, float]:
    """math-verify checks that hit their time limit, and pairs left unchecked when the budget ran out."""
    metrics["verify_timeouts"] = float(sum(v.timeouts for v in verifiers))
    metrics["verify_skipped"] = float(sum(v.skipped for v in verifiers))
    return metrics


def _group_gt(indices: Sequence[int], gts: list[str | None]) -> str | None:
    for i in indices:
        if gts[i] is not None:
            return gts[i]
    return None


def _vote_metrics(
    metrics: dict[str, float], group_votes: list[tuple[Vote, str | None]], verifier: Verifier
) -> dict[str, float]:
    """Adds majority_ratio (all groups) and pseudo_label_acc (groups with a ground truth)."""
    metrics["majority_ratio"] = _mean([vote.ratio for vote, _ in group_votes])
    judged = [verifier.equivalent(vote.label, gt) for vote, gt in group_votes if gt is not None]
    if judged:
        metrics["pseudo_label_acc"] = _mean(judged)
    return metrics


def _output(scores: list[float], metrics: dict[str, float], answers, labels) -> RewardOutput:
    return RewardOutput(
        scores=torch.tensor(scores, dtype=torch.float32).reshape(len(scores)),
        metrics={k: float(v) for k, v in metrics.items()},
        rows={"answer": list(answers), "pseudo_label": list(labels)},
    )


def _label_rewards(
    answers: list[str | None],
    gts: list[str | None],
    groups: dict[Hashable, list[int]],
    group_vote: dict[Hashable, Vote],
    equivalence: str,
    gt_scorer: str,
    metric_budget_s: float | None,
    more_metrics: Callable[[Verifier], dict[str, float]] | None = None,
) -> RewardOutput:
    """Reward 1 where a rollout agrees with its group's pseudo-label; metrics over groups (their
    math-verify time bounded by `metric_budget_s`), plus `more_metrics(verifier)` (the same budget)."""
    n = len(answers)
    labels: list[str | None] = [None] * n
    scores = [0.0] * n
    for key, indices in groups.items():
        label = group_vote[key].label
        for i in indices:
            labels[i] = label
            scores[i] = 1.0 if _matches(answers[i], label, equivalence) else 0.0
    verifier = ground_truth_verifier(gt_scorer, metric_budget_s)
    metrics = _common_metrics(scores, answers, gts, verifier)
    _vote_metrics(metrics, [(group_vote[k], _group_gt(idx, gts)) for k, idx in groups.items()], verifier)
    if more_metrics is not None:
        metrics.update(more_metrics(verifier))
    return _output(scores, _verify_metrics(metrics, verifier), answers, labels)


def _faithfulness_metrics(
    rows: dict[str, list], groups: dict[Hashable, list[int]], votes: dict[Hashable, Vote], gts: list[str | None],
    verifier: Verifier,
) -> dict[str, float]:
    """Co-rewarding-I's pseudo_label_acc split by the pairs' `faithful` row (groups keyed (pair_id,
    view); a group whose pair has no flag is in neither share), and pseudo_label_twin_acc_unfaithful:
    over the original-view groups of unfaithful pairs, whose label is their twin's vote, the share
    whose label equals `twin_answer`, the twin's own answer (the model answered the twin right and
    so taught the original a wrong label). Under math-verify, a pair judged for pseudo_label_acc is not checked again."""
    judged: dict[bool, list[bool]] = {True: [], False: []}
    twin: list[bool] = []
    twin_answers = rows.get("twin_answer")
    for key, indices in groups.items():
        faithful = rows["faithful"][indices[0]]  # a pair's rows share its flag
        if faithful is None:
            continue
        label, gt = votes[key].label, _group_gt(indices, gts)
        if gt is not None:
            judged[bool(faithful)].append(verifier.equivalent(label, gt))
        answer = twin_answers[indices[0]] if twin_answers is not None else None
        if not faithful and key[1] == "original" and answer is not None:
            twin.append(verifier.equivalent(label, str(answer)))
    metrics = {f"pseudo_label_acc_{name}": _mean(judged[flag])
               for name, flag in (("faithful", True), ("unfaithful", False)) if judged[flag]}
    if twin:
        metrics["pseudo_label_twin_acc_unfaithful"] = _mean(twin)
    return metrics


# ---------------------------------------------------------------------------------------------
# reward functions
# ---------------------------------------------------------------------------------------------


def gt(
    batch: Batch, teacher: Batch | None = None, *, gt_scorer: str = "math_verify", metric_budget_s: float | None = None
) -> RewardOutput:
    """GT-Reward: 1 if the answer equals the ground truth under `gt_scorer`, else 0. Every distinct
    (answer, ground truth) pair is checked once, with no time budget: the reward must not depend on
    the machine's speed (`metric_budget_s` is accepted and unused)."""
    _require_rows(batch, ["response_text", "ground_truth"], "gt")
    answers, gts = _answers(batch), _ground_truth(batch)
    verifier = ground_truth_verifier(gt_scorer, None)
    correct = _gt_correct(answers, gts, verifier)
    scores = [1.0 if c else 0.0 for c in correct]
    metrics = _common_metrics(scores, answers, gts, verifier, correct)
    return _output(scores, _verify_metrics(metrics, verifier), answers, [None] * len(batch))


def majority_voting(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Majority-Voting (TTRL / SRT): pseudo-label = majority answer of the rollouts with the same
    ``uid``; reward 1 on agreement. ``equivalence="string"`` (default) is the release."""
    _require_rows(batch, ["response_text", "uid", "sample_index"], "majority_voting")
    answers, gts, order = _answers(batch), _ground_truth(batch), batch.rows["sample_index"]
    groups = _groups(batch.rows["uid"])
    votes = {k: _vote_in_generation_order(answers, order, idx, equivalence) for k, idx in groups.items()}
    return _label_rewards(answers, gts, groups, votes, equivalence, gt_scorer, metric_budget_s)


def co_rewarding_i(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Co-rewarding-I: for each ``pair_id`` the pseudo-label of the "original" rollouts is the
    majority answer of the "rephrased" rollouts, and vice versa; reward 1 on agreement with the
    own pseudo-label. Both views of every pair must be present."""
    _require_rows(batch, ["response_text", "pair_id", "view", "sample_index"], "co_rewarding_i")
    answers, gts = _answers(batch), _ground_truth(batch)
    views = batch.rows["view"]
    bad = sorted({str(v) for v in views if v not in VIEWS})
    if bad:
        raise ValueError(f"co_rewarding_i: view must be one of {VIEWS}, got {bad}")
    groups = _groups(list(zip(batch.rows["pair_id"], views)))
    order = batch.rows["sample_index"]
    own_vote = {k: _vote_in_generation_order(answers, order, idx, equivalence) for k, idx in groups.items()}
    cross_vote: dict[Hashable, Vote] = {}
    for pair_id, view in groups:
        other = (pair_id, twin(view))
        if other not in own_vote:
            raise ValueError(f"co_rewarding_i: pair_id {pair_id!r} has {view!r} rollouts but no {other[1]!r} ones")
        cross_vote[(pair_id, view)] = own_vote[other]
    split = None
    if "faithful" in batch.rows:  # the built-in data's unfaithful twins; nothing to do otherwise
        split = lambda verifier: _faithfulness_metrics(batch.rows, groups, cross_vote, gts, verifier)  # noqa: E731
    return _label_rewards(answers, gts, groups, cross_vote, equivalence, gt_scorer, metric_budget_s, split)


def _teacher_votes(batch: Batch, teacher: Batch | None, equivalence: str, who: str) -> tuple[dict, dict[Hashable, Vote]]:
    """The policy's groups (by ``uid``) and each one's label: the majority answer of the teacher's
    rollouts on the same question (same ``uid``), or, when the teacher answered views of pairs (its
    rows carry ``pair_id`` / ``view``), on the question's twin (the pair's other view)."""
    if teacher is None:
        raise ValueError(f"{who} needs the teacher batch (rows uid, response_text, sample_index)")
    _require_rows(batch, ["response_text", "uid"], who)
    _require_rows(teacher, ["response_text", "uid", "sample_index"], f"{who} (teacher)")
    groups = _groups(batch.rows["uid"])
    if "pair_id" in teacher.rows:
        _require_rows(batch, ["pair_id", "view"], who)
        _require_rows(teacher, ["view"], f"{who} (teacher)")
        teacher_groups = _groups(list(zip(teacher.rows["pair_id"], teacher.rows["view"])))
        source = {k: (batch.rows["pair_id"][idx[0]], twin(batch.rows["view"][idx[0]])) for k, idx in groups.items()}
    else:
        teacher_groups = _groups(teacher.rows["uid"])
        source = {k: k for k in groups}
    missing = [source[k] for k in groups if source[k] not in teacher_groups]
    if missing:
        raise ValueError(f"{who}: no teacher rollouts for {missing[:5]}")
    answers, order = _answers(teacher), teacher.rows["sample_index"]
    return groups, {k: _vote_in_generation_order(answers, order, teacher_groups[source[k]], equivalence) for k in groups}


def co_rewarding_ii(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Co-rewarding-II: pseudo-label of a rollout = majority answer of the teacher's rollouts on the
    same question (``teacher`` rows ``uid``, ``response_text``, ``sample_index``), or on its twin
    when the policy and the teacher answer different views (``data.use_aug``: rows ``pair_id`` /
    ``view``); reward 1 on agreement."""
    groups, votes = _teacher_votes(batch, teacher, equivalence, "co_rewarding_ii")
    return _label_rewards(_answers(batch), _ground_truth(batch), groups, votes, equivalence, gt_scorer, metric_budget_s)


def co_rewarding_iii(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Co-rewarding-III: the policy and the EMA teacher answer both views of every pair; the
    pseudo-label of a rollout is the majority answer of the teacher's rollouts on the question's
    twin; reward 1 on agreement. Besides the usual metrics, the release's per view
    (`release_iii_metrics`)."""
    _require_rows(batch, ["pair_id", "view", "sample_index"], "co_rewarding_iii")
    groups, votes = _teacher_votes(batch, teacher, equivalence, "co_rewarding_iii")
    answers, gts = _answers(batch), _ground_truth(batch)
    out = _label_rewards(answers, gts, groups, votes, equivalence, gt_scorer, metric_budget_s)
    out.metrics.update(release_iii_metrics(batch, answers, gts, out.rows["pseudo_label"], out.scores.tolist()))
    return out


def release_iii_metrics(batch: Batch, answers: list[str | None], gts: list[str | None], labels: list[str | None],
                        scores: list[float]) -> dict[str, float]:
    """The release's Co-rewarding-III metrics, per view ("ori" / "aug"), each over the view's
    rollouts: `pseudo_nonempty_rate` (a label exists), `pseudo_count` / `pseudo_acc` (the label
    equals the ground truth as stripped strings: how many, what share), `policypseudo_acc` (the same
    for the majority of the *policy's* answers on the twin, a label the reward does not use) and
    `pseudo_pass_rate` (rewarded 1). The release logs the aug count under the ori name; here each
    view has its own."""
    views, pairs, order = batch.rows["view"], batch.rows["pair_id"], batch.rows["sample_index"]
    own = _groups(list(zip(pairs, views)))
    policy_vote = {key: _vote_in_generation_order(answers, order, idx, "string").label for key, idx in own.items()}
    same = lambda a, b: a is not None and b is not None and a.strip() != "" and a.strip() == b.strip()  # noqa: E731
    metrics: dict[str, float] = {}
    for view, name in zip(VIEWS, ("ori", "aug")):
        rows = [i for i, v in enumerate(views) if v == view]
        if not rows:
            continue
        correct = sum(same(gts[i], labels[i]) for i in rows)
        metrics[f"coreward/{name}_pseudo_nonempty_rate"] = _mean([bool(labels[i] and labels[i].strip()) for i in rows])
        metrics[f"coreward/{name}_pseudo_count"] = float(correct)
        metrics[f"coreward/{name}_pseudo_acc"] = correct / len(rows)
        metrics[f"coreward/{name}_policypseudo_acc"] = _mean([same(gts[i], policy_vote.get((pairs[i], twin(view))))
                                                              for i in rows])
        metrics[f"coreward/{name}_pseudo_pass_rate"] = _mean([scores[i] == 1.0 for i in rows])
    return metrics


def _response_mean(batch: Batch, key: str, who: str) -> torch.Tensor:
    """Per rollout, the mean of tensor `key` over its response tokens (0 for an empty response)."""
    for name in (key, "response_mask"):
        if name not in batch.tensors:
            raise KeyError(f"{who} needs batch tensor {name!r}; the batch has {sorted(batch.tensors)}")
    values = batch.tensors[key].float()
    return masked_mean(values, batch.tensors["response_mask"].to(values.dtype), dim=-1)


def _certainty_output(batch: Batch, scores: torch.Tensor, gt_scorer: str, metric_budget_s: float | None) -> RewardOutput:
    answers, gts = _answers(batch), _ground_truth(batch)
    verifier = ground_truth_verifier(gt_scorer, metric_budget_s)
    metrics = _verify_metrics(_common_metrics(scores.tolist(), answers, gts, verifier), verifier)
    return RewardOutput(scores.to(torch.float32), metrics, {"answer": answers, "pseudo_label": [None] * len(batch)})


def self_certainty(
    batch: Batch, teacher: Batch | None = None, *, gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Self-Certainty (Intuitor): masked mean over response tokens of the per-token self-certainty."""
    return _certainty_output(batch, _response_mean(batch, "self_certainty", "self_certainty"), gt_scorer, metric_budget_s)


def entropy(
    batch: Batch, teacher: Batch | None = None, *, gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Entropy (RENT / EMPO): minus the masked mean over response tokens of the per-token entropy."""
    return _certainty_output(batch, -_response_mean(batch, "entropy", "entropy"), gt_scorer, metric_budget_s)
