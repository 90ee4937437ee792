"""The algorithm core against numbers worked out by hand (docs/method.md; verl semantics)."""

from __future__ import annotations

import math

import pytest
import torch

from corewarding.algos import (
    KL_KINDS,
    agg_loss,
    agg_loss_parts,
    build_lr_scheduler,
    cispo_loss_terms,
    ema_update_,
    ema_weight,
    grpo_advantages,
    gspo_loss_terms,
    kl_penalty,
    loss_mode_terms,
    lr_lambda,
    mask_truncated,
    masked_mean,
    masked_sum,
    overlong_penalty,
    policy_agg_mode,
    policy_loss,
    rollout_is_weights,
    spread_over_tokens,
    token_stats,
)

from compile_support import needs_compiler

LN2 = math.log(2.0)


def close(actual, expected, tol=1e-5):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=tol, rtol=0), f"{actual.tolist()} != {expected.tolist()}"


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


# --------------------------------------------------------------------------- policy loss

# Two rollouts, A = +1 and A = -1; ratios chosen per token (old_logp = -1, logp = -1 + ln r):
#   row 0 (A=+1): r = 1.5 -> l1=-1.5, l2=-1.2 (clip 1.2), max -1.2   [clipped]
#                 r = 0.5 -> l1=-0.5, l2=-0.8,            max -0.5
#                 r = 1.0 -> l1=l2=-1.0                   -1.0
#                 r = 10  (masked)
#   row 1 (A=-1): r = 5.0 -> l1=5, l2=1.2, max 5, dual clip min(5, 3) = 3   [lower-clipped]
#                 r = 0.5 -> l1=0.5, l2=0.8, max 0.8      [clipped]
#                 two masked tokens (r = 0.01, 7)
# token losses: row0 [-1.2, -0.5, -1.0] (sum -2.7), row1 [3.0, 0.8] (sum 3.8)
RATIOS = torch.tensor([[1.5, 0.5, 1.0, 10.0], [5.0, 0.5, 0.01, 7.0]])
PMASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
ADV = torch.tensor([1.0, -1.0])
OLD = torch.full((2, 4), -1.0)


def _logp():
    return (OLD + RATIOS.log()).clone().requires_grad_(True)


