"""One update micro-batch's forward + backward per layout and attention, at growing response lengths:
where the update's cost in tokens comes from on CPU.

    python benchmarks/attention.py                      # SmolLM2-135M-Instruct, responses 48, 256, 1024
    python benchmarks/attention.py --responses 64 128 --cases sdpa:padded sdpa_segments:packed

A micro-batch is 8 rollouts, 4 of each of 2 prompts of 93 tokens (the replication's micro-batch), with
responses drawn between R/2 and R tokens; random token ids, the real model's weights in float32,
`forward_token_stats` as the update calls it (log-probs through the chunked head), then backward.
A case is `<attn_implementation>:<layout>` (layouts: padded, packed, shared_prefix). Prints, per case
and R, the best of `--repeats` timings and the largest log-prob difference from the first case, then
the exponent of time in tokens per case (whole rollouts: prompt + response, as the scaling benchmark
counts them).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corewarding.batch import Batch  # noqa: E402
from corewarding.workers.model import segment_attention  # noqa: E402
from corewarding.workers.model.forward import ForwardSettings, forward_token_stats, install_token_stats  # noqa: E402

ROWS, PROMPTS, PROMPT_TOKENS = 8, 2, 93


def micro_batch(response: int, vocab: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(response // 2, response + 1, (ROWS,), generator=g)
    prompts = torch.randint(3, vocab, (PROMPTS, PROMPT_TOKENS), generator=g).repeat_interleave(ROWS // PROMPTS, 0)
    mask = (torch.arange(response)[None] < lengths[:, None]).long()
    responses = torch.randint(3, vocab, (ROWS, response), generator=g) * mask + 2 * (1 - mask)
    attention = torch.cat([torch.ones(ROWS, PROMPT_TOKENS, dtype=torch.long), mask], 1)
    return Batch({"input_ids": torch.cat([prompts, responses], 1), "attention_mask": attention,
                  "position_ids": (attention.cumsum(1) - 1).clamp(min=0), "response_mask": mask, "responses": responses})


def time_case(model: torch.nn.Module, batch: Batch, layout: str, repeats: int) -> tuple[float, torch.Tensor]:
    settings = ForwardSettings(1.0, layout, 1024)
    best, log_probs = math.inf, None
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        stats = forward_token_stats(model, batch, settings)
        stats.log_probs.sum().backward()
        best = min(best, time.perf_counter() - start)
        log_probs = stats.log_probs.detach()
    return best, log_probs


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--responses", nargs="+", type=int, default=[48, 256, 1024])
    p.add_argument("--cases", nargs="+", default=["sdpa:shared_prefix", "sdpa_segments:shared_prefix",
                                                  "sdpa_segments:packed", "sdpa:padded"])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM

    if args.model is None:
        from corewarding.model_zoo import prepare_smollm2

        args.model = str(prepare_smollm2())
    segment_attention.register()
    models = {}
    rows = []
    for response in args.responses:
        reference = None
        for case in args.cases:
            attn, layout = case.split(":")
            if attn not in models:
                models[attn] = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation=attn)
                install_token_stats(models[attn])
            batch = micro_batch(response, models[attn].config.vocab_size)
            seconds, log_probs = time_case(models[attn], batch, layout, args.repeats)
            reference = log_probs if reference is None else reference
            tokens = int(batch["attention_mask"].sum())
            rows.append({"case": case, "response": response, "tokens": tokens, "seconds": seconds})
            print(f"R={response:5d} tokens {tokens:6d} {case:28s} {seconds:7.2f} s   max |d log-prob| vs "
                  f"{args.cases[0]}: {float((log_probs - reference).abs().max()):.1e}", flush=True)
    print("\nexponent of time in whole-rollout tokens, first to last R:")
    for case in args.cases:
        points = [r for r in rows if r["case"] == case]
        if len(points) > 1:
            first, last = points[0], points[-1]
            exponent = math.log(last["seconds"] / first["seconds"]) / math.log(last["tokens"] / first["tokens"])
            print(f"  {case:28s} {exponent:.2f}")
    return rows


if __name__ == "__main__":
    main()
