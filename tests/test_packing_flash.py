"""The packed layout's flash-attention row boundaries (`ModelInputs.varlen_kwargs`): equal to what
transformers derives from the packed position ids, passed to the model on flash-attention only, and
taken by transformers' `_flash_attention_forward` in place of its per-layer derivation.

flash-attn is not installed on the CPU machines: the flash tests swap transformers' kernel import for
a varlen kernel written with SDPA, one causal attention per row (`_reference_varlen`), and leave the
rest of transformers' flash path as it is."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers.modeling_flash_attention_utils as fa_utils

from corewarding.batch import Batch
from corewarding.workers.model.forward import ForwardSettings, forward_token_stats, install_token_stats
from corewarding.workers.model.packing import packed_inputs

from numerics import FORWARD_REL, assert_rel_close

TEMPERATURE = 0.8


def rollouts(seed: int, rows: int, prompt_width: int = 6, response_width: int = 7, ones: int = 2) -> Batch:
    """Left-padded prompts, right-padded responses of random lengths; the first `ones` rows hold one
    token (a one-token prompt, no response), the shortest row flash-attention can meet."""
    g = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(1, prompt_width + 1, (rows,), generator=g)
    resp_len = torch.randint(0, response_width + 1, (rows,), generator=g)
    prompt_len[:ones], resp_len[:ones] = 1, 0
    order = torch.randperm(rows, generator=g)  # the one-token rows anywhere, the first and last included
    prompt_len, resp_len = prompt_len[order], resp_len[order]
    pmask = (torch.arange(prompt_width)[None] >= prompt_width - prompt_len[:, None]).long()
    rmask = (torch.arange(response_width)[None] < resp_len[:, None]).long()
    ids = torch.randint(3, 49152, (rows, prompt_width + response_width), generator=g)
    attention = torch.cat([pmask, rmask], dim=1)
    return Batch(tensors={"input_ids": ids * attention + 2 * (1 - attention), "attention_mask": attention,
                          "position_ids": (attention.cumsum(1) - 1).clamp(min=0), "response_mask": rmask,
                          "responses": ids[:, prompt_width:]})


@pytest.mark.parametrize("seed,rows,ones", [(0, 1, 1), (1, 2, 1), (2, 5, 2), (3, 9, 4), (4, 16, 3), (5, 4, 4)])
def test_packed_boundaries_equal_transformers_own_from_position_ids(seed, rows, ones):
    batch = rollouts(seed, rows, ones=ones)
    inputs = packed_inputs(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    (cu_q, cu_k), (max_q, max_k) = fa_utils.prepare_fa_kwargs_from_position_ids(inputs.position_ids)
    kwargs = inputs.varlen_kwargs()
    assert set(kwargs) == {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}
    for ours, theirs in ((kwargs["cu_seq_lens_q"], cu_q), (kwargs["cu_seq_lens_k"], cu_k)):
        assert ours.dtype == theirs.dtype == torch.int32 and torch.equal(ours, theirs)
    assert kwargs["cu_seq_lens_q"].shape == (rows + 1,) and int(kwargs["cu_seq_lens_q"][0]) == 0
    assert type(kwargs["max_length_q"]) is int and type(kwargs["max_length_k"]) is int  # no device read per layer
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == int(max_q) == int(max_k)
    assert kwargs["max_length_q"] == int(batch["attention_mask"].sum(1).max())


def _reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, dropout_p=0.0,
                      softmax_scale=None, causal=False, **_: Any) -> torch.Tensor:
    """flash_attn_varlen_func's contract in SDPA ([tokens, heads, dim], grouped key/value heads),
    recording the boundaries it was given."""
    _reference_varlen.calls.append((cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = torch.empty_like(q)
    bounds = cu_seqlens_q.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        rows = slice(start, end)
        out[rows] = torch.nn.functional.scaled_dot_product_attention(
            q[rows].transpose(0, 1), k[rows].transpose(0, 1), v[rows].transpose(0, 1), is_causal=causal,
            scale=softmax_scale).transpose(0, 1)
    return out


@pytest.fixture
def flash(monkeypatch):
    """transformers' flash-attention path with `_reference_varlen` as its kernel; counts the per-layer
    derivations of the boundaries from the position ids."""
    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn", "_pad_fn",
                 "_unpad_fn", "_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn"):
        monkeypatch.setattr(fa_utils, name, getattr(fa_utils, name))  # restored after the test
    monkeypatch.setattr(fa_utils, "_loaded_implementation", None)
    monkeypatch.setattr(fa_utils, "_lazy_imports", lambda *a, **k: (None, _reference_varlen, None, fa_utils._pad_input,
                                                                     fa_utils._unpad_input))
    derived = []
    original = fa_utils.prepare_fa_kwargs_from_position_ids
    monkeypatch.setattr(fa_utils, "prepare_fa_kwargs_from_position_ids",
                        lambda position_ids: derived.append(1) or original(position_ids))
    _reference_varlen.calls = []
    return derived


def load(path, attn: str) -> torch.nn.Module:
    """The tiny model on SDPA, switched to `attn` after loading (from_pretrained would look for flash-attn)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.config._attn_implementation = attn
    install_token_stats(model)
    return model


