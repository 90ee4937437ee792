"""The policy losses (PPO's clipped surrogate with dual clip, GSPO, CISPO) and the KL estimators,
values and gradients against numbers worked out by hand (docs/method.md; verl semantics)."""

from __future__ import annotations

import math

import pytest
import torch

from corewarding.algos import (
    KL_KINDS,
    cispo_loss_terms,
    gspo_loss_terms,
    kl_penalty,
    loss_mode_terms,
    policy_agg_mode,
    policy_loss,
)

from hand_values import close


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
