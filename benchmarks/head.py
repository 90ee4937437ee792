"""The output head's statistics, eager against compiled (`actor_rollout_ref.actor.use_torch_compile`): one
micro-batch's log-probs, entropy and self-certainty through `token_stats`, and their backward.

    python benchmarks/head.py                        # SmolLM2-135M's head: 320 tokens x 576 -> 49,152, bfloat16, CPU
    python benchmarks/head.py --tokens 2048 --hidden 2048 --vocab 151936 --device cuda     # Qwen3-1.7B's head

Prints, per path, the best of `--repeats` timings of the forward and of the forward + backward (the
first call, which compiles, is timed apart), and the largest difference of the compiled path's values
and gradients from the eager path's, relative to each tensor's norm. Random hidden states and weights
scaled like a trained model's (logits of a few units). One thread on CPU unless `--threads`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corewarding.algos import token_stats  # noqa: E402


def head_inputs(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator(device).manual_seed(0)
    return {"hidden": torch.randn(tokens, hidden, generator=g, device=device).to(dtype),
            "weight": (torch.randn(vocab, hidden, generator=g, device=device) * 2 * hidden**-0.5).to(dtype),
            "targets": torch.randint(0, vocab, (tokens,), generator=g, device=device),
            "weights": torch.randn(tokens, generator=g, device=device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_head(inputs: dict[str, torch.Tensor], compiled: bool, backward: bool) -> dict[str, torch.Tensor]:
    """One call (and its backward, with a loss on log-probs and entropy): values and gradients."""
    hidden, weight = (inputs[k].detach().requires_grad_(backward) for k in ("hidden", "weight"))
    stats = token_stats(hidden, weight, inputs["targets"], temperature=1.0, compiled=compiled)
    out = {"log_probs": stats.log_probs, "entropy": stats.entropy, "self_certainty": stats.self_certainty}
    if backward:
        ((stats.log_probs - 0.1 * stats.entropy) * inputs["weights"]).sum().backward()
        out.update(grad_hidden=hidden.grad, grad_weight=weight.grad)
    return {k: v.detach() for k, v in out.items()}


def time_path(inputs: dict[str, torch.Tensor], compiled: bool, repeats: int) -> dict[str, Any]:
    """First call (with any compiling), best forward and best forward + backward, in seconds."""
    device = inputs["hidden"].device
    times: dict[str, Any] = {}
    for name, backward in (("first_s", True), ("forward_s", False), ("step_s", True)):
        best = float("inf")
        for _ in range(1 if name == "first_s" else repeats):
            _sync(device)
            start = time.perf_counter()
            result = run_head(inputs, compiled, backward)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        times[name] = best
    times["result"] = result
    return times


def compare(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, device: torch.device, repeats: int) -> dict[str, Any]:
    """Both paths on the same inputs: their times and the compiled path's largest relative difference."""
    inputs = head_inputs(tokens, hidden, vocab, dtype, device)
    eager, fused = (time_path(inputs, compiled, repeats) for compiled in (False, True))
    differences = {k: float((fused["result"][k].double() - v.double()).norm() / v.double().norm().clamp_min(1e-30))
                   for k, v in eager["result"].items()}
    return {"eager": {k: v for k, v in eager.items() if k != "result"},
            "compiled": {k: v for k, v in fused.items() if k != "result"},
            "max_relative_difference": max(differences.values()), "differences": differences}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=320, help="response tokens of the micro-batch")
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    result = compare(args.tokens, args.hidden, args.vocab, getattr(torch, args.dtype), device, args.repeats)
    print(f"{args.tokens} tokens x {args.hidden} -> {args.vocab}, {args.dtype}, {args.device}; best of {args.repeats} (ms)")
    print(f"{'path':<10}{'first call':>12}{'forward':>10}{'fwd + bwd':>11}")
    for path in ("eager", "compiled"):
        r = result[path]
        print(f"{path:<10}{r['first_s'] * 1e3:>12.0f}{r['forward_s'] * 1e3:>10.1f}{r['step_s'] * 1e3:>11.1f}")
    print(f"compiled vs eager, largest difference relative to the tensor's norm: {result['max_relative_difference']:.1e}")
    return result


if __name__ == "__main__":
    main()
