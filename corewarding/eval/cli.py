"""The command line of `python -m corewarding.eval` and the run: check the arguments, sample and grade
the math benchmarks, run the lm-evaluation-harness tasks, write summary.json (the package's
docstring describes the metrics and the files)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import corewarding.eval
from corewarding import rewards
from corewarding.eval import EvalError, harness, parallel
from corewarding.eval.benchmarks import BENCHMARK_FILES, DEFAULT_BENCHMARKS, load_benchmarks, sample_records
from corewarding.eval.sampling import sample_all
from corewarding.eval.scoring import score_samples
from corewarding.rollout_engines import ENGINE_NAMES, engine_spec, engines_that, missing_package

# Questions per generate call unless --batch_size says otherwise: an engine that schedules its own
# batches (continuous batching) takes many at once; one padded generate call takes few.
BATCH_SIZE = {True: 256, False: 8}


def default_batch_size(backend: str) -> int:
    return BATCH_SIZE[engine_spec(backend).continuous_batching]


def check_arguments(args: argparse.Namespace) -> bool:
    """Fill the defaults that depend on other arguments and refuse what cannot run (before any
    model loads); True when there are math benchmarks to run."""
    if args.k < 1:
        raise EvalError("--k must be at least 1")
    engine = engine_spec(args.backend)
    if args.batch_size is None:
        args.batch_size = default_batch_size(args.backend)
    if args.num_gpus is None:
        args.num_gpus = args.tensor_parallel_size
    if args.tensor_parallel_size > 1 and not engine.tensor_parallel:
        raise EvalError(f"--tensor_parallel_size > 1 needs --backend {' or '.join(engines_that('tensor_parallel'))}")
    run_math = args.benchmarks.strip().lower() not in ("", "none")
    if not run_math and not harness.tasks_of(args):
        raise EvalError("--benchmarks none and no --lm_eval tasks: nothing to evaluate")
    problem = missing_package(engine) if run_math else None
    if problem is not None:
        raise EvalError(f"--backend {args.backend}: {problem}")
    try:
        parallel.device_groups(args.num_gpus, args.tensor_parallel_size)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    return run_math


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from corewarding.export import resolve_model_path

    run_math = check_arguments(args)
    model_path = resolve_model_path(args.model)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    summary: dict[str, Any] = {
        "model": str(args.model), "model_path": str(model_path), "backend": args.backend, "k": args.k,
        "temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens, "seed": args.seed,
        "gt_scorer": args.gt_scorer, "limit": args.limit, "num_gpus": args.num_gpus,
        "tensor_parallel_size": args.tensor_parallel_size, "benchmarks": {},
    }
    if run_math:
        evaluate_math(args, model_path, output_dir, summary)
    if harness.tasks_of(args):
        evaluate_harness(args, model_path, output_dir, summary)
    summary["seconds"] = time.time() - started
    summary = harness.merged_summary(summary, output_dir / "summary.json", run_math)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {output_dir / 'summary.json'}" + (f" and {output_dir / 'samples.jsonl'}" if run_math else ""))
    return summary


def evaluate_math(args: argparse.Namespace, model_path: Path, output_dir: Path, summary: dict[str, Any]) -> None:
    """The math --benchmarks: samples.jsonl, and each benchmark's metrics into summary["benchmarks"]."""
    from corewarding.data import load_tokenizer

    tokenizer = load_tokenizer(str(model_path))
    benchmarks = load_benchmarks(args, tokenizer)
    longest = max(len(p) for b in benchmarks for p in b.prompt_ids)
    max_model_len = args.max_model_len or longest + args.max_tokens
    if longest + args.max_tokens > max_model_len:
        raise EvalError(f"--max_model_len {max_model_len} < longest prompt {longest} + --max_tokens {args.max_tokens}")
    samples_path = output_dir / "samples.jsonl"
    with samples_path.open("w") as samples_file:
        t0 = time.time()
        for bench, (responses, lengths, truncated) in zip(benchmarks, sample_all(args, model_path, tokenizer, benchmarks, max_model_len)):
            metrics, graded, scores = score_samples(responses, bench.ground_truths, args.gt_scorer)
            metrics.update({"file": str(bench.path), "mean_response_tokens": sum(lengths) / len(lengths),
                            "truncated": truncated / len(lengths), "seconds": time.time() - t0})
            summary["benchmarks"][bench.name] = metrics
            for record in sample_records(bench, graded, scores):
                samples_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            samples_file.flush()
            t0 = time.time()
    print(format_table(summary))


