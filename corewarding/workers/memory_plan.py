"""The start-up memory check of a GPU run: one GPU's memory, estimated before any model loads, in
the three phases of a step, and a refusal naming the keys to change when one does not fit.

- **rollout**: the actor's float32 shards and AdamW moments (from step 2 on), the reference's float32
  shards, vLLM's budget (`gpu_memory_utilization` x the card's *total* memory: vLLM's own weights and
  KV cache), the weight push's transient (the largest tensor, gathered in the engine's dtype, and its
  shard's cast) and the CUDA / NCCL contexts;
- **log-prob**: the old and reference log-probs, one no-grad micro-batch at a time: the shards and
  moments, the reference, the unsharded compute-dtype parameters FSDP computes with, the larger
  log-prob micro-batch's working memory (`rollout.` / `ref.log_prob_micro_batch_size_per_gpu`), the
  contexts, and vLLM's budget unless `free_cache_engine` sleeps it (the engine sleeps after rollouts);
- **update**: the actor's shards, gradients and moments, the reference, the unsharded compute-dtype
  parameters FSDP holds while computing (the root module and two decoder layers), the update
  micro-batch's working memory, FSDP's gradients waiting for their reduce-scatter, the contexts, and
  vLLM's budget unless `free_cache_engine` sleeps it.

Offloading (`fsdp_config.param_offload` / `optimizer_offload`) moves the shards and moments off the
GPU. Both micro-batches' working memory follows `benchmarks/memory.py`'s model (the update with
gradient checkpointing: each layer keeps its input; one layer's recomputation or the output head's
gradient; the logits chunk. The log-prob pass: one layer's transients, or a logits chunk);
`tests/test_memory_plan.py` holds them against that benchmark's fake-tensor accounting. The
reduce-scatter term is FSDP2's, which that accounting cannot see (it frees every gradient at once):
the output head's compute-dtype gradient stays until the root module's reduce-scatter at the end of
the backward, and a layer's gradients sit beside their float32 copy (`reduce_dtype`) while reduced;
it is what they add to the micro-batch's peak (nothing where the head's gradient is the peak), read
from torch's FSDP2 source, not measured on a GPU. The plan does not see allocator fragmentation or
kernel workspaces: the check refuses above `HEADROOM` of the card.

When vLLM's share alone keeps a run from fitting (the release's Co-rewarding-I script asks for 0.8,
which an 80 GB card cannot hold beside the FSDP state at Qwen3-8B), `fit_rollout_share` lowers it to
the largest multiple of 0.05 that fits, if that still leaves vLLM its weights and a tenth of the card
for the KV cache, and says so: the run uses that share instead of being refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from corewarding.rollout_engines import engine_spec

GIB = 2**30
CONTEXT_GB = 1.5  # CUDA context, cuBLAS workspace, NCCL buffers per process: about this on Hopper
HEADROOM = 0.95  # the share of the card an estimate may fill (fragmentation, kernel workspaces)
# Per token, a decoder layer's forward keeps ~(16 h + 4 i) compute-dtype values for its backward and
# the root (embedding output, final norm, the selected hidden states) ~4 h; the output head's weight
# gradient costs ~10 bytes per weight while the chunks accumulate it (a float32 accumulator, each
# chunk's float32 product, the compute-dtype gradient); beside it, a chunk's two float32
# [tokens, vocabulary] tensors (log p and p, recomputed in the backward). Fitted to benchmarks/memory.py's
# fake-tensor accounting at Qwen3-8B's shapes (16.0 GB here, 15.8 GB there), at a 1,024-wide model
# (0.41 / 0.36) and a 2,048-wide one (1.20 / 1.07): never below it.
LAYER_VALUES = (16, 4)
ROOT_VALUES = 4
HEAD_GRADIENT_BYTES = 10
# A no-grad forward frees a layer's tensors when the layer returns, so its peak is one layer's
# transients, ~(4 h + 3 i) compute-dtype values per token (input, residual, output; the MLP's gate,
# up and their product) beside the padded rows' boolean [rows, 1, L, L] attention mask (L bytes per
# token), or after the decoder the final and the selected hidden states beside a chunk's three
# float32 [tokens, vocabulary] tensors. Fitted to benchmarks/memory.py --log-prob-rows at Qwen3-8B's
# shapes (16 x 3,584 tokens: 5.88 GB here, 5.91 GB there; 8 rows with 2,048-token chunks: 3.92 / 3.82)
# and at 16 x 3,584 tokens of 1,024- and 2,048-wide models; tests/test_memory_plan.py checks a
# configuration it was not fitted to.
LOG_PROB_LAYER_VALUES = (4, 3)
LOG_PROB_CHUNK_TENSORS = 3
REDUCE_BYTES = 4  # FSDP's reduce_dtype (float32, workers/model/sharding.py)


@dataclass(frozen=True)
class ModelShape:
    total: int  # parameters
    root: int  # embeddings, output head, final norm (FSDP's root unit)
    layer: int  # one decoder layer
    largest: int  # the largest single tensor (the push sends one at a time)
    layers: int
    hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def from_hf_config(cls, config: Any) -> "ModelShape":
        """The shape of an HF causal LM from its config, counted on the meta device (no memory)."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        layers = model.model.layers
        total = sum(p.numel() for p in model.parameters())
        layer = sum(p.numel() for p in layers[0].parameters())
        return cls(total=total, root=total - layer * len(layers), layer=layer,
                   largest=max(p.numel() for p in model.parameters()), layers=len(layers), hidden=config.hidden_size,
                   intermediate=getattr(config, "intermediate_size", 4 * config.hidden_size), vocab=config.vocab_size)


