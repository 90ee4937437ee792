"""How a step's rollouts are laid out for the update: over the workers (`balanced_order`: whole
groups, similar token counts, and with two trained views whole pairs in the same order for both
views) and into each worker's mini-batches (`mini_batch_rows`: both views of the same pairs in
every optimizer step)."""

from __future__ import annotations

import pytest
import torch

from corewarding.trainer.rollout_stats import balanced_order
from corewarding.workers.update.micro_batches import mini_batch_rows


def test_balanced_order():
    """Whole groups to each worker, equal group counts, similar token totals; with kinds, as many
    groups of each kind per worker; an unequal split keeps the order."""
    lengths = [100, 100, 1, 1, 90, 90, 2, 2, 80, 80, 3, 3, 70, 70, 4, 4]
    groups = [i // 2 for i in range(16)]  # 8 groups of 2 rows
    order = balanced_order(lengths, groups, 2)
    assert sorted(order) == list(range(16))
    assert all(order[i] // 2 == order[i + 1] // 2 for i in range(0, 16, 2))  # a group stays together
    halves = [sum(lengths[i] for i in order[:8]), sum(lengths[i] for i in order[8:])]
    assert abs(halves[0] - halves[1]) <= 60
    kinds = [0] * 8 + [1] * 8  # the first 4 groups of one kind, the last 4 of another
    order = balanced_order(lengths, groups, 2, kinds)
    for half in (order[:8], order[8:]):
        assert [kinds[i] for i in half] == [0] * 4 + [1] * 4
    assert balanced_order([1, 2, 3], ["a", "b", "c"], 2) == [0, 1, 2]
    assert balanced_order([5, 5, 1, 1], ["a", "a", "b", "b"], 1) == [0, 1, 2, 3]


def test_balanced_order_gives_a_worker_whole_pairs_and_their_twins_in_the_same_order():
    """Four pairs of two-row groups, the originals first as the trainer generates them: each worker
    gets two whole pairs, its originals then their twins in the same order, and tokens balanced
    pair by pair (the two heavy pairs on different workers); one worker gets the same layout."""
    pairs = ["p0", "p1", "p2", "p3"] * 2
    lengths = [50, 50, 9, 9, 40, 40, 8, 8] + [60, 60, 7, 7, 45, 45, 6, 6]  # pairs 0 and 2 are heavy
    groups = [f"{'ori' if row < 8 else 'aug'}{row % 8 // 2}" for row in range(16)]
    kinds = [row // 8 for row in range(16)]
    row_pairs = [pairs[row // 2] for row in range(16)]
    order = balanced_order(lengths, groups, 2, kinds, row_pairs)
    assert sorted(order) == list(range(16))
    for worker in (order[:8], order[8:]):
        assert [kinds[r] for r in worker] == [0] * 4 + [1] * 4
        assert [row_pairs[r] for r in worker[:4]] == [row_pairs[r] for r in worker[4:]]  # twins in the same order
        assert all(groups[worker[i]] == groups[worker[i + 1]] for i in range(0, 8, 2))  # whole groups
    heavy = {row_pairs[r] for r in order[:8]} & {"p0", "p2"}
    assert len(heavy) == 1
    # one worker: the same layout, whatever order the rows came in (here each original beside its twin)
    mixed = [0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15]
    columns = [[column[r] for r in mixed] for column in (lengths, groups, kinds, row_pairs)]
    one = balanced_order(columns[0], columns[1], 1, columns[2], columns[3])
    assert [mixed[r] for r in one] == list(range(16))
    # three pairs do not split equally over two workers: the order they came in
    three = [r for r in range(16) if row_pairs[r] != "p3"]
    rows = [[column[r] for r in three] for column in (lengths, groups, kinds, row_pairs)]
    assert balanced_order(rows[0], rows[1], 2, rows[2], rows[3]) == list(range(12))


def test_mini_batch_rows_take_each_views_share_of_the_same_pairs():
    """Without views, consecutive rows (or a permutation's with shuffle); with two views, the i-th
    share of each, in row order, the same positions of both views when shuffled; unequal views or an
    odd mini-batch are an error (the config refuses both)."""
    assert mini_batch_rows(6, 2, None, shuffle=False) == [[0, 1], [2, 3], [4, 5]]
    torch.manual_seed(0)
    shuffled = mini_batch_rows(6, 3, None, shuffle=True)
    assert sorted(r for rows in shuffled for r in rows) == list(range(6)) and all(len(rows) == 3 for rows in shuffled)
    views = [0, 0, 0, 0, 1, 1, 1, 1]
    assert mini_batch_rows(8, 4, views, shuffle=False) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    for seed in range(5):
        torch.manual_seed(seed)
        minis = mini_batch_rows(8, 2, views, shuffle=True)
        assert sorted(r for rows in minis for r in rows) == list(range(8))
        assert all(rows[1] - rows[0] == 4 for rows in minis)  # an original with its twin
    interleaved = [0, 1, 0, 1, 0, 1]  # the twin of row 2 * i is row 2 * i + 1
    assert mini_batch_rows(6, 2, interleaved, shuffle=False) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="4 original and 2 rephrased"):
        mini_batch_rows(6, 2, [0, 0, 0, 0, 1, 1], shuffle=False)
    with pytest.raises(ValueError, match="mini-batches of 3 rows cannot hold both views equally"):
        mini_batch_rows(6, 3, [0, 0, 0, 1, 1, 1], shuffle=False)
