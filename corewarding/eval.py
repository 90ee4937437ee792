"""Evaluate a model or one of our checkpoints on math benchmarks: pass@1, avg@k, maj@k, pass@k.

    python -m corewarding.eval --model checkpoints/co-rewarding/run1 --benchmarks math500,gsm8k,amc \\
        --k 8 --temperature 0.8 --max_tokens 3072 --output_dir outputs/eval/run1

Every question is sampled k times with the chat template of the model's tokenizer applied to the
row's prompt messages; the last `\\boxed{}` of each response is graded against
`reward_model.ground_truth` by `--gt_scorer`, the training's `reward_model.gt_scorer`: math_verify
(the reward library's math equivalence, the default) or hendrycks (the MATH benchmark's string
normalisation: the release's scorer, for release-exact numbers).

Per benchmark:
  pass@1          mean over questions of the fraction of the k samples that are correct
  avg@k           the same number under the name the paper uses for AMC (avg@8)
  maj@k           the majority answer of the k samples (reward library's vote, math equivalence;
                  empty answers never win) graded against the ground truth
  pass@k          a question counts when any of its k samples is correct
  answer_present  fraction of samples with a non-empty \\boxed{} answer

Writes `summary.json` and `samples.jsonl` (one line per sample) into --output_dir.

`--num_gpus N` puts one engine on each of N GPUs, each in a process of its own with a contiguous
share of every benchmark's batches (the results are merged back in question order and equal the
one-engine run's); `--tensor_parallel_size T` splits each engine over T of them. `--lm_eval TASKS`
also runs lm-evaluation-harness tasks (the paper's IFEval and MMLU-Pro: corewarding/eval_harness.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from corewarding import eval_harness, eval_parallel, rewards

logger = logging.getLogger(__name__)

# Benchmark name -> parquet paths tried in order under --data_dir (the first that exists wins).
# `scripts/preprocess.py NAME --local_path ...` writes data/NAME/test.parquet (see data/README.md).
BENCHMARK_FILES: dict[str, tuple[str, ...]] = {
    name: (f"{name}/test.parquet", f"eval/{name}.parquet", f"eval/{name}_test.parquet")
    for name in ("math500", "gsm8k", "amc", "amc23", "aime24", "math")
}
DEFAULT_BENCHMARKS = "math500,gsm8k,amc"


class EvalError(ValueError):
    """A bad argument or input file; the message says what to fix."""


# ----------------------------------------------------------------------------- scoring (pure)


@dataclass
class GradedSample:
    response: str
    answer: str | None
    correct: bool


@dataclass
class QuestionScore:
    """The k samples of one question, graded."""

    n_samples: int
    n_correct: int
    n_present: int
    majority_answer: str | None
    majority_ratio: float
    majority_correct: bool

    @property
    def mean_correct(self) -> float:
        return self.n_correct / self.n_samples if self.n_samples else 0.0

    @property
    def any_correct(self) -> bool:
        return self.n_correct > 0


VERIFY_TIMEOUT_S = 5.0  # per math-verify check: evaluation is off the hot path, so be generous


def gt_equivalent(answer: str | None, ground_truth: str, gt_scorer: str = "math_verify") -> bool:
    """Does `answer` match the ground truth under `gt_scorer` (reward_model.gt_scorer's choices)."""
    if gt_scorer == "hendrycks":
        return bool(rewards.hendrycks_equivalent(answer, ground_truth))
    if gt_scorer != "math_verify":
        raise EvalError(f"--gt_scorer {gt_scorer!r} is unknown; use one of {' | '.join(rewards.GT_SCORERS)}")
    return bool(answer is not None and rewards.answers_equivalent(answer, ground_truth, timeout=VERIFY_TIMEOUT_S))


def grade_response(response: str, ground_truth: str, gt_scorer: str = "math_verify") -> GradedSample:
    """Extract the last \\boxed{} answer of a response and grade it against the ground truth."""
    answer = rewards.extract_boxed_answer(response)  # None for a missing, unbalanced or empty box
    correct = answer is not None and gt_equivalent(answer, ground_truth, gt_scorer)
    return GradedSample(response=response, answer=answer, correct=correct)


def score_question(answers: Sequence[str | None], correct: Sequence[bool], ground_truth: str,
                   gt_scorer: str = "math_verify") -> QuestionScore:
    """Score one question's k samples: correctness per sample is given; the majority answer of the
    extracted answers (math equivalence, empty answers never win) is graded here."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    present = [a for a in answers if a is not None and str(a).strip()]
    vote = rewards.majority_vote(list(answers), equivalence="math")  # label: None or a non-empty answer
    majority_correct = vote.label is not None and gt_equivalent(vote.label, ground_truth, gt_scorer)
    return QuestionScore(
        n_samples=len(answers),
        n_correct=sum(bool(c) for c in correct),
        n_present=len(present),
        majority_answer=vote.label,
        majority_ratio=float(vote.ratio),
        majority_correct=majority_correct,
    )


def aggregate(scores: Sequence[QuestionScore]) -> dict[str, float | int]:
    """Benchmark metrics from per-question scores. All accuracies are fractions in [0, 1]."""
    if not scores:
        raise ValueError("no questions to aggregate")
    ks = {s.n_samples for s in scores}
    if len(ks) != 1:
        raise ValueError(f"questions have different sample counts {sorted(ks)}: every question of a benchmark needs the same k")
    k = ks.pop()
    n = len(scores)
    pass1 = sum(s.mean_correct for s in scores) / n
    total_samples = sum(s.n_samples for s in scores)
    return {
        "n_questions": n,
        "k": k,
        "pass@1": pass1,
        f"avg@{k}": pass1,
        f"maj@{k}": sum(s.majority_correct for s in scores) / n,
        f"pass@{k}": sum(s.any_correct for s in scores) / n,
        "answer_present": sum(s.n_present for s in scores) / total_samples if total_samples else 0.0,
    }


def score_samples(
    responses: Sequence[Sequence[str]], ground_truths: Sequence[str], gt_scorer: str = "math_verify"
) -> tuple[dict[str, float | int], list[list[GradedSample]], list[QuestionScore]]:
    """Grade k responses for each question and aggregate: `responses[i]` are the samples of the
    question whose ground truth is `ground_truths[i]`. Returns (metrics, graded, per-question)."""
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} response groups but {len(ground_truths)} ground truths")
    graded = [[grade_response(r, gt, gt_scorer) for r in group] for group, gt in zip(responses, ground_truths)]
    scores = [
        score_question([g.answer for g in group], [g.correct for g in group], gt, gt_scorer)
        for group, gt in zip(graded, ground_truths)
    ]
    return aggregate(scores), graded, scores


# ----------------------------------------------------------------------------- inputs


def resolve_benchmark(spec: str, data_dir: str | Path = "data") -> tuple[str, Path]:
    """A benchmark name from BENCHMARK_FILES or a path to a verl-schema parquet -> (name, path)."""
    spec = spec.strip()
    path = Path(spec).expanduser()
    if spec.endswith(".parquet") or path.is_file():
        if not path.is_file():
            raise EvalError(f"{path}: file not found")
        name = path.stem
        if name in ("test", "train", "validation") and path.parent.name:
            name = f"{path.parent.name}_{name}" if name != "test" else path.parent.name
        return name, path
    key = spec.lower()
    if key not in BENCHMARK_FILES:
        raise EvalError(f"unknown benchmark {spec!r}: use one of {sorted(BENCHMARK_FILES)} or a path to a parquet file")
    data_dir = Path(data_dir).expanduser()
    for candidate in BENCHMARK_FILES[key]:
        if (data_dir / candidate).is_file():
            return key, data_dir / candidate
    tried = ", ".join(str(data_dir / c) for c in BENCHMARK_FILES[key])
    raise EvalError(
        f"benchmark {spec!r}: none of {tried} exists; preprocess it first (`python scripts/preprocess.py {key} "
        f"--output_dir {data_dir / key}`, with --local_path FILE when offline) or pass --data_dir / a parquet path"
    )


@dataclass
class Benchmark:
    name: str
    path: Path
    questions: list[str]
    ground_truths: list[str]
    indices: list[int]
    messages: list[list[dict[str, str]]]
    k: int = 1
    prompt_ids: list[list[int]] = field(default_factory=list)


def parse_benchmark_spec(spec: str, default_k: int) -> tuple[str, int]:
    """`amc:8` -> ("amc", 8); `gsm8k` -> ("gsm8k", default_k)."""
    spec = spec.strip()
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and head:
        if int(tail) < 1:
            raise EvalError(f"{spec!r}: k must be at least 1")
        return head, int(tail)
    return spec, default_k


def load_benchmark(name: str, path: Path, limit: int | None = None) -> Benchmark:
    from corewarding.data.schema import read_verl_parquet, user_content

    frame = read_verl_parquet(path)
    if limit is not None and limit > 0:
        frame = frame.head(limit)
    messages = list(frame["prompt"])
    return Benchmark(
        name=name,
        path=path,
        questions=[user_content(m) for m in messages],
        ground_truths=[str(g) for g in frame["ground_truth"]],
        indices=[int(i) for i in frame["index"]],
        messages=messages,
    )


def make_engine(args: argparse.Namespace, model_path: Path, tokenizer: Any, max_model_len: int) -> Any:
    """The rollout engine of --backend on the model folder (the trainer's engine factory)."""
    import torch

    from corewarding.workers.rollout import EngineSettings
    from corewarding.workers.rollout import make_engine as make_rollout_engine

    settings = EngineSettings(
        name=args.backend, max_model_len=max_model_len, dtype=None if args.dtype == "auto" else args.dtype,
        seed=args.seed, hf_micro_batch_size=args.batch_size * args.k,
        gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
    )
    return make_rollout_engine(settings, str(model_path), tokenizer, "cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- driver


def _batches(n: int, size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def load_benchmarks(args: argparse.Namespace, tokenizer: Any) -> list[Benchmark]:
    """The --benchmarks, each with its k and its prompts as token ids (the trainer's chat template)."""
    from corewarding.data import chat_prompt_ids

    names = [b for b in args.benchmarks.split(",") if b.strip()]
    if not names:
        raise EvalError("--benchmarks is empty")
    benchmarks = []
    for item in names:
        spec, k = parse_benchmark_spec(item, args.k)
        name, path = resolve_benchmark(spec, args.data_dir)
        bench = load_benchmark(name, path, args.limit)
        bench.k = k
        bench.prompt_ids = chat_prompt_ids(tokenizer, bench.messages)
        benchmarks.append(bench)
    return benchmarks


Sampled = tuple[list[list[str]], list[int], int]  # responses per question, response lengths, truncated


def sample_benchmark(engine: Any, tokenizer: Any, bench: Benchmark, args: argparse.Namespace,
                     first: int = 0, last: int | None = None) -> Sampled:
    """k responses per question (decoded) of questions [first, last), the response lengths and
    how many hit --max_tokens. `first` is a multiple of --batch_size, so the batches (and their
    seeds) are those of the whole benchmark's run."""
    from tqdm import tqdm

    from corewarding.workers.rollout.base import SamplingSettings

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
    engine = make_engine(args, model_path, tokenizer, max_model_len)
    return [sample_benchmark(engine, tokenizer, bench, args, first, last) for bench, first, last in jobs]


def sample_all(args: argparse.Namespace, model_path: Path, tokenizer: Any, benchmarks: list[Benchmark],
               max_model_len: int) -> Iterable[Sampled]:
    """Each benchmark's samples in question order: from one engine here, or from one engine per
    --num_gpus device group, each in its own process with a contiguous share of whole batches.
    With --lm_eval the one engine also gets a process, so that its GPU memory is free for the harness's."""
    groups = eval_parallel.device_groups(args.num_gpus, args.tensor_parallel_size)
    if len(groups) == 1 and not eval_harness.tasks_of(args):
        started = time.time()
        engine = make_engine(args, model_path, tokenizer, max_model_len)
        logger.info("engine %s ready in %.1fs", args.backend, time.time() - started)
        for bench in benchmarks:
            yield sample_benchmark(engine, tokenizer, bench, args)
        return
    shares = [eval_parallel.contiguous_shares(len(b.prompt_ids), len(groups), args.batch_size) for b in benchmarks]
    payloads = [(args, model_path, max_model_len, [(b, *s[rank]) for b, s in zip(benchmarks, shares)]) for rank in range(len(groups))]
    logger.info("%d engines (%s) on devices %s", len(groups), args.backend, groups)
    per_rank = eval_parallel.run_in_processes(sample_share, payloads, groups)
    for i in range(len(benchmarks)):
        parts = [rank_results[i] for rank_results in per_rank]
        yield [r for p in parts for r in p[0]], [n for p in parts for n in p[1]], sum(p[2] for p in parts)


def sample_records(bench: Benchmark, graded: list, scores: list) -> Iterable[dict[str, Any]]:
    """One samples.jsonl record per response."""
    for i, (group, score) in enumerate(zip(graded, scores)):
        for j, sample in enumerate(group):
            yield {
                "benchmark": bench.name, "index": bench.indices[i], "sample": j, "question": bench.questions[i],
                "response": sample.response, "extracted_answer": sample.answer, "ground_truth": bench.ground_truths[i],
                "correct": sample.correct, "majority_answer": score.majority_answer,
            }


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
        payload = eval_harness.harness_payload(args, model_path)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    devices = eval_parallel.visible_devices()[: args.num_gpus]
    try:
        output = eval_parallel.run_in_processes(eval_harness.run_harness, [payload], [devices])[0]
    except eval_parallel.ProcessFailed as exc:
        raise EvalError(f"lm-evaluation-harness failed: {exc}") from None
    summary["lm_eval"] = eval_harness.write_outputs(output, output_dir)
    summary["lm_eval_settings"] = {k: payload[k] for k in ("model", "tasks", "num_fewshot", "limit", "apply_chat_template")}
    print(eval_harness.format_table(summary["lm_eval"]))


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from corewarding.export import resolve_model_path

    if args.k < 1:
        raise EvalError("--k must be at least 1")
    if args.batch_size is None:
        args.batch_size = 256 if args.backend == "vllm" else 8
    if args.num_gpus is None:
        args.num_gpus = args.tensor_parallel_size
    if args.backend == "hf" and args.tensor_parallel_size > 1:
        raise EvalError("--tensor_parallel_size > 1 needs --backend vllm")
    run_math = args.benchmarks.strip().lower() not in ("", "none")
    if not run_math and not eval_harness.tasks_of(args):
        raise EvalError("--benchmarks none and no --lm_eval tasks: nothing to evaluate")
    try:
        eval_parallel.device_groups(args.num_gpus, args.tensor_parallel_size)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
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
    if eval_harness.tasks_of(args):
        evaluate_harness(args, model_path, output_dir, summary)
    summary["seconds"] = time.time() - started
    summary = eval_harness.merged_summary(summary, output_dir / "summary.json", run_math)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {output_dir / 'summary.json'}" + (f" and {output_dir / 'samples.jsonl'}" if run_math else ""))
    return summary


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
        description=__doc__.split("\n\n")[0],
        epilog=f"Benchmark names and the files they read under --data_dir (first that exists):\n{mapping}\n"
        "Any other value of --benchmarks is taken as a path to a verl-schema parquet file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="HF folder, a global_step_N checkpoint dir, or a run dir with latest_checkpointed_iteration.txt")
    parser.add_argument(
        "--benchmarks",
        default=DEFAULT_BENCHMARKS,
        help=f"comma-separated names or parquet paths, each optionally NAME:K for its own k, e.g. "
        f"math500,gsm8k,amc:8 (the paper's setting with --k 1; default {DEFAULT_BENCHMARKS}); none: only --lm_eval",
    )
    parser.add_argument("--data_dir", default="data", help="folder of the preprocessed files (default data/)")
    parser.add_argument("--k", type=int, default=1, help="samples per question unless NAME:K says otherwise (default 1)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--max_tokens", type=int, default=3072, help="max new tokens per response")
    parser.add_argument("--max_model_len", type=int, default=None, help="vLLM context length (default: longest prompt + max_tokens)")
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N questions of each benchmark and --lm_eval task")
    parser.add_argument("--output_dir", default="outputs/eval", help="where summary.json and samples.jsonl go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gt_scorer", choices=list(rewards.GT_SCORERS), default="math_verify",
                        help="answer vs ground truth, as the training's reward_model.gt_scorer: math_verify (default) "
                        "| hendrycks (the release's MATH string normalisation)")
    parser.add_argument("--batch_size", type=int, default=None, help="questions per generate call (default 256 vllm, 8 hf)")
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.85, help="vLLM on GPU: fraction of each GPU's memory it may take")
    parser.add_argument("--no_enforce_eager", dest="enforce_eager", action="store_false", help="let vLLM use CUDA graphs (faster on GPU, slower start)")
    parser.add_argument("--num_gpus", type=int, default=None,
                        help="GPUs to use: one engine per --tensor_parallel_size of them, each in its own process with a "
                        "contiguous share of the questions (default: one engine; on CPU: that many processes)")
    parser.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM: GPUs per engine, for models one GPU cannot hold")
    eval_harness.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from corewarding.data.schema import DataError
    from corewarding.export import CheckpointError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return evaluate(args)
    except (EvalError, CheckpointError, DataError, eval_parallel.ProcessFailed) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