@pytest.mark.parametrize(
    "agg, expected",
    [
        ("token-mean", 1.1 / 5),  # (-2.7 + 3.8) / 5 tokens
        ("seq-mean-token-sum", 1.1 / 2),  # (-2.7 + 3.8) / 2
        ("seq-mean-token-mean", (-0.9 + 1.9) / 2),  # (-2.7/3 + 3.8/2) / 2
    ],
)
def test_policy_loss_values_and_metrics(agg, expected):
    loss, metrics = policy_loss(_logp(), OLD, ADV.unsqueeze(-1).expand(2, 4), PMASK, agg=agg)
    close(loss, expected)
    assert set(metrics) == {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"}
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["pg_clipfrac"] == pytest.approx(2 / 5, abs=1e-6)  # row0 r=1.5, row1 r=0.5
    assert metrics["pg_clipfrac_lower"] == pytest.approx(1 / 5, abs=1e-6)  # row1 r=5
    # approx KL = mean(old - logp) = -mean(ln r) over the 5 unmasked tokens
    kl = -(math.log(1.5) + math.log(0.5) + 0.0 + math.log(5.0) + math.log(0.5)) / 5
    assert metrics["ppo_kl"] == pytest.approx(kl, abs=1e-6)


def test_policy_loss_dual_clip_and_gradients():
    logp = _logp()
    loss, _ = policy_loss(logp, OLD, ADV, PMASK)  # per-rollout advantages are spread
    close(loss, 1.1 / 5)
    loss.backward()
    # only unclipped tokens carry gradient: d(-A r)/d logp = -A r, divided by 5 tokens
    close(logp.grad, [[0.0, -0.5 / 5, -1.0 / 5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # without the dual clip row1/r=5 keeps loss 5: (-2.7 + 5 + 0.8) / 5
    loss, metrics = policy_loss(_logp(), OLD, ADV, PMASK, clip_c=None)
    close(loss, 3.1 / 5)
    assert metrics["pg_clipfrac_lower"] == 0.0
    # dual clip with c = 4 still bites at r = 5: min(5, 4) -> (-2.7 + 4 + 0.8) / 5
    close(policy_loss(_logp(), OLD, ADV, PMASK, clip_c=4.0)[0], 2.1 / 5)
    with pytest.raises(ValueError):
        policy_loss(_logp(), OLD, ADV, PMASK, clip_c=1.0)


def test_policy_loss_asymmetric_clip():
    # clip_high 0.28: row0 r=1.5 -> max(-1.5, -1.28) = -1.28; clip_low 0.1: row0 r=0.5 -> l2=-0.9,
    # max(-0.5, -0.9) = -0.5; row1 r=0.5 -> l2 = 0.9 -> 0.9. Sum: -1.28-0.5-1.0+3.0+0.9 = 1.12
    loss, _ = policy_loss(_logp(), OLD, ADV, PMASK, clip_low=0.1, clip_high=0.28)
    close(loss, 1.12 / 5)
    # that sum would not notice swapped bounds; one sign of advantage at a time does.
    # A = +1 everywhere: r=1.5 -> -1.28, r=0.5 -> -0.5, r=1 -> -1, r=5 -> max(-5, -1.28) = -1.28, r=0.5 -> -0.5
    loss, _ = policy_loss(_logp(), OLD, torch.tensor([1.0, 1.0]), PMASK, clip_low=0.1, clip_high=0.28)
    close(loss, (-1.28 - 0.5 - 1.0 - 1.28 - 0.5) / 5)
    # A = -1 everywhere: r=1.5 -> max(1.5, 1.28) = 1.5, r=0.5 -> max(0.5, 0.9) = 0.9, r=1 -> 1,
    # r=5 -> min(max(5, 1.28), 3) = 3, r=0.5 -> 0.9
    loss, _ = policy_loss(_logp(), OLD, torch.tensor([-1.0, -1.0]), PMASK, clip_low=0.1, clip_high=0.28)
    close(loss, (1.5 + 0.9 + 1.0 + 3.0 + 0.9) / 5)


# --------------------------------------------------------------------------- GSPO and CISPO

# GSPO: two responses of old_logp -1; log-ratios per token (row 1's third token is padding, its
# log-ratio 5 must not count):
#   row 0: [0.3, -0.1, 0.1]  mean 0.1  -> s_0 = e^0.1  = 1.105171 (the mean of the token ratios would be 1.119960)
#   row 1: [-0.2, -0.4, pad] mean -0.3 -> s_1 = e^-0.3 = 0.740818
GSPO_DELTA = torch.tensor([[0.3, -0.1, 0.1], [-0.2, -0.4, 5.0]], dtype=torch.float64)
GSPO_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
GSPO_OLD = torch.full((2, 3), -1.0, dtype=torch.float64)
S0, S1 = math.exp(0.1), math.exp(-0.3)


def _gspo_logp() -> torch.Tensor:
    return (GSPO_OLD + GSPO_DELTA).clone().requires_grad_(True)


def test_gspo_ratio_is_the_exp_of_the_mean_log_ratio_clipped_per_response():
    """A = +1, -1, clip 0.2: s_0 = 1.105 is inside [0.8, 1.2]: l = -s_0 on its 3 tokens; s_1 = 0.741
    with A = -1 is below 0.8: l = max(s_1, 0.8) = 0.8 on its 2 tokens, all clipped, though its first
    token's own ratio e^-0.2 = 0.819 is inside the range (token-level PPO would keep it)."""
    terms = gspo_loss_terms(_gspo_logp(), GSPO_OLD, torch.tensor([1.0, -1.0]), GSPO_MASK, 0.2, 0.2)
    close(terms.losses * GSPO_MASK, [[-S0, -S0, -S0], [0.8, 0.8, 0.0]])
    assert (terms.clipped & GSPO_MASK.bool()).tolist() == [[False] * 3, [True, True, False]]
    assert not terms.dual_clipped.any()
    # seq-mean-token-mean whatever loss_agg_mode says: (-s_0 + 0.8) / 2 responses
    loss, metrics = policy_loss(_gspo_logp(), GSPO_OLD, torch.tensor([1.0, -1.0]), GSPO_MASK, agg="token-mean",
                                mode="gspo")
    close(loss, (-S0 + 0.8) / 2)
    assert metrics["pg_clipfrac"] == pytest.approx(2 / 5) and metrics["pg_clipfrac_lower"] == 0.0
    assert policy_agg_mode("gspo", "token-mean") == "seq-mean-token-mean"
    assert policy_agg_mode("cispo", "token-mean") == "token-mean"


@pytest.mark.parametrize(
    "advantages, clip_high, expected_grad",
    [
        # row 1 clipped (A < 0, s_1 < 0.8): no gradient; row 0: -A s_0 / (3 tokens x 2 responses) on each token
        ([1.0, -1.0], 0.2, [[-S0 / 6] * 3, [0.0, 0.0, 0.0]]),
        # row 0 above 1 + 0.05 with A > 0: clipped, no gradient; row 1 (A = +1) below 0.8 is on the side
        # PPO does not clip for A > 0: -s_1 / (2 tokens x 2 responses)
        ([1.0, 1.0], 0.05, [[0.0, 0.0, 0.0], [-S1 / 4, -S1 / 4, 0.0]]),
    ],
)
def test_gspo_gradient_per_token_log_prob(advantages, clip_high, expected_grad):
    """d loss / d logp_it = -A_i s_i / (|y_i| x responses) for an unclipped response (the token's own
    log-prob's gradient times the sequence ratio), 0 for a clipped one and for padding."""
    logp = _gspo_logp()
    loss, _ = policy_loss(logp, GSPO_OLD, torch.tensor(advantages), GSPO_MASK, clip_low=0.2, clip_high=clip_high,
                          mode="gspo")
    loss.backward()
    close(logp.grad, expected_grad, tol=1e-7)


def test_gspo_gradient_is_the_sequence_objectives_while_unclipped():
    """Nothing clipped (range 0.5): the gradient equals that of GSPO's objective written with one ratio
    per response and the gradient through the mean (TRL's form), -mean_i A_i s_i."""
    advantages = torch.tensor([0.7, -1.3], dtype=torch.float64)
    logp, plain = _gspo_logp(), _gspo_logp()
    policy_loss(logp, GSPO_OLD, advantages, GSPO_MASK, clip_low=0.5, clip_high=0.5, mode="gspo")[0].backward()
    mask = GSPO_MASK.double()
    s = torch.exp(((plain - GSPO_OLD) * mask).sum(-1) / mask.sum(-1))
    (-(advantages * s)).mean().backward()
    close(logp.grad, plain.grad, tol=1e-7)


# CISPO on the PPO case above (RATIOS, PMASK, ADV = +1, -1, old_logp -1, 5 unmasked tokens):
#   clip 0.2: w = clip(r, 0.8, 1.2): row 0 r [1.5, 0.5, 1.0] -> [1.2, 0.8, 1.0]; row 1 r [5.0, 0.5] -> [1.2, 0.8]
CISPO_W = torch.tensor([[1.2, 0.8, 1.0, 0.0], [1.2, 0.8, 0.0, 0.0]])


def test_cispo_gradient_flows_only_through_the_log_prob():
    """l = -sg(w) A logp: d loss / d logp_t = -w_t A / 5 tokens (no term from the weight's own
    dependence on logp, clipped tokens keep theirs); old_logp gets no gradient."""
    logp, old = _logp(), OLD.clone().requires_grad_(True)
    loss, metrics = policy_loss(logp, old, ADV, PMASK, mode="cispo")
    close(loss, (-(CISPO_W * ADV[:, None] * (OLD + RATIOS.log())) * PMASK).sum() / 5)
    loss.backward()
    close(logp.grad, -CISPO_W * ADV[:, None] / 5)
    assert old.grad is None
    assert metrics["pg_clipfrac"] == pytest.approx(4 / 5) and metrics["pg_clipfrac_lower"] == 0.0  # r = 1 is not clipped
    # another old_logp changes the weight, and so the gradient's size, not its path: old + ln 1.1 makes
    # row 0's third token's r = 1 / 1.1 = 0.909, still inside the range
    shifted = OLD.clone()
    shifted[0, 2] += math.log(1.1)
    logp = _logp()
    policy_loss(logp, shifted, ADV, PMASK, mode="cispo")[0].backward()
    close(logp.grad[0, 2], -1 / 1.1 / 5)
    # verl's CISPO example: clip_ratio_low = 10, no lower clip (w = r below 1)
    terms = cispo_loss_terms(_logp(), OLD, ADV, clip_low=10.0, clip_high=0.2)
    close((terms.losses / -(ADV[:, None] * (OLD + RATIOS.log())) * PMASK)[:, :2], [[1.2, 0.5], [1.2, 0.5]])


def test_loss_mode_terms_dispatch_and_unknown_mode():
    vanilla = loss_mode_terms("vanilla", _logp(), OLD, ADV, PMASK)
    close(vanilla.losses * PMASK, [[-1.2, -0.5, -1.0, 0.0], [3.0, 0.8, 0.0, 0.0]])  # the PPO case, dual clip at 3
    with pytest.raises(ValueError, match="gspo"):
        loss_mode_terms("sapo", _logp(), OLD, ADV, PMASK)


# --------------------------------------------------------------------------- KL estimators

LOGP = torch.tensor([-1.0, -2.0, -0.5, -1.0, -31.0])
REF = torch.tensor([-2.0, -1.0, -0.5, 14.0, -1.0])
# logp - ref = [1, -1, 0, -15, -30]; d = ref - logp = [-1, 1, 0, 15, 30]


@pytest.mark.parametrize(
    "kinds, expected",
    [
        (("k1", "kl"), [1.0, -1.0, 0.0, -15.0, -30.0]),
        (("abs",), [1.0, 1.0, 0.0, 15.0, 30.0]),
        (("k2", "mse"), [0.5, 0.5, 0.0, 112.5, 450.0]),  # 0.5 * diff^2
        # exp(d) - d - 1: d=-1 -> e^-1 = 0.367879; d=1 -> e - 2 = 0.718282; d=0 -> 0;
        # d=15 -> 3.3e6 clamped to 10; d=30 (clamped to 20 first) -> huge, clamped to 10
        (("k3", "low_var_kl"), [math.exp(-1.0), math.e - 2.0, 0.0, 10.0, 10.0]),
    ],
)
def test_kl_penalty_kinds(kinds, expected):
    for kind in kinds:
        close(kl_penalty(LOGP, REF, kind), expected)


def test_kl_low_var_lower_branch_and_unknown_kind():
    # d = -30 -> clamp to -20 -> exp(-20) + 20 - 1 = 19.000000002 -> clamped to 10
    close(kl_penalty(torch.tensor([5.0]), torch.tensor([-25.0]), "low_var_kl"), [10.0])
    # d = -5 -> e^-5 + 5 - 1 = 4.006738
    close(kl_penalty(torch.tensor([0.0]), torch.tensor([-5.0]), "k3"), [math.exp(-5.0) + 4.0])
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(LOGP, REF, "full")


@pytest.mark.parametrize("kind", [k for k in KL_KINDS if k.endswith("+")])
def test_straight_through_kl_has_its_estimators_value_and_k2s_gradient(kind: str):
    """``kX+``: the value of kX (clamps included), the gradient of k2, 0.5 (logp - ref)^2: logp - ref."""
    logp = LOGP.double().requires_grad_(True)
    value = kl_penalty(logp, REF.double(), kind)
    assert torch.equal(value.detach(), kl_penalty(LOGP.double(), REF.double(), kind[:-1]))
    value.sum().backward()
    close(logp.grad, [1.0, -1.0, 0.0, -15.0, -30.0])  # logp - ref
    assert {"k1+", "k3+", "low_var_kl+"} <= set(KL_KINDS)


# --------------------------------------------------------------------------- token statistics

P = torch.tensor([0.5, 0.25, 0.25])


def stats_of_logits(logits: torch.Tensor, targets: torch.Tensor | None = None, **kwargs):
    """token_stats with the identity as output embedding: hidden @ I.T = the logits themselves."""
    flat = logits.reshape(-1, logits.shape[-1])
    if targets is None:
        targets = torch.zeros(flat.shape[0], dtype=torch.long)
    eye = torch.eye(flat.shape[-1], dtype=flat.dtype)
    return token_stats(flat, eye, targets.reshape(-1), **kwargs)


def test_token_stats_known_values():
    stats = stats_of_logits((P.log() + 7.0)[None], torch.tensor([1]))  # a shift must not matter
    close(stats.log_probs, [math.log(0.25)])
    close(stats.entropy, [1.5 * LN2])  # 0.5 ln 2 + 2 * 0.25 ln 4
    close(stats.self_certainty, [5 * LN2 / 3])  # logsumexp - mean = -(ln .5 + 2 ln .25) / 3
    # uniform over V = 6: entropy ln 6; self-certainty = ln 6, i.e. KL(U || p) = sc - ln V = 0
    uniform = stats_of_logits(torch.full((6, 6), 0.3))
    close(uniform.entropy, torch.full((6,), math.log(6.0)))
    close(uniform.self_certainty - math.log(6.0), torch.zeros(6))
    close(stats_of_logits(torch.tensor([[100.0, 0.0, 0.0]])).entropy, [0.0])  # one-hot-ish: no entropy
    # temperature divides the logits: T = 2 on 2 ln(p) gives p back
    close(stats_of_logits((2 * P.log())[None], torch.tensor([0]), temperature=2.0).log_probs, [-LN2])


@pytest.mark.parametrize("chunk_size,compiled", [(1, False), (3, False), (7, False), (10_000, False),
                                                 pytest.param(3, True, marks=needs_compiler),
                                                 pytest.param(10_000, True, marks=needs_compiler)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_stats_values_and_gradients_match_full_logits(chunk_size, compiled, temperature):
    """Values and gradients (to the hidden states and to the output embedding, through log-probs and
    entropy) equal those of the plain full-logits computation, for every chunk size, with the chunk
    passes compiled or not."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 6, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 13, (10,), generator=g)
    w_logp, w_ent = torch.randn(10, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64)

    stats = token_stats(hidden, weight, targets, temperature=temperature, chunk_size=chunk_size, compiled=compiled)
    ((stats.log_probs * w_logp).sum() + (stats.entropy * w_ent).sum()).backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None

    logsm = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    logp = logsm.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    close(stats.log_probs, logp.detach())
    close(stats.entropy, entropy.detach())
    close(stats.self_certainty, -logsm.mean(-1).detach())
    assert not stats.self_certainty.requires_grad
    ((logp * w_logp).sum() + (entropy * w_ent).sum()).backward()
    close(got[0], hidden.grad)
    close(got[1], weight.grad)


@needs_compiler
@pytest.mark.parametrize("used", ["log_probs", "entropy", "both"])
def test_compiled_token_stats_equal_the_eager_ones_for_each_gradient_pattern(used):
    """The compiled chunk passes (actor.use_torch_compile) give the eager values and gradients when
    the loss uses only the log-probs (no entropy bonus: the training default), only the entropy, or
    both; float64 in, so the two agree to float32 rounding of the logits (both compute them in float32)."""
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(9, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(11, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 11, (9,), generator=g)
    results = []
    for compiled in (False, True):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        stats = token_stats(h, w, targets, temperature=0.7, chunk_size=4, compiled=compiled)
        loss = {"log_probs": stats.log_probs.sum(), "entropy": stats.entropy.sum(),
                "both": stats.log_probs.sum() - 0.3 * stats.entropy.sum()}[used]
        loss.backward()
        results.append((*stats, h.grad, w.grad))
    for eager, compiled in zip(*results):
        close(compiled, eager)


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=needs_compiler)])
def test_entropy_of_a_peaked_distribution_keeps_float32_accuracy(compiled):
    """A trained policy's next-token distribution is peaked (here entropy 0.08, logits up to ~220):
    its entropy is as exact as the float32 logits allow (a few units of their rounding, 2^-24 x |z|;
    the bound 8 units is 1.0e-4 here, the error 7.5e-6), where lse - sum p z lost lse's rounding times
    |z| to cancellation (1.1e-3 here)."""
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(64, 16, generator=g) * 10, torch.randn(50, 16, generator=g)
    stats = token_stats(hidden, weight, torch.zeros(64, dtype=torch.long), temperature=0.8, compiled=compiled)
    z = hidden.double() @ weight.double().T / 0.8
    exact = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
    assert float(exact.mean()) < 0.1  # peaked, as intended
    assert float((stats.entropy.double() - exact).abs().max()) <= 8 * 2**-24 * float(z.abs().max())


def test_token_stats_one_output_used_dtype_and_shape_errors():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 5, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 3, 8, 2])
    token_stats(hidden, weight, targets, chunk_size=3).entropy.sum().backward()  # log-probs unused
    plain = hidden.detach().clone().requires_grad_(True)
    lsm = torch.log_softmax(plain @ weight.T, -1)
    (-(lsm.exp() * lsm).sum(-1)).sum().backward()
    close(hidden.grad, plain.grad)
    out = token_stats(torch.zeros(3, 8, dtype=torch.bfloat16), torch.eye(8, dtype=torch.bfloat16), torch.zeros(3), chunk_size=2)
    assert out.entropy.dtype == torch.float32 and out.entropy.shape == (3,)
    close(out.entropy, torch.full((3,), math.log(8.0)))
    with pytest.raises(ValueError, match="targets"):
        token_stats(hidden, weight, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        token_stats(hidden, weight.T, targets)


# --------------------------------------------------------------------------- EMA teacher

def test_ema_weight_schedule():
    assert ema_weight(0, 100) == pytest.approx(0.99, abs=1e-12)
    assert ema_weight(100, 100) == pytest.approx(0.9999, abs=1e-12)
    assert ema_weight(50, 100) == pytest.approx((0.99 + 0.9999) / 2, abs=1e-12)  # 0.99495
    # k = K/4: cos(pi/4) = 0.7071068 -> 0.9999 - 0.00495 * 1.7071068 = 0.99144982
    assert ema_weight(25, 100) == pytest.approx(0.9999 - 0.00495 * (1 + math.sqrt(0.5)), abs=1e-12)
    assert ema_weight(25, 100) == pytest.approx(0.9914498, abs=1e-7)
    # clamped to [0, K]
    assert ema_weight(-3, 100) == pytest.approx(0.99, abs=1e-12)
    assert ema_weight(250, 100) == pytest.approx(0.9999, abs=1e-12)
    # custom ends, K = 3, k = 1: cos(pi/3) = 0.5 -> 1.0 - 0.25 * 1.5 = 0.625
    assert ema_weight(1, 3, start=0.5, end=1.0) == pytest.approx(0.625, abs=1e-12)
    weights = [ema_weight(k, 10) for k in range(11)]
    assert all(a < b for a, b in zip(weights, weights[1:]))
    with pytest.raises(ValueError):
        ema_weight(0, 0)


def test_ema_update_in_place():
    teacher = torch.tensor([1.0, 2.0])
    policy = torch.tensor([3.0, 6.0])
    storage = teacher.data_ptr()
    ema_update_([teacher], [policy], 0.75)
    close(teacher, [1.5, 3.0])  # 0.75*1 + 0.25*3, 0.75*2 + 0.25*6
    assert teacher.data_ptr() == storage
    close(policy, [3.0, 6.0])
    # a view (like a local shard) updates its base; twice with w = 0.5: 0 -> 2 -> 3
    full = torch.zeros(4)
    ema_update_([full[1:3]], [torch.tensor([4.0, 8.0])], 0.5)
    ema_update_([full[1:3]], [torch.tensor([4.0, 8.0])], 0.5)
    close(full, [0.0, 3.0, 6.0, 0.0])
    # mappings are matched by name; module parameters (requires_grad) work
    lin_t, lin_p = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin_t.weight.fill_(1.0), lin_t.bias.fill_(0.0), lin_p.weight.fill_(-1.0), lin_p.bias.fill_(10.0)
    ema_update_(dict(lin_t.named_parameters()), dict(reversed(list(lin_p.named_parameters()))), 0.9)
    close(lin_t.weight.detach(), [[0.8, 0.8]])  # 0.9*1 + 0.1*(-1)
    close(lin_t.bias.detach(), [1.0])  # 0.9*0 + 0.1*10
    with pytest.raises(ValueError):
        ema_update_([teacher], [policy, policy], 0.5)


# --------------------------------------------------------------------------- LR schedules

def test_lr_lambda_cosine_and_constant():
    # total 110, warm-up 10: linear 0 -> 1, then 0.5 (1 + cos(pi p)), p = (step - 10) / 100
    assert lr_lambda(0, 110, 10) == 0.0
    assert lr_lambda(5, 110, 10) == pytest.approx(0.5)
    assert lr_lambda(10, 110, 10) == pytest.approx(1.0)
    assert lr_lambda(35, 110, 10) == pytest.approx(0.5 * (1 + math.sqrt(0.5)))  # p=1/4: 0.853553
    assert lr_lambda(60, 110, 10) == pytest.approx(0.5)  # p = 1/2
    assert lr_lambda(110, 110, 10) == pytest.approx(0.0, abs=1e-12)  # p = 1
    # min_lr_ratio 0.1: 0.1 + 0.9 * 0.5 (1 + cos(pi p)) -> p=1/2: 0.55, p=1: 0.1
    assert lr_lambda(60, 110, 10, min_lr_ratio=0.1) == pytest.approx(0.55)
    assert lr_lambda(110, 110, 10, min_lr_ratio=0.1) == pytest.approx(0.1)
    # constant: warm-up, then 1
    assert lr_lambda(5, 110, 10, style="constant") == pytest.approx(0.5)
    assert lr_lambda(80, 110, 10, style="constant") == 1.0
    # no warm-up: step 0 already gives full LR
    assert lr_lambda(0, 100, 0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_lambda(0, 100, 0, style="linear")


def test_build_lr_scheduler():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = build_lr_scheduler(opt, total_steps=20, warmup_steps_ratio=0.1, style="cosine")  # warm-up 2
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    # step 0: 0; 1: 2 * 1/2; 2: 2 * 1; 11: p = 9/18 -> 2 * 0.5; 20: 0
    close([lrs[0], lrs[1], lrs[2], lrs[11], lrs[20]], [0.0, 1.0, 2.0, 1.0, 0.0], tol=1e-9)
    # explicit warm-up steps override the ratio; constant style
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_lr_scheduler(opt, 20, warmup_steps_ratio=0.5, warmup_steps=4, style="constant")
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(6):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    close(lrs, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0], tol=1e-9)
