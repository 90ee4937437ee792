"""Rollout throughput of vLLM vs transformers on the same prompts and settings, and the time of a
full-model weight push into each engine.

    python benchmarks/rollout.py                      # SmolLM2-135M-Instruct, 16 prompts x 4, 128 tokens
    python benchmarks/rollout.py --prompts 8 --n 2 --max-tokens 64 --json out.json

tokens/s counts generated tokens (up to and including the stop token) over wall time; the HF engine
keeps stepping a micro-batch until its longest row ends, vLLM stops each sequence on its own, so on
sampled runs the two also differ in wasted work. The weight push is what the trainer's worker pushes
(`workers.model.sharding.full_params`): every named parameter of the model (a tied lm_head once) as a full fp32
tensor (the master weights) on the worker's device, streamed one by one; each engine casts to its
own dtype. The first push is a warm-up and the median of `--push-repeats` is reported. Each engine
runs in this process, one after the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = [
    "What is {a} plus {b}?",
    "Write a short sentence about the number {a}.",
    "Is {a} larger than {b}? Explain briefly.",
    "What is {a} times {b}? Think step by step.",
]


def build_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """`count` short chat prompts as token ids (the tokenizer's chat template, generation prompt on)."""
    prompts = []
    for i in range(count):
        text = QUESTIONS[i % len(QUESTIONS)].format(a=3 + 7 * i, b=11 + 5 * i)
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        prompts.append(list(ids))
    return prompts


def time_generate(engine: Any, prompts: list[list[int]], settings: Any) -> dict[str, float]:
    """One warm-up call, then the timed generation of every prompt with `settings`."""
    engine.generate(prompts[:1], dataclasses.replace(settings, n=1, max_new_tokens=4))  # warm-up
    started = time.perf_counter()
    outputs = engine.generate(prompts, settings)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.token_ids) for o in outputs)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "stopped": sum(o.finish_reason == "stop" for o in outputs) / len(outputs)}


def time_push(engine: Any, state: dict[str, torch.Tensor], repeats: int) -> float:
    """Median seconds of `repeats` full weight pushes after one warm-up push."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        engine.load_weights(iter(state.items()))
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]) if repeats > 0 else times[0]


def trainer_push_state(model_path: Path, device: str) -> dict[str, torch.Tensor]:
    """The tensors the trainer's worker pushes: named parameters (tied aliases once), fp32, on `device`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    return {name: param.detach() for name, param in model.named_parameters()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M-Instruct, prepared offline)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--hf-micro-batch", type=int, default=32)
    parser.add_argument("--push-repeats", type=int, default=3)
    parser.add_argument("--engines", default="vllm,hf")
    parser.add_argument("--kv-cache-gb", type=float, default=1.0, help="vLLM KV cache on CPU")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    return parser.parse_args(argv)


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nmodel {Path(results['model']).name} on {results['device']} ({results['dtype']}), {args.prompts} prompts x "
          f"n={args.n}, <= {args.max_tokens} new tokens, T={args.temperature}; weight push = full model, fp32 on "
          f"{results['device']} ({results['push_mb']:.0f} MB)")
    header = f"{'engine':<8}{'start s':>9}{'tokens':>9}{'gen s':>9}{'tokens/s':>10}{'stopped':>9}{'push s':>9}"
    print(header)
    print("-" * len(header))
    for name, r in results["engines"].items():
        print(f"{name:<8}{r['start_s']:>9.1f}{r['tokens']:>9d}{r['seconds']:>9.1f}{r['tokens_per_s']:>10.1f}"
              f"{r['stopped']:>9.0%}{r['push_s']:>9.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and return the results."""
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from corewarding.model_zoo import prepare_smollm2
    from corewarding.workers.rollout import EngineSettings, make_engine, resolve_dtype
    from corewarding.workers.rollout.base import SamplingSettings

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    model_path = Path(args.model) if args.model else prepare_smollm2()
    dtype = resolve_dtype(args.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = build_prompts(tokenizer, args.prompts)
    settings = SamplingSettings(n=args.n, temperature=args.temperature, max_new_tokens=args.max_tokens, seed=0)
    state = trainer_push_state(model_path, device)
    results: dict = {
        "model": str(model_path), "device": device, "dtype": str(dtype).removeprefix("torch."),
        "prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens, "temperature": args.temperature,
        "push_mb": sum(t.numel() * t.element_size() for t in state.values()) / 2**20, "engines": {},
    }

    os.environ["COREWARDING_VLLM_KV_CACHE_GB"] = str(args.kv_cache_gb)  # vLLM's KV cache on CPU
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        started = time.perf_counter()
        engine = make_engine(EngineSettings(name, max_model_len=1024, dtype=results["dtype"],
                                            hf_micro_batch_size=args.hf_micro_batch, gpu_memory_utilization=0.5),
                             str(model_path), tokenizer, device)
        start_s = time.perf_counter() - started
        gen = time_generate(engine, prompts, settings)
        push_s = time_push(engine, state, args.push_repeats)
        results["engines"][name] = {"start_s": start_s, **gen, "push_s": push_s}
        del engine
        print(f"[{name}] done: {gen['tokens_per_s']:.1f} tokens/s, push {push_s:.2f} s", file=sys.stderr, flush=True)

    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