def capture_base_model_kwargs(model: torch.nn.Module) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    model.base_model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True)
    return seen


VARLEN_KEYS = {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"}


def test_flash_attention_gets_the_boundaries_once_and_derives_none_per_layer(tiny_model_path, flash):
    """Packed on flash-attention: the model forward receives the packer's boundaries, every layer's
    kernel call gets those very tensors, transformers derives none from the position ids (it does,
    once per layer, without them), and the log-probs equal the packed rows on SDPA (block-diagonal
    mask)."""
    batch = rollouts(seed=7, rows=6)
    settings = ForwardSettings(TEMPERATURE, "packed", chunk_size=5)
    model = load(tiny_model_path, "flash_attention_2")
    seen = capture_base_model_kwargs(model)
    with torch.no_grad():
        got = forward_token_stats(model, batch, settings)
    expected = packed_inputs(batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert len(seen) == 1 and VARLEN_KEYS <= seen[0].keys()
    given = seen[0]["cu_seq_lens_q"]
    assert torch.equal(given, expected.cu_seq_lens) and seen[0]["max_length_q"] == expected.max_length
    layers = model.config.num_hidden_layers
    assert len(_reference_varlen.calls) == layers
    assert all(cu_q is given and cu_k is given and max_q == max_k == expected.max_length
               for cu_q, cu_k, max_q, max_k in _reference_varlen.calls)
    assert not flash, f"transformers derived the boundaries from the position ids {len(flash)} times"
    with torch.no_grad():  # the control: without them, transformers derives them once per layer
        model.base_model(input_ids=expected.input_ids, position_ids=expected.position_ids, use_cache=False)
    assert len(flash) == layers
    with torch.no_grad():
        reference = forward_token_stats(load(tiny_model_path, "sdpa"), batch, settings)
    assert_rel_close(got.log_probs, reference.log_probs, FORWARD_REL, "log_probs")
    assert_rel_close(got.entropy, reference.entropy, FORWARD_REL, "entropy")


@pytest.mark.parametrize("attn,layout", [("sdpa", "packed"), ("eager", "packed"), ("sdpa", "shared_prefix"),
                                         ("flash_attention_2", "padded")])
def test_no_boundaries_off_flash_attention_or_off_the_packed_layout(tiny_model_path, flash, attn, layout):
    """SDPA / eager take a mask from the position ids and no boundaries; the padded rows on
    flash-attention have an attention mask that transformers unpads (no packed rows)."""
    model = load(tiny_model_path, attn)
    seen = capture_base_model_kwargs(model)
    with torch.no_grad():
        forward_token_stats(model, rollouts(seed=8, rows=4), ForwardSettings(TEMPERATURE, layout, chunk_size=5))
    assert len(seen) == 1 and not VARLEN_KEYS & seen[0].keys(), sorted(seen[0])


@pytest.mark.parametrize("layout", ["packed", "shared_prefix"])
def test_sdpa_segments_gets_the_segments_and_builds_no_mask(tiny_model_path, layout, monkeypatch):
    """The CPU workers' attention (`sdpa_segments`): the model forward receives the packer's segments
    and no attention mask, no [tokens, tokens] mask is built for it, each layer makes one SDPA call
    per segment, and the log-probs equal SDPA's with its block-diagonal mask."""
    from corewarding.workers.model import packing, segment_attention

    segment_attention.register()
    model = load(tiny_model_path, segment_attention.NAME)
    seen = capture_base_model_kwargs(model)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(segment_attention.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(a[0].shape[2]) or sdpa(*a, **k))
    built = []
    real = packing.shared_prefix_inputs
    monkeypatch.setattr("corewarding.workers.model.forward.shared_prefix_inputs",
                        lambda *a, **k: built.append(k.get("dense_mask", True)) or real(*a, **k))
    batch = rollouts(seed=9, rows=4, ones=0)
    settings = ForwardSettings(TEMPERATURE, layout, chunk_size=5)
    with torch.no_grad():
        got = forward_token_stats(model, batch, settings)
    assert len(seen) == 1 and seen[0].get("attention_mask") is None and seen[0]["segments"]
    segments = seen[0]["segments"]
    assert built == ([False] if layout == "shared_prefix" else [])
    assert len(calls) == model.config.num_hidden_layers * len(segments)
    assert sum(s.end - s.start for s in segments) == seen[0]["input_ids"].shape[1]  # the segments cover the sequence
    with torch.no_grad():
        reference = forward_token_stats(load(tiny_model_path, "sdpa"), batch, settings)
    assert_rel_close(got.log_probs, reference.log_probs, FORWARD_REL, "log_probs")
    assert_rel_close(got.entropy, reference.entropy, FORWARD_REL, "entropy")


def test_sdpa_segments_is_sdpa_without_segments(tiny_model_path):
    """Generation and the padded layout give no segments: the same logits as SDPA, padding mask and all."""
    from corewarding.workers.model import segment_attention

    segment_attention.register()
    batch = rollouts(seed=10, rows=4, ones=0)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
    with torch.no_grad():
        got = load(tiny_model_path, segment_attention.NAME)(**inputs).logits
        expected = load(tiny_model_path, "sdpa")(**inputs).logits
    real = batch["attention_mask"].bool()
    assert torch.equal(got[real], expected[real])
