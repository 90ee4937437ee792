"""Attention over packed segments without a [tokens, tokens] mask (`attn_implementation="sdpa_segments"`,
the CPU workers' default).

A packed micro-batch (`packing.packed_inputs`, `packing.shared_prefix_inputs`) is one sequence of
segments: a row, a shared prompt, or a response that also reads its prompt. Transformers' SDPA keeps
packed rows apart with a dense block-diagonal mask over the whole sequence, which costs the square
of the micro-batch's tokens in time and memory and, with a mask, leaves PyTorch's fused CPU kernel.
Here each segment is one causal SDPA call (PyTorch's fused kernel, no mask): its own tokens, after
its prefix's when it has one (a response after its shared prompt, whose queries ride along and are
dropped), so the cost is the sum over segments of (prefix + length)^2 / 2, not the square of the
micro-batch's tokens.

`Segment`s reach the attention through the model's forward keyword arguments (transformers passes
them on to every attention call), computed once per micro-batch. Without them (generation, the
padded layout) the call is transformers' own SDPA, so a model loaded with this implementation
behaves as `sdpa` everywhere else.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

NAME = "sdpa_segments"


class Segment(NamedTuple):
    start: int  # this segment's tokens: [start, end) of the packed sequence
    end: int
    prefix_start: int = 0  # the tokens it reads in full before its own: [prefix_start, prefix_end)
    prefix_end: int = 0


def segments_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: Sequence[Segment],
                       scaling: float | None = None, enable_gqa: bool = False, dropout: float = 0.0) -> torch.Tensor:
    """[B, H, T, D] queries over packed `segments` (covering the T positions) -> [B, H, T, D]."""
    out = torch.empty_like(query)
    for seg in segments:
        if seg.prefix_end == seg.prefix_start:
            out[:, :, seg.start:seg.end] = F.scaled_dot_product_attention(
                query[:, :, seg.start:seg.end], key[:, :, seg.start:seg.end], value[:, :, seg.start:seg.end],
                dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=enable_gqa)
            continue
        # the prefix's queries ride along so that the fused causal kernel applies (a mask would leave it):
        # they see only the prefix, and their outputs are dropped
        span = (slice(seg.prefix_start, seg.prefix_end), slice(seg.start, seg.end))
        q, k, v = (torch.cat([t[:, :, span[0]], t[:, :, span[1]]], dim=2) for t in (query, key, value))
        own = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                             enable_gqa=enable_gqa)
        out[:, :, seg.start:seg.end] = own[:, :, seg.prefix_end - seg.prefix_start:]
    return out


def _attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       segments: Sequence[Segment] | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Transformers' attention-function signature: output [B, T, H, D]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    out = segments_attention(query, key, value, segments, scaling, gqa, dropout)
    return out.transpose(1, 2).contiguous(), None


def _mask(*args, **kwargs) -> torch.Tensor | None:
    """No mask for packed segments (the attention keeps them apart); SDPA's own where one is given."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


@functools.cache
def register() -> str:
    """Make `NAME` a transformers attention implementation (once per process); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _attention_forward)
    AttentionMaskInterface.register(NAME, _mask)
    return NAME
