"""Pure functions over a step's rollouts: how rows are spread over the workers, the batch's metrics
and throughput, the per-rollout dump records, and the standard error of a validation score."""

from __future__ import annotations

import math
from typing import Any, Hashable

import torch

from corewarding.algos import kl_penalty, masked_mean
from corewarding.batch import Batch
from corewarding.data import user_content
from corewarding.rewards import extract_boxed_answer
from corewarding.rewards.common import RewardOutput


def balanced_order(lengths: list[int], groups: list[Hashable], parts: int, kinds: list[int] | None = None,
                   pairs: list[Hashable] | None = None) -> list[int]:
    """A permutation of the rows for `parts` workers (consecutive equal chunks): the rows of a group
    (one prompt's rollouts) stay together and in order, so that the workers can share their prompt;
    every worker gets as many groups (and, with `kinds` such as the view of each row, as many groups
    of each kind, in kind order) and a similar number of tokens: heaviest first, each to the lightest
    worker that still has room. With `pairs` (each row's pair) the groups of a pair go to the same
    worker, and each kind's groups come in the same pair order: a worker's i-th group of one view is
    the twin of its i-th of the other. Without an equal split the order is left as it is."""
    units: dict[Hashable, list[int]] = {}
    for row, group in enumerate(groups):
        units.setdefault(group, []).append(row)
    kind_of = (lambda rows: kinds[rows[0]]) if kinds is not None else (lambda rows: 0)
    blocks: dict[Hashable, list[list[int]]] = {}  # what goes to one worker: a group, or a pair's groups
    for group, rows in units.items():
        blocks.setdefault(pairs[rows[0]] if pairs is not None else group, []).append(rows)
    by_kinds: dict[tuple[int, ...], list[list[list[int]]]] = {}  # blocks share out among their like
    for block in blocks.values():
        by_kinds.setdefault(tuple(sorted(kind_of(rows) for rows in block)), []).append(block)
    if any(len(like) % parts for like in by_kinds.values()):
        return [row for rows in units.values() for row in rows]
    chosen: list[list[list[list[int]]]] = [[] for _ in range(parts)]
    for key in sorted(by_kinds):
        for part, assigned in zip(chosen, _share_out(by_kinds[key], lengths, parts)):
            part.extend(assigned)
    order = []
    for part in chosen:
        part.sort(key=lambda block: block[0][0])
        for kind in sorted({kind_of(rows) for block in part for rows in block}):
            order += [row for block in part for rows in block if kind_of(rows) == kind for row in rows]
    return order


