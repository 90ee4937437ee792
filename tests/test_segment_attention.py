"""`segments_attention` on its own tensors: outputs and gradients against a float64 reference with
a dense mask (each response reads its prompt and itself, causally), in float32 and in bfloat16; short
low-precision segments computed in float32; segments that do not tile the sequence refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from corewarding.workers.model import segment_attention
from corewarding.workers.model.segment_attention import Segment, segments_attention

from numerics import BF16_FORWARD_REL, BF16_GRAD_REL, FORWARD_REL, GRAD_REL, assert_rel_close

HEADS, KV_HEADS, DIM = 4, 2, 8


def shared_prefix_segments(prompts: list[int], responses: list[list[int]]) -> tuple[list[Segment], int]:
    """Prompt i (its length), then its responses (their lengths), prompt after prompt."""
    segments, position = [], 0
    for prompt, lengths in zip(prompts, responses):
        start = position
        segments.append(Segment(start, start + prompt))
        position += prompt
        for length in lengths:
            segments.append(Segment(position, position + length, start, start + prompt))
            position += length
    return segments, position


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
    """float64 SDPA over the whole sequence with the mask the segments stand for."""
    visible = torch.zeros(q.shape[2], q.shape[2], dtype=torch.bool)
    for s in segments:
        own = torch.arange(s.start, s.end)
        visible[s.start:s.end, s.prefix_start:s.prefix_end] = True
        visible[s.start:s.end, s.start:s.end] = own[:, None] >= own[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=True)


def inputs(tokens: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(tokens)
    shapes = [(1, HEADS, tokens, DIM), (1, KV_HEADS, tokens, DIM), (1, KV_HEADS, tokens, DIM)]
    # values representable in `dtype`, so that the float64 reference sees the same inputs
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_() for shape in shapes]


@pytest.mark.parametrize("upcast_below", [12, 1000])  # bfloat16 computed as it is, and in float32
@pytest.mark.parametrize("dtype,forward_rel,grad_rel", [(torch.float32, FORWARD_REL, GRAD_REL),
                                                         (torch.bfloat16, BF16_FORWARD_REL, BF16_GRAD_REL)])
def test_segments_equal_the_dense_mask_in_float64(dtype, forward_rel, grad_rel, upcast_below, monkeypatch):
    monkeypatch.setattr(segment_attention, "UPCAST_BELOW", upcast_below)
    segments, tokens = shared_prefix_segments([5, 9, 3], [[4, 1, 7], [6], [2, 11]])
    q, k, v = inputs(tokens, dtype)
    out = segments_attention(q, k, v, segments, enable_gqa=True)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out.float() * cotangent).sum(), (q, k, v))
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    reference = dense_reference(*exact, segments)
    reference_grads = torch.autograd.grad((reference * cotangent.double()).sum(), exact)
    assert out.dtype == dtype
    assert_rel_close(out, reference, forward_rel, "attention output")
    for name, grad, expected in zip("qkv", grads, reference_grads):
        assert_rel_close(grad, expected, grad_rel, f"d{name}")


def test_short_bfloat16_segments_run_in_float32(monkeypatch):
    """A bfloat16 call whose segments (a prefix and its own tokens) are all shorter than UPCAST_BELOW
    reaches SDPA in float32, one with a longer segment in bfloat16; float32 inputs are left alone."""
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(segment_attention.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: seen.append((q.shape[2], q.dtype)) or sdpa(q, *a, **k))
    segments, tokens = shared_prefix_segments([4, 8], [[3, 6], [5]])
    for upcast_below, dtype, expected in [(14, torch.bfloat16, torch.float32), (13, torch.bfloat16, torch.bfloat16),
                                          (14, torch.float32, torch.float32)]:
        monkeypatch.setattr(segment_attention, "UPCAST_BELOW", upcast_below)
        seen.clear()
        out = segments_attention(*inputs(tokens, dtype), segments, enable_gqa=True)
        assert seen == [(4, expected), (7, expected), (10, expected), (8, expected), (13, expected)]
        assert out.dtype == dtype


def test_packed_rows_are_attended_apart_without_a_gather():
    """Segments without prefixes (packed rows): each row attends causally to itself only."""
    segments = [Segment(0, 3), Segment(3, 8), Segment(8, 9)]
    q, k, v = inputs(9, torch.float32)
    out = segments_attention(q, k, v, segments, enable_gqa=True)
    assert_rel_close(out, dense_reference(*(t.detach().double() for t in (q, k, v)), segments), FORWARD_REL, "packed")


@pytest.mark.parametrize("segments", [[Segment(0, 3), Segment(4, 9)], [Segment(0, 3), Segment(3, 8)],
                                      [Segment(3, 9), Segment(0, 3)]])
def test_segments_that_do_not_tile_the_sequence_are_refused(segments):
    with pytest.raises(ValueError, match="do not tile the 9 packed positions"):
        segments_attention(*inputs(9, torch.float32), segments, enable_gqa=True)
