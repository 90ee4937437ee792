"""Out-of-domain evaluation through EleutherAI's lm-evaluation-harness, as the paper reports it
(IFEval and MMLU-Pro): `python -m corewarding.eval --model RUN --benchmarks none --lm_eval ifeval,mmlu_pro`.

The model folder is the one `corewarding.export.resolve_model_path` picks (an HF folder, or the
actor of a run / `global_step_N` checkpoint); the harness runs it with its vLLM backend
(`--lm_eval_backend vllm`, every GPU of `--num_gpus` through data and tensor parallelism) or its
transformers one (`hf`). Tasks are the harness's own, plus any task YAMLs in `--lm_eval_include`
folders. Needs the `eval` extra (`pip install -e ".[eval]"`; the CPU lock has it).

Writes `lm_eval.json` (the harness's results, configs and versions) and `lm_eval_samples.jsonl`
(every request and response) beside `summary.json`, whose `lm_eval` entry holds each task's
metrics under the harness's names (`prompt_level_strict_acc,none`, `exact_match,custom-extract`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PAPER_TASKS = "ifeval,mmlu_pro"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("lm-evaluation-harness (out-of-domain tasks)")
    group.add_argument("--lm_eval", default=None, metavar="TASKS",
                       help=f"comma-separated harness tasks to run after the math benchmarks (the paper's: {PAPER_TASKS})")
    group.add_argument("--lm_eval_backend", choices=["vllm", "hf"], default="vllm", help="the harness's model backend (default vllm)")
    group.add_argument("--lm_eval_include", action="append", default=[], metavar="DIR",
                       help="a folder of extra task YAMLs (repeatable)")
    group.add_argument("--lm_eval_num_fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    group.add_argument("--lm_eval_batch_size", default=None, help="harness batch size (default: auto for vllm, 8 for hf)")
    group.add_argument("--lm_eval_no_chat_template", dest="lm_eval_chat_template", action="store_false",
                       help="raw prompts instead of the tokenizer's chat template (the math eval always applies it)")


def tasks_of(args: argparse.Namespace) -> list[str]:
    return [t.strip() for t in (args.lm_eval or "").split(",") if t.strip()]


def model_args(args: argparse.Namespace, model_path: Path, on_gpu: bool) -> dict[str, Any]:
    """The harness's model_args for --lm_eval_backend on the model folder."""
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    out: dict[str, Any] = {"pretrained": str(model_path), "dtype": dtype}
    if args.lm_eval_backend == "vllm":
        out.update(tensor_parallel_size=args.tensor_parallel_size, data_parallel_size=args.num_gpus // args.tensor_parallel_size,
                   gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager)
        if args.max_model_len:
            out["max_model_len"] = args.max_model_len
    elif on_gpu and args.num_gpus > 1:
        out["parallelize"] = True  # transformers: the layers spread over the visible GPUs
    return out


def harness_payload(args: argparse.Namespace, model_path: Path) -> dict[str, Any]:
    """Everything `run_harness` needs, picklable (it runs in a process of its own)."""
    import torch

    on_gpu = torch.cuda.is_available()
    batch_size = args.lm_eval_batch_size or ("auto" if args.lm_eval_backend == "vllm" else 8)
    for folder in args.lm_eval_include:
        if not Path(folder).is_dir():
            raise ValueError(f"--lm_eval_include {folder}: not a folder of task YAMLs")
    return {
        "model": args.lm_eval_backend, "model_args": model_args(args, model_path, on_gpu), "tasks": tasks_of(args),
        "include_path": [str(Path(f).resolve()) for f in args.lm_eval_include] or None,
        "num_fewshot": args.lm_eval_num_fewshot, "batch_size": int(batch_size) if str(batch_size).isdigit() else batch_size,
        "device": "cuda" if on_gpu else "cpu", "limit": args.limit, "apply_chat_template": args.lm_eval_chat_template,
    }


def run_harness(payload: dict[str, Any]) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on the payload of `harness_payload`; the harness's output dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=payload["include_path"])
    unknown = [t for t in payload["tasks"] if t not in task_manager.all_tasks]
    if unknown:
        raise ValueError(f"--lm_eval: unknown task(s) {', '.join(unknown)}; `lm-eval ls tasks` lists the harness's, "
                         "--lm_eval_include DIR adds task YAMLs of your own")
    return lm_eval.simple_evaluate(
        model=payload["model"], model_args=payload["model_args"], tasks=payload["tasks"],
        num_fewshot=payload["num_fewshot"], batch_size=payload["batch_size"], device=payload["device"],
        limit=payload["limit"], log_samples=True, apply_chat_template=payload["apply_chat_template"],
        fewshot_as_multiturn=payload["apply_chat_template"], task_manager=task_manager,
    )


def task_metrics(output: dict[str, Any]) -> dict[str, dict[str, float]]:
    """task (or group) -> its numeric metrics, keyed as the harness keys them (`metric,filter`)."""
    return {
        task: {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and "," in k}
        for task, row in output["results"].items()
    }


def write_outputs(output: dict[str, Any], output_dir: Path) -> dict[str, dict[str, float]]:
    """lm_eval.json and lm_eval_samples.jsonl into output_dir; returns `task_metrics`."""
    results = {k: v for k, v in output.items() if k != "samples"}
    (output_dir / "lm_eval.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    with (output_dir / "lm_eval_samples.jsonl").open("w") as samples:
        for task, rows in output.get("samples", {}).items():
            for row in rows:
                samples.write(json.dumps({"task": task, **row}, ensure_ascii=False, default=str) + "\n")
    return task_metrics(output)


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """One line per task and metric, in %, with the harness's standard error."""
    lines = []
    for task, row in metrics.items():
        for key, value in row.items():
            if "_stderr," not in key:
                stderr = row.get(key.replace(",", "_stderr,", 1))
                lines.append(f"{task}  {key}  {100 * value:.2f}" + (f" ± {100 * stderr:.2f}" if stderr is not None else ""))
    return "\n".join(lines)


HARNESS_KEYS = ("lm_eval", "lm_eval_settings")


def merged_summary(summary: dict[str, Any], path: Path, ran_math: bool) -> dict[str, Any]:
    """The summary to write over `path`: a harness-only run (`--benchmarks none`) keeps the math
    results already there, a math-only run keeps the harness results, when both are of one model
    folder; so one summary.json holds a model's Table-1 row whichever order the two ran in."""
    if not path.is_file():
        return summary
    previous = json.loads(path.read_text())
    if previous.get("model_path") != summary["model_path"]:
        return summary
    if not ran_math:
        return {**previous, **{k: summary[k] for k in HARNESS_KEYS if k in summary}}
    return {**summary, **{k: previous[k] for k in HARNESS_KEYS if k in previous and k not in summary}}