@dataclass(frozen=True)
class Settings:
    world_size: int
    total_gb: float  # the card's memory
    vllm_share: float  # rollout.gpu_memory_utilization (0: the engine takes no share of the card)
    sleeps: bool  # rollout.free_cache_engine, on an engine whose sleep frees its share
    actor_offload: bool
    ref_offload: bool
    micro_tokens: int  # tokens of one update micro-batch
    log_prob_tokens: int  # tokens of the larger log-prob micro-batch (actor's or reference's)
    row_length: int  # a padded row's tokens (data.max_prompt_length + max_response_length)
    chunk: int  # model.logits_chunk_size
    checkpointing: bool
    compute_bytes: int = 2  # bf16
    rollout_tp: int = 1  # the engine's tensor parallel size (its weights are split that many ways)
    reshard: bool = True  # actor.fsdp_config.reshard_after_forward: False keeps every layer gathered
    # the keys that set the larger log-prob micro-batch (both when the two are equal)
    log_prob_keys: tuple[str, ...] = ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                                      "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu")


def settings_of(config: Any, world_size: int, total_gb: float) -> Settings:
    """The plan's settings of a run's typed config (`corewarding.config.Config`) on `world_size`
    cards of `total_gb`. The rollout count, views and teacher rollouts change no term: vLLM's share
    is fixed and the update goes micro-batch by micro-batch."""
    arr, data = config.actor_rollout_ref, config.data
    actor, rollout = arr.actor, arr.rollout
    row = data.max_prompt_length + data.max_response_length
    tokens = actor.ppo_max_token_len_per_gpu if actor.use_dynamic_bsz else actor.ppo_micro_batch_size_per_gpu * row
    log_prob = {}  # the key that sets each log-prob micro-batch (old, reference) -> its tokens
    for section in (rollout, arr.ref):
        if section.log_prob_use_dynamic_bsz:
            log_prob[section.key("log_prob_max_token_len_per_gpu")] = section.log_prob_max_token_len_per_gpu
        else:
            log_prob[section.key("log_prob_micro_batch_size_per_gpu")] = section.log_prob_micro_batch_size_per_gpu * row
    log_prob_tokens = max(log_prob.values())
    engine = engine_spec(rollout.name)
    return Settings(
        world_size=world_size, total_gb=total_gb, vllm_share=rollout.gpu_memory_utilization if engine.memory_share else 0.0,
        sleeps=rollout.free_cache_engine and engine.sleeps, actor_offload=actor.fsdp_config.param_offload or actor.fsdp_config.optimizer_offload,
        ref_offload=arr.ref.fsdp_config.param_offload, micro_tokens=tokens, log_prob_tokens=log_prob_tokens,
        log_prob_keys=tuple(key for key, value in log_prob.items() if value == log_prob_tokens),
        row_length=row, chunk=arr.model.logits_chunk_size,
        checkpointing=arr.model.enable_gradient_checkpointing, rollout_tp=rollout.tensor_model_parallel_size,
        reshard=actor.fsdp_config.reshard_after_forward,
    )


