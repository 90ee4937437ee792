"""Micro-batches by token budget (`use_dynamic_bsz`): first-fit decreasing, split to an exact
count, and as many on every rank (two gloo ranks, spawned): FSDP gathers the parameters in each
micro-batch's forward, so ranks with different counts would wait in different collectives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from corewarding.batch import Batch
from corewarding.workers.model.packing import micro_batch_groups, split_to_count, token_budget_groups
from corewarding.workers.ports import free_port
from spawned_ranks import run_spawned_ranks


def test_token_budget_groups():
    lengths = [10, 3, 7, 2, 8, 5]
    groups = token_budget_groups(lengths, budget=12)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(sum(lengths[i] for i in g) <= 12 for g in groups)
    assert len(groups) == 3  # 35 tokens need at least 3 bins of 12; first-fit decreasing finds 3
    with pytest.raises(ValueError, match="budget"):
        token_budget_groups(lengths, budget=9)


def test_token_budget_groups_to_a_count():
    """Exactly `count` groups, each within the budget, every row once; the fullest group is split
    in two balanced halves; fewer groups than first-fit needs, or more than rows, is an error."""
    lengths = [10, 3, 7, 2, 8, 5]
    first_fit = token_budget_groups(lengths, 12)
    assert split_to_count(first_fit, lengths, 3) == first_fit
    for count in (4, 5, 6):
        groups = split_to_count(first_fit, lengths, count)
        assert len(groups) == count and sorted(i for g in groups for i in g) == list(range(6))
        assert all(g == sorted(g) and sum(lengths[i] for i in g) <= 12 for g in groups)
    small = [4, 4, 3, 3, 2]
    assert split_to_count(token_budget_groups(small, 100), small, 2) == [[0, 2, 4], [1, 3]]  # longest first: 9 / 7
    with pytest.raises(ValueError, match="cannot make 2"):
        split_to_count(first_fit, lengths, 2)
    with pytest.raises(ValueError, match="cannot make 7"):
        split_to_count(first_fit, lengths, 7)


ROW_TOKENS = ([3, 3, 3, 3], [9, 9, 9, 2])  # per rank: first-fit in 10 tokens makes 2 and 4 groups


def _count_rank(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    lengths = ROW_TOKENS[rank]
    mask = torch.tensor([[1] * n + [0] * (10 - n) for n in lengths])
    groups = micro_batch_groups(Batch({"attention_mask": mask}), 2, 10, world_size=2)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(groups))
    dist.destroy_process_group()


def test_every_rank_makes_as_many_token_budget_micro_batches(tmp_path):
    """Two ranks whose rows first-fit into 2 and 4 micro-batches both make 4, within the budget."""
    run_spawned_ranks(_count_rank, [(rank, port, str(tmp_path)) for rank, port in zip((0, 1), [free_port()] * 2)],
                      timeout=120)
    for rank in (0, 1):
        groups = json.loads(Path(tmp_path, f"rank{rank}.json").read_text())
        assert len(groups) == 4
        assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
        assert all(sum(ROW_TOKENS[rank][i] for i in g) <= 10 for g in groups)
