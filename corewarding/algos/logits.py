"""Per-token quantities from logits, computed in chunks of rows so that a [tokens, 150k]
vocabulary never materialises a second full-size float32 copy (softmax, log-softmax) at once.

That bound holds without autograd (old / reference log-probs, entropy and self-certainty for
rewards and metrics). Under autograd (the policy update) each chunk's intermediates are kept for
the backward pass, as in verl, so the saving there is only the transient peak."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["entropy_from_logits", "self_certainty_from_logits", "logprobs_from_logits"]

DEFAULT_CHUNK = 1024


def _chunked(logits: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], chunk_size: int) -> torch.Tensor:
    """Apply `fn` ([n, V] float32 -> [n]) to the rows of `logits` [..., V], `chunk_size` rows at a
    time; returns [...] float32. Autograd flows through."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    parts = [fn(flat[i : i + chunk_size].float()) for i in range(0, flat.shape[0], chunk_size)]
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.reshape(lead)


def _entropy(x: torch.Tensor) -> torch.Tensor:
    # H = logsumexp(x) - sum_j softmax(x)_j * x_j
    return torch.logsumexp(x, dim=-1) - (torch.softmax(x, dim=-1) * x).sum(dim=-1)


def _self_certainty(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x, dim=-1) - x.mean(dim=-1)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: [..., V] -> [...] (float32)."""
    return _chunked(logits, _entropy, chunk_size)


def self_certainty_from_logits(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Intuitor's self-certainty: logsumexp(logits) - mean(logits) over the vocabulary, which is
    KL(Uniform || softmax(logits)) + log V (uniform logits give log V). [..., V] -> [...].
    Apply the temperature (logits / T) before calling."""
    return _chunked(logits, _self_certainty, chunk_size)


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """log softmax(logits)[label] = logits[label] - logsumexp(logits): [..., V], [...] -> [...]
    (float32), without building the full log-softmax."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    lead = labels.shape
    flat = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1, 1).long()
    parts = []
    for i in range(0, flat.shape[0], chunk_size):
        x = flat[i : i + chunk_size].float()
        picked = x.gather(-1, flat_labels[i : i + chunk_size]).squeeze(-1)
        parts.append(picked - torch.logsumexp(x, dim=-1))
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)
    return out.reshape(lead)