def _update_peaks(shape: ModelShape, s: Settings) -> tuple[float, float, float]:
    """An update micro-batch's bytes beyond the weights: what the forward keeps with the logits
    chunk (with gradient checkpointing each layer's input, without it all a layer needs), one
    layer's recomputation in the backward, and the output head's weight gradient."""
    t, h = s.micro_tokens, shape.hidden
    layer = LAYER_VALUES[0] * h + LAYER_VALUES[1] * shape.intermediate
    kept = t * (shape.layers * (h if s.checkpointing else layer) + ROOT_VALUES * h) * s.compute_bytes
    logits = 2 * min(s.chunk, t) * shape.vocab * 4  # a float32 chunk's log p and p (algos.logits.grad_chunk)
    recompute = t * layer * s.compute_bytes if s.checkpointing else 0
    return kept + logits, recompute, HEAD_GRADIENT_BYTES * shape.vocab * h


def working_gb(shape: ModelShape, s: Settings) -> float:
    """One update micro-batch's memory beyond the weights, as the fake-tensor benchmark counts it:
    what the forward keeps, then the larger of the backward's two peaks (a layer's recomputation or
    the output head's weight gradient)."""
    kept, recompute, head_gradient = _update_peaks(shape, s)
    return (kept + max(recompute, head_gradient)) / GIB


def log_prob_gb(shape: ModelShape, s: Settings) -> float:
    """One no-grad log-prob micro-batch's peak beyond the weights: a layer's transients (with the
    padded rows' mask) or, after the decoder, the hidden states beside a logits chunk."""
    t, h = s.log_prob_tokens, shape.hidden
    layer = LOG_PROB_LAYER_VALUES[0] * h + LOG_PROB_LAYER_VALUES[1] * shape.intermediate
    decoder = t * layer * s.compute_bytes + t * s.row_length
    head = 2 * t * h * s.compute_bytes + LOG_PROB_CHUNK_TENSORS * min(s.chunk, t) * shape.vocab * 4
    return max(decoder, head) / GIB


def reduce_scatter_gb(shape: ModelShape, s: Settings) -> float:
    """What FSDP's gradients waiting for their reduce-scatter add to `working_gb`'s peak: through the
    backward the output head's compute-dtype gradient (the root module reduces last) and one layer's
    gradients beside their `reduce_dtype` copy, beside a layer's recomputation (the head-gradient
    peak already counts the head's); at the end the root's gradients and their copy, alone."""
    kept, recompute, head_gradient = _update_peaks(shape, s)
    waiting = shape.vocab * shape.hidden * s.compute_bytes + shape.layer * (s.compute_bytes + REDUCE_BYTES)
    root_reduce = shape.root * (s.compute_bytes + REDUCE_BYTES)
    return max(kept + max(recompute + waiting, head_gradient), root_reduce) / GIB - working_gb(shape, s)


def phases_gb(shape: ModelShape, s: Settings) -> dict[str, dict[str, float]]:
    """Per phase, each part's GB on one GPU."""
    per_gpu = shape.total / s.world_size / GIB
    actor_shards = 0.0 if s.actor_offload else 4 * per_gpu
    moments = 0.0 if s.actor_offload else 8 * per_gpu
    gradients = 0.0 if s.actor_offload else 4 * per_gpu
    ref = 0.0 if s.ref_offload else 4 * per_gpu
    vllm = s.vllm_share * s.total_gb
    push = 2 * shape.largest * s.compute_bytes / GIB
    # FSDP computes with the root and two layers gathered (one prefetched); without resharding after
    # the forward every layer stays gathered until its backward
    unsharded = (shape.root + (2 if s.reshard else shape.layers) * shape.layer) * s.compute_bytes / GIB
    rollout = {"actor": actor_shards + moments, "reference": ref, "vLLM": vllm, "push": push, "context": CONTEXT_GB}
    # without resharding after the forward the actor stays gathered through the reference's pass
    log_prob_unsharded = unsharded + (0 if s.reshard else (shape.root + 2 * shape.layer) * s.compute_bytes / GIB)
    log_prob = {"actor": actor_shards + moments, "reference": ref, "unsharded": log_prob_unsharded,
                "micro-batch": log_prob_gb(shape, s), "context": CONTEXT_GB}
    update = {"actor": actor_shards + moments + gradients, "reference": ref, "unsharded": unsharded,
              "micro-batch": working_gb(shape, s), "reduce-scatter": reduce_scatter_gb(shape, s), "context": CONTEXT_GB}
    if not s.sleeps and s.vllm_share > 0:
        log_prob["vLLM"] = update["vLLM"] = vllm
    return {"rollout": rollout, "log-prob": log_prob, "update": update}


