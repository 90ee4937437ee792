"""Per-token quantities of the next-token distribution, computed from the last hidden states and the
output embedding (lm_head) a chunk of tokens at a time, so that the [tokens, vocabulary] logits never
exist in full: not in the forward pass, and not saved for the backward pass, which recomputes each
chunk's logits. At Qwen3-8B's vocabulary (151,936), one micro-batch of 8 rows x 3,072 response tokens
has 15 GB of float32 logits; a chunk of 1,024 tokens needs 0.6 GB per temporary.

With z = hidden @ weight.T / temperature (float32) and p = softmax(z):
- log-prob of the target token: z[target] - logsumexp(z);
- entropy: logsumexp(z) - sum_j p_j z_j;
- self-certainty (Intuitor): logsumexp(z) - mean_j z_j = KL(Uniform || p) + log V.
Log-probs and entropy carry gradients to `hidden` and `weight`; self-certainty is a reward signal
and carries none.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["TokenStats", "token_stats", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 1024


class TokenStats(NamedTuple):
    log_probs: torch.Tensor  # [M] float32
    entropy: torch.Tensor  # [M] float32
    self_certainty: torch.Tensor  # [M] float32, no gradient


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """z = hidden @ weight.T / temperature in float32: a fresh tensor, which the caller may overwrite."""
    return (hidden @ weight.T).float().div_(temperature)


# Each pass over a chunk's [tokens, vocabulary] float32 logits costs about what its matmul does on a
# CPU (one micro-batch of the replication: 320 x 49,152), so both directions overwrite the chunk's
# fresh tensors in place and compute p from the log-sum-exp instead of a second softmax.
class _LinearTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size):
        n = hidden.shape[0]
        out = [hidden.new_empty(n, dtype=torch.float32) for _ in range(4)]  # logp, entropy, sc, lse
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            z = _chunk_logits(hidden[rows], weight, temperature)
            lse = torch.logsumexp(z, dim=-1)
            out[0][rows] = z.gather(-1, targets[rows, None]).squeeze(-1) - lse
            out[2][rows] = lse - z.mean(-1)
            out[3][rows] = lse
            p = torch.sub(z, lse[:, None]).exp_()
            out[1][rows] = lse - torch.linalg.vecdot(p, z)
        logp, entropy, certainty, lse = out
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
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
            return grad_hidden, grad_weight, None, None, None
        # 1/T: z is the matmul's output over T; the minus: both terms below are -p_j times a coefficient
        scale = -1.0 / ctx.temperature
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            log_p = _chunk_logits(hidden[rows], weight, ctx.temperature).sub_(lse[rows, None])
            p = torch.exp(log_p)
            # d logp / dz = onehot(target) - p;  d H / dz_j = -p_j (log p_j + H), log p_j = z_j - lse
            if grad_entropy is None:
                grad_z = p.mul_(grad_logp[rows, None] * scale)
            else:
                factor = log_p.add_(entropy[rows, None]).mul_(grad_entropy[rows, None] * scale)
                if grad_logp is not None:
                    factor.add_(grad_logp[rows, None] * scale)
                grad_z = p.mul_(factor)
            if grad_logp is not None:
                grad_z.scatter_add_(-1, targets[rows, None], grad_logp[rows, None] / ctx.temperature)
            grad_z = grad_z.to(hidden.dtype)
            if want_hidden:
                grad_hidden[rows] = grad_z @ weight
            if want_weight:
                grad_weight += (grad_z.T @ hidden[rows]).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> TokenStats:
    """Log-prob of `targets`, entropy and self-certainty of softmax(hidden @ weight.T / temperature).

    hidden [M, H] (the states that predict the targets), weight [V, H] (the output embedding),
    targets [M] token ids. Gradients flow to hidden and weight through log_probs and entropy."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [M, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return TokenStats(*_LinearTokenStats.apply(hidden, weight, targets.long(), float(temperature), int(chunk_size)))
