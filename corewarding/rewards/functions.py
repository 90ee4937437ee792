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

from typing import Callable, Hashable

import torch

from corewarding.algos import masked_mean
from corewarding.batch import Batch
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
    matches_label,
    mean_or_zero,
    require_rows,
    reward_output,
    verify_metrics,
    vote_in_generation_order,
    vote_metrics,
)
from corewarding.rewards.voting import Vote
from corewarding.roles import VIEWS, twin


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
            scores[i] = 1.0 if matches_label(answers[i], label, equivalence) else 0.0
    verifier = ground_truth_verifier(gt_scorer, metric_budget_s)
    metrics = common_metrics(scores, answers, gts, verifier)
    vote_metrics(metrics, [(group_vote[k], group_ground_truth(idx, gts)) for k, idx in groups.items()], verifier)
    if more_metrics is not None:
        metrics.update(more_metrics(verifier))
    return reward_output(scores, verify_metrics(metrics, verifier), answers, labels)


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
        label, gt = votes[key].label, group_ground_truth(indices, gts)
        if gt is not None:
            judged[bool(faithful)].append(verifier.equivalent(label, gt))
        answer = twin_answers[indices[0]] if twin_answers is not None else None
        if not faithful and key[1] == "original" and answer is not None:
            twin.append(verifier.equivalent(label, str(answer)))
    metrics = {f"pseudo_label_acc_{name}": mean_or_zero(judged[flag])
               for name, flag in (("faithful", True), ("unfaithful", False)) if judged[flag]}
    if twin:
        metrics["pseudo_label_twin_acc_unfaithful"] = mean_or_zero(twin)
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
    require_rows(batch, ["response_text", "ground_truth"], "gt")
    answers, gts = boxed_answers(batch), ground_truths(batch)
    verifier = ground_truth_verifier(gt_scorer, None)
    correct = gt_correct(answers, gts, verifier)
    scores = [1.0 if c else 0.0 for c in correct]
    metrics = common_metrics(scores, answers, gts, verifier, correct)
    return reward_output(scores, verify_metrics(metrics, verifier), answers, [None] * len(batch))