def evaluate_harness(args: argparse.Namespace, model_path: Path, output_dir: Path, summary: dict[str, Any]) -> None:
    """The --lm_eval tasks, in a process of their own (the harness builds its own engine)."""
    try:
        payload = harness.harness_payload(args, model_path)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    devices = parallel.visible_devices()[: args.num_gpus]
    try:
        output = parallel.run_in_processes(harness.run_harness, [payload], [devices])[0]
    except parallel.ProcessFailed as exc:
        raise EvalError(f"lm-evaluation-harness failed: {exc}") from None
    summary["lm_eval"] = harness.write_outputs(output, output_dir)
    summary["lm_eval_settings"] = {k: payload[k] for k in ("model", "tasks", "num_fewshot", "limit", "apply_chat_template")}
    print(harness.format_table(summary["lm_eval"]))


def format_table(summary: dict[str, Any]) -> str:
    """Text table of a summary, accuracies in %; avg/maj/pass@k use each benchmark's own k."""
    columns = ["pass@1", "avg@k", "maj@k", "pass@k", "answer_present"]
    header = ["benchmark", "n", "k"] + columns
    rows = []
    for name, m in summary["benchmarks"].items():
        k = m["k"]
        cells = [f"{100 * m[c.replace('@k', f'@{k}')]:.2f}" for c in columns]
        rows.append([name, str(m["n_questions"]), str(k)] + cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    mapping = "\n".join(f"  {name:8s} {' | '.join(paths)}" for name, paths in BENCHMARK_FILES.items())
    parser = argparse.ArgumentParser(
        prog="python -m corewarding.eval",
        description=corewarding.eval.__doc__.split("\n\n")[0],
        epilog=f"Benchmark names and the files they read under --data_dir (first that exists):\n{mapping}\n"
        "Any other value of --benchmarks is taken as a path to a verl-schema parquet file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="HF folder, a global_step_N checkpoint dir, or a run dir with latest_checkpointed_iteration.txt")
    parser.add_argument(
        "--benchmarks",
        default=DEFAULT_BENCHMARKS,
        help=f"comma-separated names or parquet paths, each optionally NAME:K for its own k (default "
        f"{DEFAULT_BENCHMARKS}: the paper's setting with --k 1); none: only --lm_eval",
    )
    parser.add_argument("--data_dir", default="data", help="folder of the preprocessed files (default data/)")
    parser.add_argument("--k", type=int, default=1, help="samples per question unless NAME:K says otherwise (default 1)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--max_tokens", type=int, default=3072, help="max new tokens per response")
    parser.add_argument("--max_model_len", type=int, default=None, help="vLLM context length (default: longest prompt + max_tokens)")
    parser.add_argument("--backend", choices=list(ENGINE_NAMES), default="vllm", help="the rollout engine")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N questions of each benchmark and --lm_eval task")
    parser.add_argument("--output_dir", default="outputs/eval", help="where summary.json and samples.jsonl go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gt_scorer", choices=list(rewards.GT_SCORERS), default="math_verify",
                        help="answer vs ground truth, as the training's reward_model.gt_scorer: math_verify (default) "
                        "| hendrycks (the release's MATH string normalisation)")
    parser.add_argument("--batch_size", type=int, default=None, help="questions per generate call (default "
                        + ", ".join(f"{default_batch_size(name)} {name}" for name in ENGINE_NAMES) + ")")
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.85, help="vLLM on GPU: fraction of each GPU's memory it may take")
    parser.add_argument("--no_enforce_eager", dest="enforce_eager", action="store_false", help="let vLLM use CUDA graphs (faster on GPU, slower start)")
    parser.add_argument("--num_gpus", type=int, default=None,
                        help="GPUs to use: one engine per --tensor_parallel_size of them, each in its own process with a "
                        "contiguous share of the questions (default: one engine; on CPU: that many processes)")
    parser.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM: GPUs per engine, for models one GPU cannot hold")
    harness.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from corewarding.data.schema import DataError
    from corewarding.export import CheckpointError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return evaluate(args)
    except (EvalError, CheckpointError, DataError, parallel.ProcessFailed) as exc:
        raise SystemExit(f"error: {exc}") from None
