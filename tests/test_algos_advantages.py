"""GRPO advantages, masked sums and means, the loss aggregation modes, overlong responses (DAPO) and
the rollout-correction weights, against numbers worked out by hand (docs/method.md; verl semantics)."""

from __future__ import annotations

import math

import pytest
import torch

from corewarding.algos import (
    agg_loss,
    agg_loss_parts,
    grpo_advantages,
    mask_truncated,
    masked_mean,
    masked_sum,
    overlong_penalty,
    rollout_is_weights,
    spread_over_tokens,
)

from hand_values import close


# --------------------------------------------------------------------------- GRPO advantages

# ids interleaved (groups are not contiguous) and strings, as uids are:
#   q1: scores [1, 3]    mean 2, unbiased std sqrt((1+1)/1) = sqrt(2)   -> -+1/sqrt(2)
#   q2: scores [0, 0, 3] mean 1, unbiased std sqrt((1+1+4)/2) = sqrt(3) -> -1/sqrt(3), -1/sqrt(3), 2/sqrt(3)
#   q3: scores [5]       group of one: mean 0, std 1                     -> 5 / (1 + 1e-6)
IDS = ["q1", "q2", "q1", "q3", "q2", "q2"]
SCORES = torch.tensor([1.0, 0.0, 3.0, 5.0, 0.0, 3.0])
R2, R3 = math.sqrt(2.0), math.sqrt(3.0)


def test_grpo_unbiased_std_string_ids_group_of_one():
    adv = grpo_advantages(SCORES, IDS)
    expected = [-1 / (R2 + 1e-6), -1 / (R3 + 1e-6), 1 / (R2 + 1e-6), 5 / (1 + 1e-6), -1 / (R3 + 1e-6), 2 / (R3 + 1e-6)]
    close(adv, expected, tol=1e-6)
    # the biased std would give q1 -> -+1.0 exactly: make sure we are far from that
    assert abs(adv[0].item() + 1.0) > 0.2


def test_grpo_without_std_normalisation():
    # A = s - mean: q1 mean 2, q2 mean 1, q3 (alone) mean 0
    close(grpo_advantages(SCORES, IDS, norm_by_std=False), [-1.0, -1.0, 1.0, 5.0, -1.0, 2.0])


def test_grpo_eps_and_constant_group_and_tensor_ids():
    # group 7: [2, 4] mean 3, std sqrt(2); group 3: [1, 1] std 0 -> 0 / (0 + eps) = 0
    adv = grpo_advantages(torch.tensor([2.0, 1.0, 4.0, 1.0]), torch.tensor([7, 3, 7, 3]))
    close(adv, [-1 / (R2 + 1e-6), 0.0, 1 / (R2 + 1e-6), 0.0], tol=1e-6)
    # eps matters: group [0, 1] has std 1/sqrt(2); with eps=0.5 -> (-0.5)/(0.70711+0.5) = -0.41421
    adv = grpo_advantages(torch.tensor([0.0, 1.0]), ["a", "a"], eps=0.5)
    close(adv, [-0.5 / (1 / R2 + 0.5), 0.5 / (1 / R2 + 0.5)])
    # integer scores are accepted and give float advantages; tuple ids are hashable too
    adv = grpo_advantages(torch.tensor([1, 0]), [("p", 0), ("p", 0)])
    assert adv.dtype == torch.float32
    close(adv, [0.5 / (1 / R2 + 1e-6), -0.5 / (1 / R2 + 1e-6)])


def test_grpo_groups_by_id_not_position():
    perm = torch.tensor([5, 3, 0, 4, 2, 1])
    shuffled = grpo_advantages(SCORES[perm], [IDS[i] for i in perm.tolist()])
    close(shuffled, grpo_advantages(SCORES, IDS)[perm], tol=1e-7)


def test_grpo_rejects_bad_input():
    with pytest.raises(ValueError):
        grpo_advantages(SCORES, IDS[:-1])
    with pytest.raises(ValueError):
        grpo_advantages(SCORES.reshape(2, 3), IDS)


