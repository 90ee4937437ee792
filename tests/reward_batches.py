"""Hand-made rollout batches for the reward-function tests (tests/test_rewards_*.py): boxed responses
in generation order, teacher batches, the output's shape checks, and a generous math-verify time
limit (`generous_default_timeout`, an autouse fixture each of those files imports)."""

from __future__ import annotations

import pytest
import torch

from corewarding.batch import Batch
from corewarding.rewards import answers as answers_mod
from corewarding.rewards import RewardOutput


@pytest.fixture(autouse=True)
def generous_default_timeout(monkeypatch):
    """Rewards must not depend on machine load in the tests (see test_rewards_answers.py)."""
    monkeypatch.setattr(answers_mod, "DEFAULT_TIMEOUT", 30.0)


def resp(answer: str | None) -> str:
    return "no final answer" if answer is None else f"Reasoning... so the answer is \\boxed{{{answer}}}."


def generation_order(uids) -> list[int]:
    """`sample_index` of rows listed in generation order: 0, 1, ... within each uid."""
    seen: dict = {}
    out = []
    for uid in uids:
        out.append(seen.get(uid, 0))
        seen[uid] = out[-1] + 1
    return out


def make_batch(answers, uids, ground_truth=None, **rows) -> Batch:
    """Rows in generation order unless `sample_index` is given."""
    data = {"response_text": [resp(a) for a in answers], "uid": list(uids), **rows}
    data.setdefault("sample_index", generation_order(uids))
    if ground_truth is not None:
        data["ground_truth"] = list(ground_truth)
    return Batch(rows=data)


def teacher_batch(answers, uids) -> Batch:
    return Batch(rows={"uid": list(uids), "response_text": [resp(a) for a in answers],
                       "sample_index": generation_order(uids)})


def check_output(out: RewardOutput, n: int) -> None:
    assert out.scores.dtype == torch.float32 and out.scores.shape == (n,)
    assert set(out.rows) == {"answer", "pseudo_label"}
    assert len(out.rows["answer"]) == len(out.rows["pseudo_label"]) == n
    assert all(isinstance(v, float) for v in out.metrics.values())
