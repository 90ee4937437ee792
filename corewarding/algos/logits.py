"""Per-token quantities of the next-token distribution, computed from the last hidden states and the
output embedding (lm_head) a chunk of tokens at a time, so that the [tokens, vocabulary] logits never
exist in full: not in the forward pass, and not saved for the backward pass, which recomputes each
chunk's logits. At Qwen3-8B's vocabulary (151,936), one micro-batch of 8 rows x 3,072 response tokens
has 15 GB of float32 logits; a chunk of 1,024 tokens needs 0.6 GB per temporary.

With z = hidden @ weight.T / temperature (float32) and p = softmax(z):
- log-prob of the target token: z[target] - logsumexp(z);
- entropy: -sum_j p_j log p_j, log p_j = z_j - logsumexp(z);
- self-certainty (Intuitor): logsumexp(z) - mean_j z_j = KL(Uniform || p) + log V.
Log-probs and entropy carry gradients to `hidden` and `weight`; self-certainty is a reward signal
and carries none.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

__all__ = ["TokenStats", "token_stats", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 1024


class TokenStats(NamedTuple):
    log_probs: torch.Tensor  # [M] float32
    entropy: torch.Tensor  # [M] float32
    self_certainty: torch.Tensor  # [M] float32, no gradient


def _logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """z = hidden @ weight.T / temperature in float32: a fresh tensor, which the caller may overwrite.
    The product in the inputs' dtype is a temporary: it never outlives the cast, so a chunk holds one
    [tokens, vocabulary] tensor at a time, not two."""
    return (hidden @ weight.T).float().div_(temperature)


# Each pass over a chunk's [tokens, vocabulary] float32 logits costs about what its matmul does on a
# CPU (one micro-batch of the replication: 320 x 49,152), so both directions overwrite the chunk's
# fresh tensors in place and compute p from the log-sum-exp instead of a second softmax; compiled
# (`compiled_kernels`), each direction's passes become one or two fused loops.
def forward_chunk(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                  temperature: float) -> tuple[torch.Tensor, ...]:
    """One chunk's log-prob, entropy, self-certainty and log-sum-exp, each [tokens] float32."""
    z = _logits(hidden, weight, temperature)
    lse = torch.logsumexp(z, dim=-1)
    log_probs = z.gather(-1, targets[:, None]).squeeze(-1) - lse
    certainty = lse - z.mean(-1)
    # -sum p log p, not lse - sum p z: on a peaked p that difference of two near-equal numbers keeps
    # lse's rounding times |z| (1e-3 of an entropy of 0.08 at logits of ~200), this sum none of it
    log_p = z.sub_(lse[:, None])
    return log_probs, -torch.linalg.vecdot(torch.exp(log_p), log_p), certainty, lse


def grad_chunk(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
               entropy: torch.Tensor, grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None,
               temperature: float) -> torch.Tensor:
    """d loss / d (hidden @ weight.T) of one chunk, in hidden's dtype, from the gradients to its
    log-probs and entropies (the logits recomputed, not kept from the forward)."""
    # 1/T: z is the product over T; the minus: both terms below are -p_j times a coefficient
    scale = -1.0 / temperature
    log_p = _logits(hidden, weight, temperature).sub_(lse[:, None])
    p = torch.exp(log_p)
    # d logp / dz = onehot(target) - p;  d H / dz_j = -p_j (log p_j + H), log p_j = z_j - lse
    if grad_entropy is None:
        grad_z = p.mul_(grad_logp[:, None] * scale)
    else:
        factor = log_p.add_(entropy[:, None]).mul_(grad_entropy[:, None] * scale)
        if grad_logp is not None:
            factor.add_(grad_logp[:, None] * scale)
        grad_z = p.mul_(factor)
    if grad_logp is not None:
        grad_z.scatter_add_(-1, targets[:, None], grad_logp[:, None] / temperature)
    return grad_z.to(hidden.dtype)


class ChunkKernels(NamedTuple):
    forward: Callable[..., tuple[torch.Tensor, ...]]  # forward_chunk's signature
    grad: Callable[..., torch.Tensor]  # grad_chunk's


EAGER = ChunkKernels(forward_chunk, grad_chunk)


@functools.cache
def compiled_kernels() -> ChunkKernels:
    """The chunk kernels through torch.compile, for any number of tokens (verl compiles its logits
    functions the same way); compiled at their first call, once per process and argument pattern."""
    return ChunkKernels(torch.compile(forward_chunk, dynamic=True), torch.compile(grad_chunk, dynamic=True))


class _LinearTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, kernels):
        n = hidden.shape[0]
        out = [hidden.new_empty(n, dtype=torch.float32) for _ in range(4)]  # logp, entropy, sc, lse
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            for target, values in zip(out, kernels.forward(hidden[rows], weight, targets[rows], temperature)):
                target[rows] = values
        logp, entropy, certainty, lse = out
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.chunk_size, ctx.kernels = temperature, chunk_size, kernels
        ctx.mark_non_differentiable(certainty)
        ctx.set_materialize_grads(False)
        return logp, entropy, certainty

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, _grad_certainty):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        if grad_logp is None and grad_entropy is None:
            return grad_hidden, grad_weight, None, None, None, None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            grad_z = ctx.kernels.grad(hidden[rows], weight, targets[rows], lse[rows], entropy[rows],
                                      None if grad_logp is None else grad_logp[rows],
                                      None if grad_entropy is None else grad_entropy[rows], ctx.temperature)
            if want_hidden:
                grad_hidden[rows] = grad_z @ weight
            if want_weight:
                grad_weight += (grad_z.T @ hidden[rows]).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    compiled: bool = False,
) -> TokenStats:
    """Log-prob of `targets`, entropy and self-certainty of softmax(hidden @ weight.T / temperature).

    hidden [M, H] (the states that predict the targets), weight [V, H] (the output embedding),
    targets [M] token ids. Gradients flow to hidden and weight through log_probs and entropy.
    `compiled`: the per-chunk passes through torch.compile (`compiled_kernels`), the same values to
    float32 rounding."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [M, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    kernels = compiled_kernels() if compiled else EAGER
    return TokenStats(*_LinearTokenStats.apply(hidden, weight, targets.long(), float(temperature), int(chunk_size),
                                               kernels))