def describe(phases: dict[str, dict[str, float]], total_gb: float) -> str:
    """One line: every part of each phase and its sum, against the card."""
    parts = [f"{phase} " + " + ".join(f"{name} {gb:.1f}" for name, gb in items.items()) + f" = {sum(items.values()):.1f}"
             for phase, items in phases.items()]
    return f"GPU memory estimate per GPU (GB, card {total_gb:.3g}): " + "; ".join(parts)


def largest_share(phases: dict[str, dict[str, float]], total_gb: float) -> float:
    """The largest `gpu_memory_utilization` with which every phase that holds vLLM's budget fits."""
    limit = HEADROOM * total_gb
    rooms = [(limit - sum(v for k, v in parts.items() if k != "vLLM")) / total_gb
             for parts in phases.values() if "vLLM" in parts]
    return max(min(rooms), 0.0) if rooms else 0.0


def fit_rollout_share(shape: ModelShape, s: Settings) -> tuple[Settings, str | None]:
    """`s`, or `s` with vLLM's share lowered to the largest multiple of 0.05 that fits when the share is
    all that does not fit, and a note saying so (None when nothing changed). The lowered share must
    leave vLLM its weights (split over its tensor-parallel ranks) and a tenth of the card."""
    phases = phases_gb(shape, s)
    if s.vllm_share <= 0 or all(sum(parts.values()) <= HEADROOM * s.total_gb for parts in phases.values()):
        return s, None
    share = math.floor(largest_share(phases, s.total_gb) * 20 + 1e-9) / 20
    weights_gb = shape.total * s.compute_bytes / s.rollout_tp / GIB
    fitted = replace(s, vllm_share=share)
    fits = all(sum(parts.values()) <= HEADROOM * s.total_gb for parts in phases_gb(shape, fitted).values())
    if not fits or share * s.total_gb < weights_gb + 0.1 * s.total_gb:
        return s, None
    return fitted, (f"actor_rollout_ref.rollout.gpu_memory_utilization={s.vllm_share:g} does not fit this "
                    f"{s.total_gb:.3g} GB GPU beside the training state; using {share:g}, the largest share that "
                    f"fits (set it yourself to silence this, or trainer.skip_memory_check=True to keep {s.vllm_share:g})")


def check(shape: ModelShape, s: Settings) -> str:
    """The one-line estimate, or a ValueError naming the keys to change when a phase does not fit."""
    phases = phases_gb(shape, s)
    line = describe(phases, s.total_gb)
    limit = HEADROOM * s.total_gb
    over = {phase: sum(items.values()) for phase, items in phases.items() if sum(items.values()) > limit}
    if not over:
        return line
    hints = []
    if "rollout" in over and s.vllm_share > 0:
        hints.append(f"actor_rollout_ref.rollout.gpu_memory_utilization={s.vllm_share:g} -> at most "
                     f"{largest_share(phases, s.total_gb):.2f}")
    if "log-prob" in over:
        fixed = any(key.endswith("micro_batch_size_per_gpu") for key in s.log_prob_keys)
        hints.append("a smaller " + " and ".join(s.log_prob_keys)
                     + (" (or log_prob_max_token_len_per_gpu with log_prob_use_dynamic_bsz)" if fixed else ""))
    if "update" in over:
        hints.append("a smaller actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu (or ppo_max_token_len_per_gpu "
                     "with use_dynamic_bsz)")
        if not s.checkpointing:
            hints.append("actor_rollout_ref.model.enable_gradient_checkpointing=True")
        if not s.reshard:
            hints.append("actor_rollout_ref.actor.fsdp_config.reshard_after_forward=True")
    if over.keys() - {"rollout"} and not s.sleeps and s.vllm_share > 0:
        hints.append("actor_rollout_ref.rollout.free_cache_engine=True")
    if not s.actor_offload:
        hints.append("actor_rollout_ref.actor.fsdp_config.param_offload=True")
    if not s.ref_offload:
        hints.append("actor_rollout_ref.ref.fsdp_config.param_offload=True")
    hints.append("more GPUs (trainer.n_gpus_per_node / trainer.nnodes)")
    worst = max(over, key=over.get)
    raise ValueError(f"the {worst} phase needs ~{over[worst]:.1f} GB of this {s.total_gb:.3g} GB GPU (more than "
                     f"{HEADROOM:.0%}): {line}. Change: {'; '.join(hints)}. "
                     "trainer.skip_memory_check=True runs anyway")
