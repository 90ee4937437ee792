"""The policy's forward pass on one rank's rows: log-probs, entropy and self-certainty of the
response tokens, micro-batch by micro-batch.

`install_token_stats(model)` gives an HF causal LM a `token_stats` method (registered as an FSDP2
forward method, so sharded parameters are gathered around it as around `forward`): the decoder runs
on padded, packed or shared-prefix rows (`packing.py`), and only the hidden states that predict real
response tokens meet the output embedding, in chunks (`algos.token_stats`): log-probs, entropy and
self-certainty without ever holding the full [tokens, vocabulary] logits. `forward_token_stats` runs
it on one micro-batch (the update's forward, `actor.ppo_update`); `compute_token_stats` on a whole
batch without gradients (the old and the reference log-probs).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch

from corewarding.algos import TokenStats, token_stats
from corewarding.batch import Batch
from corewarding.workers.model import segment_attention
from corewarding.workers.model.packing import (
    micro_batch_groups,
    packed_inputs,
    padded_inputs,
    scatter_to_rows,
    shared_prefix_inputs,
)

FORWARD_KEYS = ("responses", "input_ids", "attention_mask", "position_ids", "response_mask")


def _token_stats_method(
    self: Any,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    target_positions: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    compiled: bool = False,
    **attention_kwargs: Any,
) -> TokenStats:
    hidden = self.base_model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
        **attention_kwargs,
    ).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, target_positions)
    return token_stats(hidden, self.get_output_embeddings().weight, targets, temperature, chunk_size, compiled)


def install_token_stats(model: torch.nn.Module) -> None:
    """Add `model.token_stats(...)` (call after `fully_shard`, so that FSDP2 wraps it)."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError(f"{type(model).__name__}: an output embedding with a bias is not supported")
    model.token_stats = types.MethodType(_token_stats_method, model)
    register_fsdp_forward_method(model, "token_stats")


LAYOUTS = ("padded", "packed", "shared_prefix")


def is_flash_attention(attn_impl: str | None) -> bool:
    """`attn_impl` names a flash-attention (transformers' own test: flash_attention_2 / 3, a hub kernel
    such as kernels-community/flash-attn2): one rule for the layout choice and the packed kwargs."""
    from transformers.utils.generic import is_flash_attention_requested

    return is_flash_attention_requested(requested_attention_implementation=attn_impl)


def uses_flash_attention(model: torch.nn.Module) -> bool:
    """The model's attention is a flash-attention."""
    config = getattr(model, "config", None)
    return config is not None and is_flash_attention(config._attn_implementation)


def uses_segment_attention(model: torch.nn.Module) -> bool:
    """The model's attention is `sdpa_segments` (packed rows kept apart without a mask)."""
    config = getattr(model, "config", None)
    return config is not None and config._attn_implementation == segment_attention.NAME


@dataclass(frozen=True)
class ForwardSettings:
    temperature: float  # rollout.temperature: the logits are divided by it, as in sampling
    layout: str  # padded | packed (model.use_remove_padding) | shared_prefix (model.share_prompt_prefix)
    chunk_size: int  # tokens per chunk of logits
    compiled: bool = False  # the head's per-chunk passes through torch.compile (actor.use_torch_compile)


def forward_token_stats(model: torch.nn.Module, rows: Batch, settings: ForwardSettings) -> TokenStats:
    """Log-probs of the responses, entropy and self-certainty, each [N, R] (0 on padding)."""
    mask = rows.tensors["response_mask"]
    ids, attention = rows.tensors["input_ids"], rows.tensors["attention_mask"]
    by_segments = uses_segment_attention(model)
    if settings.layout == "packed":
        inputs = packed_inputs(ids, attention, mask)
    elif settings.layout == "shared_prefix":
        inputs = shared_prefix_inputs(ids, attention, mask, dense_mask=not by_segments)
    elif settings.layout == "padded":
        inputs = padded_inputs(ids, attention, rows.tensors["position_ids"], mask)
    else:
        raise ValueError(f"unknown forward layout {settings.layout!r}; use one of {LAYOUTS}")
    # packed rows on flash-attention: the row boundaries, computed once here, spare transformers a
    # derivation from the position ids in every layer; sdpa_segments takes the segments instead of a
    # mask; SDPA / eager build their mask from the position ids and take no such arguments
    if uses_flash_attention(model):
        varlen = inputs.varlen_kwargs()
    else:
        segments = inputs.attention_segments() if by_segments else None
        varlen = {"segments": segments} if segments is not None else {}
    stats = model.token_stats(
        inputs.input_ids, inputs.position_ids, inputs.attention_mask, inputs.target_positions, inputs.targets,
        settings.temperature, settings.chunk_size, settings.compiled, **varlen,
    )
    return TokenStats(*(scatter_to_rows(values, mask) for values in stats))


@torch.no_grad()
def compute_token_stats(
    model: torch.nn.Module, batch: Batch, settings: ForwardSettings, micro_rows: int, max_tokens: int | None,
    world_size: int = 1,
) -> TokenStats:
    """`forward_token_stats` over micro-batches (as many on each of `world_size` ranks), results in
    the batch's row order (on the CPU)."""
    data = batch.subset(FORWARD_KEYS)
    out = [torch.zeros(data.tensors["response_mask"].shape) for _ in TokenStats._fields]
    was_training = model.training
    model.eval()
    for group in micro_batch_groups(data, micro_rows, max_tokens, world_size):
        stats = forward_token_stats(model, data.select(group), settings)
        for target, values in zip(out, stats):
            target[group] = values.float().cpu()
    model.train(was_training)
    return TokenStats(*out)