def majority_voting(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Majority-Voting (TTRL / SRT): pseudo-label = majority answer of the rollouts with the same
    ``uid``; reward 1 on agreement. ``equivalence="string"`` (default) is the release."""
    require_rows(batch, ["response_text", "uid", "sample_index"], "majority_voting")
    answers, gts, order = boxed_answers(batch), ground_truths(batch), batch.rows["sample_index"]
    groups = group_rows(batch.rows["uid"])
    votes = {k: vote_in_generation_order(answers, order, idx, equivalence) for k, idx in groups.items()}
    return _label_rewards(answers, gts, groups, votes, equivalence, gt_scorer, metric_budget_s)


def co_rewarding_i(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Co-rewarding-I: for each ``pair_id`` the pseudo-label of the "original" rollouts is the
    majority answer of the "rephrased" rollouts, and vice versa; reward 1 on agreement with the
    own pseudo-label. Both views of every pair must be present."""
    require_rows(batch, ["response_text", "pair_id", "view", "sample_index"], "co_rewarding_i")
    answers, gts = boxed_answers(batch), ground_truths(batch)
    views = batch.rows["view"]
    bad = sorted({str(v) for v in views if v not in VIEWS})
    if bad:
        raise ValueError(f"co_rewarding_i: view must be one of {VIEWS}, got {bad}")
    groups = group_rows(list(zip(batch.rows["pair_id"], views)))
    order = batch.rows["sample_index"]
    own_vote = {k: vote_in_generation_order(answers, order, idx, equivalence) for k, idx in groups.items()}
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
    require_rows(batch, ["response_text", "uid"], who)
    require_rows(teacher, ["response_text", "uid", "sample_index"], f"{who} (teacher)")
    groups = group_rows(batch.rows["uid"])
    if "pair_id" in teacher.rows:
        require_rows(batch, ["pair_id", "view"], who)
        require_rows(teacher, ["view"], f"{who} (teacher)")
        teacher_groups = group_rows(list(zip(teacher.rows["pair_id"], teacher.rows["view"])))
        source = {k: (batch.rows["pair_id"][idx[0]], twin(batch.rows["view"][idx[0]])) for k, idx in groups.items()}
    else:
        teacher_groups = group_rows(teacher.rows["uid"])
        source = {k: k for k in groups}
    missing = [source[k] for k in groups if source[k] not in teacher_groups]
    if missing:
        raise ValueError(f"{who}: no teacher rollouts for {missing[:5]}")
    answers, order = boxed_answers(teacher), teacher.rows["sample_index"]
    return groups, {k: vote_in_generation_order(answers, order, teacher_groups[source[k]], equivalence) for k in groups}


def co_rewarding_ii(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Co-rewarding-II: pseudo-label of a rollout = majority answer of the teacher's rollouts on the
    same question (``teacher`` rows ``uid``, ``response_text``, ``sample_index``), or on its twin
    when the policy and the teacher answer different views (``data.use_aug``: rows ``pair_id`` /
    ``view``); reward 1 on agreement."""
    groups, votes = _teacher_votes(batch, teacher, equivalence, "co_rewarding_ii")
    return _label_rewards(boxed_answers(batch), ground_truths(batch), groups, votes, equivalence, gt_scorer, metric_budget_s)


def co_rewarding_iii(
    batch: Batch, teacher: Batch | None = None, *, equivalence: str = "string", gt_scorer: str = "math_verify",
    metric_budget_s: float | None = DEFAULT_METRIC_BUDGET_S,
) -> RewardOutput:
    """Co-rewarding-III: the policy and the EMA teacher answer both views of every pair; the
    pseudo-label of a rollout is the majority answer of the teacher's rollouts on the question's
    twin; reward 1 on agreement. Besides the usual metrics, the release's per view
    (`release_iii_metrics`)."""
    require_rows(batch, ["pair_id", "view", "sample_index"], "co_rewarding_iii")
    groups, votes = _teacher_votes(batch, teacher, equivalence, "co_rewarding_iii")
    answers, gts = boxed_answers(batch), ground_truths(batch)
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
    own = group_rows(list(zip(pairs, views)))
    policy_vote = {key: vote_in_generation_order(answers, order, idx, "string").label for key, idx in own.items()}
    same = lambda a, b: a is not None and b is not None and a.strip() != "" and a.strip() == b.strip()  # noqa: E731
    metrics: dict[str, float] = {}
    for view, name in zip(VIEWS, ("ori", "aug")):
        rows = [i for i, v in enumerate(views) if v == view]
        if not rows:
            continue
        correct = sum(same(gts[i], labels[i]) for i in rows)
        metrics[f"coreward/{name}_pseudo_nonempty_rate"] = mean_or_zero([bool(labels[i] and labels[i].strip()) for i in rows])
        metrics[f"coreward/{name}_pseudo_count"] = float(correct)
        metrics[f"coreward/{name}_pseudo_acc"] = correct / len(rows)
        metrics[f"coreward/{name}_policypseudo_acc"] = mean_or_zero([same(gts[i], policy_vote.get((pairs[i], twin(view))))
                                                              for i in rows])
        metrics[f"coreward/{name}_pseudo_pass_rate"] = mean_or_zero([scores[i] == 1.0 for i in rows])
    return metrics


def _response_mean(batch: Batch, key: str, who: str) -> torch.Tensor:
    """Per rollout, the mean of tensor `key` over its response tokens (0 for an empty response)."""
    for name in (key, "response_mask"):
        if name not in batch.tensors:
            raise KeyError(f"{who} needs batch tensor {name!r}; the batch has {sorted(batch.tensors)}")
    values = batch.tensors[key].float()
    return masked_mean(values, batch.tensors["response_mask"].to(values.dtype), dim=-1)


def _certainty_output(batch: Batch, scores: torch.Tensor, gt_scorer: str, metric_budget_s: float | None) -> RewardOutput:
    answers, gts = boxed_answers(batch), ground_truths(batch)
    verifier = ground_truth_verifier(gt_scorer, metric_budget_s)
    metrics = verify_metrics(common_metrics(scores.tolist(), answers, gts, verifier), verifier)
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
    """Entropy (RENT; EMPO's semantic entropy is `empo`): minus the masked mean over response tokens
    of the per-token entropy."""
    return _certainty_output(batch, -_response_mean(batch, "entropy", "entropy"), gt_scorer, metric_budget_s)
