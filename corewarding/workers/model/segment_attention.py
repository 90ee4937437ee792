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


# Below this many attended tokens (a segment's prefix and its own), PyTorch's CPU flash kernel runs
# a bfloat16 segment's forward + backward 1.1-2.5x slower than float32's on the same tensors (AMD
# Zen 4, 1 thread, 9 heads of 64: 40 tokens 1.5 vs 0.6 ms, 133 tokens 5.1 vs 2.0 ms, 384 equal, 1,024
# 51 vs 72 ms). A call whose segments are all that short is computed in float32 (cast once per
# tensor): no less exact, and at the replication's lengths every segment is.
UPCAST_BELOW = 384


def _gather_index(segments: Sequence[Segment], device: torch.device) -> torch.Tensor:
    """Positions of each segment's prefix then its own tokens, segment after segment."""
    ranges = [r for s in segments for r in (range(s.prefix_start, s.prefix_end), range(s.start, s.end))]
    return torch.tensor([i for r in ranges for i in r], device=device)


def segments_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: Sequence[Segment],
                       scaling: float | None = None, enable_gqa: bool = False, dropout: float = 0.0) -> torch.Tensor:
    """[B, H, T, D] queries over packed `segments` (in order, tiling the T positions) -> [B, H, T, D]."""
    if sum(s.end - s.start for s in segments) != query.shape[2] or any(
            a.end != b.start for a, b in zip(segments, segments[1:])):
        raise ValueError(f"the segments do not tile the {query.shape[2]} packed positions in order")
    prefixes = [s.prefix_end - s.prefix_start for s in segments]
    sizes = [p + s.end - s.start for p, s in zip(prefixes, segments)]
    # one gather per tensor and one concatenation of the outputs: their backward is one scatter and
    # one split, where slicing each segment out (and writing each output into place) cost a
    # full-size gradient per segment; packed rows without prefixes need no gather at all
    index = _gather_index(segments, query.device) if any(prefixes) else None
    low = query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16)
    compute = torch.float32 if low and max(sizes, default=0) < UPCAST_BELOW else query.dtype
    q, k, v = ((t if index is None else t.index_select(2, index)).to(compute).split(sizes, dim=2)
               for t in (query, key, value))
    outputs = []
    for prefix, *qkv in zip(prefixes, q, k, v):
        # a prefix's queries ride along so that the fused causal kernel applies (a mask would leave
        # it): they see only the prefix, and their outputs are dropped
        own = F.scaled_dot_product_attention(*qkv, dropout_p=dropout, is_causal=True, scale=scaling,
                                             enable_gqa=enable_gqa)
        outputs.append(own[:, :, prefix:])
    return torch.cat(outputs, dim=2).to(query.dtype)


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
