"""The chunked output head (token_stats): log-probs, entropy and self-certainty, and their gradients,
eager and compiled, against known values and the plain full-logits computation."""

from __future__ import annotations

import math

import pytest
import torch

from corewarding.algos import token_stats

from compile_support import needs_compiler
from hand_values import close

LN2 = math.log(2.0)


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
