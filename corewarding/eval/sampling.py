"""The engine's samples of each benchmark: k responses per question, batch by batch with the seeds
of the whole benchmark's run, from one engine here or from one engine per `--num_gpus` device group,
each in a process of its own (`parallel.py`). The engine is the trainer's (`make_engine`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from corewarding.eval import harness, parallel
from corewarding.eval.benchmarks import Benchmark
from corewarding.workers.rollout import EngineSettings, RolloutEngine, SamplingSettings, make_engine

logger = logging.getLogger(__name__)

Sampled = tuple[list[list[str]], list[int], int]  # responses per question, response lengths, truncated


def engine_settings(args: argparse.Namespace, max_model_len: int) -> EngineSettings:
    """The rollout engine of --backend as the command line sets it up."""
    return EngineSettings(
        name=args.backend, max_model_len=max_model_len, dtype=None if args.dtype == "auto" else args.dtype,
        seed=args.seed, hf_micro_batch_size=args.batch_size * args.k,
        gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
    )


def start_engine(args: argparse.Namespace, model_path: Path, tokenizer: Any, max_model_len: int) -> RolloutEngine:
    """`make_engine` on the model folder, on this process's GPU when it has one."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return make_engine(engine_settings(args, max_model_len), str(model_path), tokenizer, device)


def _batches(n: int, size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def sample_benchmark(engine: Any, tokenizer: Any, bench: Benchmark, args: argparse.Namespace,
                     first: int = 0, last: int | None = None) -> Sampled:
    """k responses per question (decoded) of questions [first, last), the response lengths and
    how many hit --max_tokens. `first` is a multiple of --batch_size, so the batches (and their
    seeds) are those of the whole benchmark's run."""
    from tqdm import tqdm

    last = len(bench.prompt_ids) if last is None else last
    responses: list[list[str]] = []
    lengths: list[int] = []
    truncated = 0
    bar = tqdm(total=last - first, desc=f"{bench.name} (k={bench.k})", unit="q", file=sys.stderr)
    for start, end in ((first + s, first + e) for s, e in _batches(last - first, args.batch_size)):
        sampling = SamplingSettings(
            n=bench.k, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_tokens,
            seed=args.seed + start * bench.k,  # vLLM: question g's sample j uses seed + g * k + j
        )
        outputs = engine.generate(bench.prompt_ids[start:end], sampling)
        for q in range(end - start):
            group = outputs[q * bench.k : (q + 1) * bench.k]
            responses.append([tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in group])
            lengths.extend(len(o.token_ids) for o in group)
            truncated += sum(o.finish_reason == "length" for o in group)
        bar.update(end - start)
    bar.close()
    return responses, lengths, truncated


def sample_share(payload: tuple) -> list[Sampled]:
    """One engine process of --num_gpus: its [first, last) of each benchmark (run in a spawned process)."""
    from corewarding.data import load_tokenizer

    args, model_path, max_model_len, jobs = payload
    tokenizer = load_tokenizer(str(model_path))
    engine = start_engine(args, model_path, tokenizer, max_model_len)
    return [sample_benchmark(engine, tokenizer, bench, args, first, last) for bench, first, last in jobs]


def sample_all(args: argparse.Namespace, model_path: Path, tokenizer: Any, benchmarks: list[Benchmark],
               max_model_len: int) -> Iterable[Sampled]:
    """Each benchmark's samples in question order: from one engine here, or from one engine per
    --num_gpus device group, each in its own process with a contiguous share of whole batches.
    With --lm_eval the one engine also gets a process, so that its GPU memory is free for the harness's."""
    groups = parallel.device_groups(args.num_gpus, args.tensor_parallel_size)
    if len(groups) == 1 and not harness.tasks_of(args):
        started = time.time()
        engine = start_engine(args, model_path, tokenizer, max_model_len)
        logger.info("engine %s ready in %.1fs", args.backend, time.time() - started)
        for bench in benchmarks:
            yield sample_benchmark(engine, tokenizer, bench, args)
        return
    shares = [parallel.contiguous_shares(len(b.prompt_ids), len(groups), args.batch_size) for b in benchmarks]
    payloads = [(args, model_path, max_model_len, [(b, *s[rank]) for b, s in zip(benchmarks, shares)]) for rank in range(len(groups))]
    logger.info("%d engines (%s) on devices %s", len(groups), args.backend, groups)
    per_rank = parallel.run_in_processes(sample_share, payloads, groups)
    for i in range(len(benchmarks)):
        parts = [rank_results[i] for rank_results in per_rank]
        yield [r for p in parts for r in p[0]], [n for p in parts for n in p[1]], sum(p[2] for p in parts)
