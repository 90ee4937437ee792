"""The benchmark files: names to parquet paths under --data_dir, the questions and their prompts in,
and the samples.jsonl records out."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from corewarding.eval import EvalError

# Benchmark name -> parquet paths tried in order under --data_dir (the first that exists wins).
# `scripts/preprocess.py NAME --local_path ...` writes data/NAME/test.parquet (see data/README.md).
BENCHMARK_FILES: dict[str, tuple[str, ...]] = {
    name: (f"{name}/test.parquet", f"eval/{name}.parquet", f"eval/{name}_test.parquet")
    for name in ("math500", "gsm8k", "amc", "amc23", "aime24", "math")
}
DEFAULT_BENCHMARKS = "math500,gsm8k,amc:8"  # the paper's: one sample each, AMC's 83 questions eight


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


def sample_records(bench: Benchmark, graded: list, scores: list) -> Iterable[dict[str, Any]]:
    """One samples.jsonl record per response."""
    for i, (group, score) in enumerate(zip(graded, scores)):
        for j, sample in enumerate(group):
            yield {
                "benchmark": bench.name, "index": bench.indices[i], "sample": j, "question": bench.questions[i],
                "response": sample.response, "extracted_answer": sample.answer, "ground_truth": bench.ground_truths[i],
                "correct": sample.correct, "majority_answer": score.majority_answer,
            }
