"""Peak memory of one policy-update micro-batch at the paper's scale (Qwen3-8B, 512 + 3,072 tokens,
micro-batch 8, vocabulary 151,936): padded vs packed rows, full logits vs the chunked output head;
and of one no-grad log-prob micro-batch (the old and reference log-probs, `--log-prob-rows`, 16 as
the presets' `log_prob_micro_batch_size_per_gpu`).

    make bench-memory                                        # Qwen3-8B's shapes, all 36 layers
    python benchmarks/memory.py --lengths 512 3072 --check --json out.json

How it measures. Computing one such micro-batch takes about 100 TFLOP, hours on this machine's two
cores, so the update's real code (`corewarding.workers.model.forward`: `packed_inputs` / `padded_inputs`,
the model's `token_stats` forward method, the loss, backward) runs on fake tensors (torch's
FakeTensorMode: every op produces outputs of the right shape, dtype and device, without data), and
torch's `MemTracker` records the bytes of every tensor from its allocation until its release. This
counts exactly what the autograd graph keeps and what each op allocates; it does not see the CUDA
allocator's fragmentation or kernel workspaces (flash-attention, cuBLAS), so a GPU needs some
headroom above these numbers. `--check` runs a small configuration both on real tensors and on fake
ones and prints the two peaks side by side (they agree to the byte or close to it).

"full logits" is the plain head: lm_head over the response positions, then float32 log-softmax,
log-probs and entropy, all kept for backward (what this trainer did before `token_stats`, and what
verl does without fused kernels). "chunked" is `token_stats` (chunks of `--chunk` tokens, logits
recomputed in backward). The model is built unsharded in bfloat16 (FSDP2's compute dtype) with
gradient checkpointing on (the release's setting; `--no-checkpointing` turns it off), once with one
decoder layer and once with two; what the second layer adds is one layer's share, and the peak of
the full depth (`--layers`, 36) is extrapolated from it. Each layer keeps only its input for backward
under checkpointing, so that share is the same for every layer.

The last columns estimate one GPU's peak when the model trains with FSDP2 over 8 GPUs: float32
master parameters, gradients and Adam moments sharded 8 ways (16 bytes x parameters / 8), plus the
unsharded bfloat16 parameters FSDP holds while computing (the root module: embeddings and lm_head;
and two decoder layers, the current one and the prefetched one), plus everything else measured here:
activations and temporaries (in the fake run each gradient is freed as soon as it is complete; FSDP
keeps a module's gradients until its reduce-scatter, which the trainer's start-up check,
`corewarding/workers/memory_plan.py`, adds with the CUDA contexts: docs/gpu.md's update phase).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30
QWEN3_8B = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)


@dataclass(frozen=True)
class Case:
    response_length: int
    packed: bool
    chunked: bool

    @property
    def name(self) -> str:
        return f"{'packed' if self.packed else 'padded'}, {'chunked' if self.chunked else 'full logits'}"


def rollout_rows(rows: int, prompt_width: int, response_width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded prompts of 1/4..1 of `prompt_width` and right-padded responses of 1/4..1 of
    `response_width` tokens (one row of each at full width), like a batch of sampled rollouts."""
    g = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(prompt_width // 4, prompt_width + 1, (rows,), generator=g)
    response_len = torch.randint(response_width // 4, response_width + 1, (rows,), generator=g)
    prompt_len[0], response_len[0] = prompt_width, response_width
    pmask = (torch.arange(prompt_width)[None] >= prompt_width - prompt_len[:, None]).long()
    rmask = (torch.arange(response_width)[None] < response_len[:, None]).long()
    ids = torch.randint(10, 1000, (rows, prompt_width + response_width), generator=g)
    attention = torch.cat([pmask, rmask], dim=1)
    return {"input_ids": ids * attention, "attention_mask": attention, "response_mask": rmask,
            "position_ids": (attention.cumsum(1) - 1).clamp(min=0)}


def build_model(config: dict[str, Any], checkpointing: bool) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from corewarding.workers.model.forward import install_token_stats

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen3ForCausalLM(Qwen3Config(attn_implementation="sdpa", **config))
    finally:
        torch.set_default_dtype(previous)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    install_token_stats(model)
    return model


def model_inputs(batch: dict[str, torch.Tensor], case: Case) -> tuple[Any, torch.Tensor]:
    """The update's inputs for `case` (real tensors: built before any fake mode) and, for the padded
    full-logits head, the flat index of each real response token in the [B * (R + 1)] logit rows."""
    from corewarding.workers.model.packing import packed_inputs, padded_inputs

    mask = batch["response_mask"]
    if case.packed:
        inputs = packed_inputs(batch["input_ids"], batch["attention_mask"], mask)
    else:
        inputs = padded_inputs(batch["input_ids"], batch["attention_mask"], batch["position_ids"], mask)
    rows, cols = mask.bool().nonzero(as_tuple=True)
    return inputs, rows * (mask.shape[1] + 1) + cols


def update_micro_batch(model: torch.nn.Module, inputs: Any, logit_rows: torch.Tensor, case: Case, chunk: int, to) -> None:
    """Forward, a GRPO-like loss on log-probs and entropy, backward: one micro-batch of the update."""
    ids, positions, targets, where = map(to, (inputs.input_ids, inputs.position_ids, inputs.targets, inputs.target_positions))
    attention = None if inputs.attention_mask is None else to(inputs.attention_mask)
    if case.chunked:
        stats = model.token_stats(ids, positions, attention, where, targets, 1.0, chunk)
        log_probs, entropy = stats.log_probs, stats.entropy
    else:
        if case.packed:
            logits = model(input_ids=ids, position_ids=positions, logits_to_keep=where).logits[0]
        else:  # [B, R + 1, V]: logits at every response column (padding included), then the real ones
            keep = case.response_length + 1
            logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=keep).logits
            logits = logits.reshape(-1, logits.shape[-1]).index_select(0, to(logit_rows))
        log_softmax = torch.log_softmax(logits.float(), dim=-1)
        log_probs = log_softmax.gather(-1, targets[:, None]).squeeze(-1)
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    (-(log_probs.mean()) - 0.001 * entropy.mean()).backward()


def log_prob_micro_batch(model: torch.nn.Module, inputs: Any, chunk: int, to) -> None:
    """The old / reference log-prob pass on one micro-batch: `token_stats` in eval mode, no gradients."""
    ids, positions, targets, where = map(to, (inputs.input_ids, inputs.position_ids, inputs.targets, inputs.target_positions))
    attention = None if inputs.attention_mask is None else to(inputs.attention_mask)
    model.eval()
    with torch.no_grad():
        model.token_stats(ids, positions, attention, where, targets, 1.0, chunk)


def micro_batch(model: torch.nn.Module, inputs: Any, logit_rows: torch.Tensor, case: Case, chunk: int, to,
                log_prob: bool) -> None:
    """One micro-batch of the update, or with `log_prob` of the no-grad log-prob pass."""
    if log_prob:
        log_prob_micro_batch(model, inputs, chunk, to)
    else:
        update_micro_batch(model, inputs, logit_rows, case, chunk, to)


def tracked_peak(model_config: dict[str, Any], case: Case, rows: int, prompt_width: int, chunk: int,
                 checkpointing: bool, fake: bool, log_prob: bool = False) -> dict[str, float]:
    """Peak GB per category (parameters, gradients, activations, temporaries) of one micro-batch of
    the update, or with `log_prob` of the no-grad log-prob pass (`case` chunked)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    inputs, logit_rows = model_inputs(rollout_rows(rows, prompt_width, case.response_length), case)
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    if mode is not None:
        mode.__enter__()
    try:
        torch.manual_seed(0)
        model = build_model(model_config, checkpointing)
        for param in model.parameters():  # FSDP reduce-scatters each gradient and frees the full one
            param.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        tracker = MemTracker()
        tracker.track_external(model)
        to = mode.from_tensor if mode is not None else (lambda t: t)
        with tracker:
            micro_batch(model, inputs, logit_rows, case, chunk, to, log_prob)
        snapshot = tracker.get_tracker_snapshot("peak")
    finally:
        if mode is not None:
            mode.__exit__(None, None, None)
    (per_category,) = snapshot.values()
    return {str(getattr(k, "value", k)): v / GIB for k, v in per_category.items()}


def parameter_count(config: dict[str, Any]) -> dict[str, float]:
    """Parameters of the whole model, of its root module (embeddings, lm_head, final norm) and of one layer."""
    h, v, i = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + 2 * config["head_dim"]
    root = v * h * (1 if config["tie_word_embeddings"] else 2) + h
    return {"total": root + layer * config["num_hidden_layers"], "root": root, "layer": layer}


def fsdp_per_gpu_gb(config: dict[str, Any], measured: dict[str, float], gpus: int) -> float:
    """One GPU's estimated peak under FSDP2 over `gpus` GPUs (see the module docstring)."""
    params = parameter_count(config)
    sharded_states = 16 * params["total"] / gpus  # fp32 master + fp32 grad + 2 fp32 Adam moments
    unsharded = 2 * (params["root"] + 2 * params["layer"])  # bf16 parameters being computed with
    return (sharded_states + unsharded) / GIB + measured["Total"] - measured["Parameter"]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every case with 1 and with 2 decoder layers; a layer's share (the difference) extrapolates
    the activations to `args.layers` layers: with checkpointing, each layer keeps its input."""
    results = []
    for length in args.lengths:
        for packed in (False, True):
            for chunked in (False, True):
                case = Case(length, packed, chunked)
                started = time.perf_counter()
                one, two = (tracked_peak(dict(QWEN3_8B, num_hidden_layers=layers), case, args.rows, args.prompt_length,
                                         args.chunk, args.checkpointing, fake=True) for layers in (1, 2))
                extra_layers = args.layers - 1
                peak = {key: one[key] + extra_layers * (two[key] - one[key]) for key in one}
                results.append({"response_length": length, "layout": case.name, "peak": peak,
                                "per_layer_activation_gb": two["Activation"] - one["Activation"],
                                "per_gpu_gb": fsdp_per_gpu_gb(dict(QWEN3_8B, num_hidden_layers=args.layers), peak, args.gpus),
                                "seconds": time.perf_counter() - started})
    return results


def run_log_prob(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The no-grad log-prob pass in the padded layout with the chunked head (what the trainer runs on
    a GPU without flash-attention; packed rows on flash-attention hold no mask). A layer's tensors
    are freed when it returns, so two layers stand for any depth (measured: a third adds nothing)."""
    results = []
    for length in args.lengths:
        case = Case(length, packed=False, chunked=True)
        peak = tracked_peak(dict(QWEN3_8B, num_hidden_layers=2), case, args.log_prob_rows, args.prompt_length,
                            args.chunk, args.checkpointing, fake=True, log_prob=True)
        results.append({"response_length": length, "rows": args.log_prob_rows, "work_gb": peak["Total"] - peak["Parameter"]})
    return results


def print_table(results: list[dict[str, Any]], results_log_prob: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nQwen3-8B shapes, {args.layers} decoder layers (1 and 2 built, a layer's share extrapolated), micro-batch {args.rows} x ({args.prompt_length} + R) tokens, "
          f"bf16, gradient checkpointing {'on' if args.checkpointing else 'off'}, chunk {args.chunk}\n")
    header = (f"{'R':>5}  {'layout':<22} {'act GB':>7} {'temp GB':>8} {'grad GB':>8} {'work GB':>8}   "
              f"{'FSDP x' + str(args.gpus) + ' GB per GPU':>20} {'fits 80 GB':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        p = r["peak"]
        print(f"{r['response_length']:>5}  {r['layout']:<22} {p['Activation']:7.2f} {p['Temp']:8.2f} {p['Gradient']:8.2f} "
              f"{p['Total'] - p['Parameter']:8.2f}   "
              f"{r['per_gpu_gb']:20.1f} {'yes' if r['per_gpu_gb'] <= 80 else 'NO':>10}")
    print("\nat the peak: act = kept for backward, temp = transient, grad = full gradients not yet reduced, "
          "work = all but the weights")
    print(f"\nlog-prob pass (no grad, padded, chunked), micro-batch {args.log_prob_rows} x ({args.prompt_length} + R) tokens:")
    for r in results_log_prob:
        print(f"{r['response_length']:>5}  work {r['work_gb']:.2f} GB")


def check(args: argparse.Namespace) -> dict[str, float]:
    """The same small configuration on real tensors and on fake ones: the accounting must agree."""
    small = dict(QWEN3_8B, hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64)
    case = Case(128, packed=True, chunked=True)
    real = tracked_peak(small, case, 4, 64, 64, args.checkpointing, fake=False)["Total"]
    fake = tracked_peak(small, case, 4, 64, 64, args.checkpointing, fake=True)["Total"]
    print(f"check (hidden 256, 1 layer, real vocabulary, 4 x (64 + 128) tokens): real {real:.4f} GB, fake {fake:.4f} GB")
    return {"real_gb": real, "fake_gb": fake}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=36, help="decoder layers extrapolated to (36: Qwen3-8B)")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 3072], help="response lengths R")
    p.add_argument("--prompt-length", type=int, default=512)
    p.add_argument("--rows", type=int, default=8, help="rollouts per micro-batch")
    p.add_argument("--chunk", type=int, default=1024, help="tokens per logits chunk (model.logits_chunk_size)")
    p.add_argument("--log-prob-rows", type=int, default=16, help="rollouts per log-prob micro-batch")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--check", action="store_true", help="also compare real and fake accounting at a small size")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    summary: dict[str, Any] = {}
    if args.check:
        summary["check"] = check(args)
    summary["results"] = run(args)
    summary["log_prob"] = run_log_prob(args)
    print_table(summary["results"], summary["log_prob"], args)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