def test_spread_over_tokens():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(spread_over_tokens(torch.tensor([2.0, -1.0]), mask), [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


# --------------------------------------------------------------------------- masked ops, agg

def test_masked_ops():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    close(masked_sum(x, m), 10.0)  # 1 + 3 + 6
    close(masked_mean(x, m), 10.0 / 3)
    close(masked_mean(x, m, dim=-1), [2.0, 6.0])  # (1+3)/2, 6/1
    close(masked_mean(x, torch.zeros_like(m)), 0.0)  # empty mask: 0, not NaN


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
LMASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # last row fully masked


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 2.5),  # (1 + 2 + 3 + 4) / 4 tokens
        ("seq-mean-token-sum", 5.0),  # (6 + 4) / 2 sequences (the empty row is left out)
        ("seq-mean-token-mean", 3.0),  # (6/3 + 4/1) / 2
        ("seq-mean-token-sum-norm", 10.0 / (2 * 3)),  # (6 + 4) / (2 sequences x the width, 3)
    ],
)
def test_agg_loss_modes(mode, expected):
    close(agg_loss(LOSS, LMASK, mode), expected)


def test_dr_grpo_norm_divides_by_the_constant_not_the_lengths():
    """seq-mean-token-sum-norm (Dr. GRPO): every response's token sum over the same constant, so a
    long response's tokens weigh as much as a short one's; the parts add up over micro-batches."""
    close(agg_loss(LOSS, LMASK, "seq-mean-token-sum-norm", scale_factor=8), 10.0 / (2 * 8))
    numerators, denominators = zip(*(agg_loss_parts(LOSS[rows], LMASK[rows], "seq-mean-token-sum-norm", 8)
                                     for rows in ([0], [1, 2])))
    close(sum(numerators) / sum(denominators), 10.0 / 16)


# --------------------------------------------------------------------------- overlong responses (DAPO)
def test_overlong_penalty_is_linear_in_the_buffer():
    # max 10, buffer 4: no penalty up to 6 tokens, then -(L - 6) / 4 * 0.5 down to -0.5 at 10
    lengths = torch.tensor([0, 6, 7, 8, 10])
    close(overlong_penalty(lengths, max_length=10, buffer_len=4, penalty_factor=0.5), [0.0, 0.0, -0.125, -0.25, -0.5])
    close(overlong_penalty(lengths, 10, 10, 1.0), [0.0, -0.6, -0.7, -0.8, -1.0])  # the whole response is the buffer
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, 10, 11, 1.0)


def test_mask_truncated_zeroes_only_truncated_rows():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    out = mask_truncated(mask, torch.tensor([True, False, False]))
    assert out.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]] and out.dtype == mask.dtype
    # token-mean over what is left: the truncated row's tokens leave the numerator and the count
    close(agg_loss(LOSS, mask_truncated(LMASK, torch.tensor([True, False, False]))), 4.0)
    with pytest.raises(ValueError, match="truncated"):
        mask_truncated(mask, torch.tensor([True, False]))


# --------------------------------------------------------------------------- rollout correction (TIS)
def test_rollout_is_weights_token_and_sequence_levels():
    """w = min(exp(trainer - rollout), C): per token, or exp of the response's summed log-ratio on
    all its tokens; 0 on padding; detached."""
    trainer = torch.tensor([[0.0, -1.0, -2.0], [-1.0, -1.0, 5.0]], requires_grad=True)
    rollout = torch.tensor([[-0.5, -1.0, -1.0], [-1.2, -1.3, 0.0]])  # log-ratios [.5, 0, -1], [.2, .3, (pad)]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    token = rollout_is_weights(trainer, rollout, mask, "token", cap=1.5)
    close(token.weights, [[1.5, 1.0, math.exp(-1.0)], [math.exp(0.2), math.exp(0.3), 0.0]])  # e^.5 = 1.65 capped
    assert token.capped.tolist() == [[True, False, False], [False, False, False]]
    assert not token.weights.requires_grad
    seq = rollout_is_weights(trainer, rollout, mask, "sequence", cap=1.5)
    close(seq.weights, [[math.exp(-0.5)] * 3, [1.5, 1.5, 0.0]])  # e^-.5; e^.5 capped
    assert seq.capped.tolist() == [False, True]
    huge = rollout_is_weights(torch.zeros(1, 2), torch.full((1, 2), -80.0), torch.ones(1, 2), "sequence", cap=3.0)
    close(huge.weights, [[3.0, 3.0]])  # exp(160) would overflow float32: the cap is applied in log space
    with pytest.raises(ValueError, match="level"):
        rollout_is_weights(trainer, rollout, mask, "geometric")


def test_agg_loss_unknown_mode():
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        agg_loss(LOSS, LMASK, "seq-sum")