def _share_out(blocks: list[list[list[int]]], lengths: list[int], parts: int) -> list[list[list[list[int]]]]:
    """`blocks` (each a list of groups' rows) in `parts` equal numbers, heaviest block first, each to
    the part with the fewest tokens that still has room."""
    per_part = len(blocks) // parts
    assigned: list[list[list[list[int]]]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for block in sorted(blocks, key=lambda b: (-sum(lengths[r] for rows in b for r in rows), b[0][0])):
        k = min((p for p in range(parts) if len(assigned[p]) < per_part), key=lambda p: (totals[p], p))
        assigned[k].append(block)
        totals[k] += sum(lengths[r] for rows in block for r in rows)
    return assigned


def mean(values: Any) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def token_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """The mean of `x` over the unmasked tokens, as a float (0 for an empty mask)."""
    return float(masked_mean(x.float(), mask.to(torch.float32)))


def standard_error_over_questions(scores: list[float], questions: list[Hashable]) -> float:
    """The standard error of the mean score, with questions as the unit (the samples of one question
    are not independent): std of the per-question means / sqrt(number of questions)."""
    per_question: dict[Hashable, list[float]] = {}
    for score, question in zip(scores, questions):
        per_question.setdefault(question, []).append(score)
    means = [sum(v) / len(v) for v in per_question.values()]
    if len(means) < 2:
        return 0.0
    average = sum(means) / len(means)
    return math.sqrt(sum((m - average) ** 2 for m in means) / (len(means) - 1) / len(means))


def batch_metrics(rollouts: Batch, teacher: Batch | None, scores: torch.Tensor, advantages: torch.Tensor,
                  max_response_length: int, kl_type: str) -> dict[str, float]:
    """Lengths, scores, advantages, the policy's entropy / self-certainty, the sampler's log-prob gap
    (vLLM) and the KL to the reference, over the rollouts of a step (and the teacher's)."""
    mask = rollouts.tensors["response_mask"].float()
    lengths = mask.sum(-1)
    prompt_lengths = torch.tensor([len(p) for p in rollouts.rows["prompt_ids"]], dtype=torch.float32)
    metrics = {
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/min": float(lengths.min()),
        "response_length/clip_ratio": float((lengths >= max_response_length).float().mean()),
        "prompt_length/mean": float(prompt_lengths.mean()),
        "critic/score/mean": float(scores.mean()),
        "critic/advantages/mean": float(advantages.mean()),
        "critic/advantages/max": float(advantages.max()),
        "critic/advantages/min": float(advantages.min()),
    }
    tensors = rollouts.tensors
    if "entropy" in tensors:
        metrics["actor/entropy"] = token_mean(tensors["entropy"], mask)
    if "self_certainty" in tensors:
        metrics["actor/self_certainty"] = token_mean(tensors["self_certainty"], mask)
    if "rollout_log_probs" in tensors:  # vLLM's sampler vs the trainer's forward
        diff = (tensors["rollout_log_probs"] - tensors["old_log_probs"]).abs()
        metrics["rollout/log_prob_diff_mean"] = token_mean(diff, mask)
        metrics["rollout/log_prob_diff_max"] = float((diff * mask).max())
    if "ref_log_probs" in tensors:
        kl = kl_penalty(tensors["old_log_probs"].float(), tensors["ref_log_probs"].float(), kl_type)
        metrics["actor/ref_kl"] = token_mean(kl, mask)
    if teacher is not None:
        answers = [extract_boxed_answer(t) for t in teacher.rows["response_text"]]
        metrics["teacher/response_length/mean"] = float(teacher.tensors["response_mask"].float().sum(-1).mean())
        metrics["teacher/answer_present"] = mean(a is not None for a in answers)
    return metrics


def throughput_metrics(rollouts: Batch, teacher: Batch | None, seconds: float, world_size: int) -> dict[str, float]:
    """The tokens of a step's rollouts (and the teacher's), and per second of the step: overall and per worker."""
    tokens = int(rollouts.tensors["attention_mask"].sum())
    if teacher is not None:
        tokens += int(teacher.tensors["attention_mask"].sum())
    per_s = tokens / max(seconds, 1e-9)
    return {"perf/total_tokens": tokens, "perf/tokens_per_s": per_s, "perf/tokens_per_s_per_worker": per_s / world_size}


def prompt_text(rows: dict[str, list], i: int) -> str | None:
    """The question of row i, for dumps."""
    messages = rows.get("prompt_messages")
    if not messages:
        return None
    try:
        return user_content(messages[i])
    except Exception:  # noqa: BLE001 - a dump must not stop training
        return str(messages[i])


def rollout_records(step: int, rollouts: Batch, reward: RewardOutput, scores: torch.Tensor, advantages: torch.Tensor,
                    teacher: Batch | None) -> list[dict[str, Any]]:
    """One JSON-able record per rollout of the step (the policy's, then the teacher's)."""
    rows, n = rollouts.rows, len(rollouts)

    def column(key: str, table: dict[str, list] = rows, size: int = n) -> list:
        return table.get(key) or [None] * size

    records = [{
        "step": step, "role": "policy", "uid": rows["uid"][i], "view": column("view")[i],
        "sample_index": column("sample_index")[i], "pair_id": column("pair_id")[i],
        "data_source": column("data_source")[i], "prompt": prompt_text(rows, i), "response": rows["response_text"][i],
        "answer": reward.rows["answer"][i], "pseudo_label": reward.rows["pseudo_label"][i],
        "ground_truth": column("ground_truth")[i], "reward": float(scores[i]), "advantage": float(advantages[i]),
    } for i in range(n)]
    if teacher is not None:
        trows, size = teacher.rows, len(teacher)
        records += [{
            "step": step, "role": "teacher", "uid": trows["uid"][i], "view": column("view", trows, size)[i],
            "sample_index": column("sample_index", trows, size)[i], "pair_id": column("pair_id", trows, size)[i],
            "prompt": prompt_text(trows, i),
            "response": trows["response_text"][i], "answer": extract_boxed_answer(trows["response_text"][i]),
        } for i in range(size)]
    return records
