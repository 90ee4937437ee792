"""How one GRPO step's time and peak memory grow with the rollouts per step and the response length.

    make bench-scaling                                # rollouts 32..256 at 64 tokens, tokens 32..1,024 at 16 rollouts
    python benchmarks/scaling.py --rollouts 32 64 --tokens 32 64 --steps 2 --json out.json

One configuration throughout: SmolLM2-135M-Instruct's architecture and tokenizer with random
weights (seed 0), so that every rollout runs to the token limit (a trained model stops when it has
answered, and the response length would not be the one asked for; the measured mean length is in
the table), `--dtype` on CPU (`auto`: bfloat16 where the CPU multiplies it natively, as `make demo`),
`--n` rollouts per prompt, GT reward, KL loss, micro-batch `--micro-batch`, one optimizer step per
step, `--workers` workers with `--rollout` generation. Each point is one run
of `benchmarks/step.py`'s `ours` side in its own subprocess (median of steps 2..N, peak PSS of the
whole process tree, Ray's processes included). The exponent of each column is the slope of a
least-squares line through log(value) against log(rollouts), and for the tokens sweep against
log(mean response tokens), log(whole-rollout tokens: mean prompt + mean response) and log(the
tokens the update computes per rollout: CPU workers run each prompt once for its `--n` rollouts,
so prompt / n + response): 1 is linear; a large fixed part (start-up memory, the KV cache vLLM
reserves) pulls it towards 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import step  # noqa: E402 - benchmarks/ is on the path above
from corewarding.rollout_engines import ENGINE_NAMES  # noqa: E402
from corewarding.model_zoo import save_model_folder  # noqa: E402

COLUMNS = ("step", "gen", "update", "peak_gb")


def random_weights_copy(source: Path, out: Path, seed: int = 0) -> Path:
    """`source`'s architecture and tokenizer with freshly initialised weights, written once to `out`."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.float32)
    return save_model_folder(model, AutoTokenizer.from_pretrained(source), out)


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x); None with fewer than two usable points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def run_point(args: argparse.Namespace, rollouts: int, tokens: int, work: Path) -> dict[str, Any]:
    """One step-benchmark run at `rollouts` per step and at most `tokens` new tokens."""
    if rollouts % args.n:
        raise SystemExit(f"--rollouts {rollouts} is not a multiple of --n {args.n}")
    point = argparse.Namespace(passthrough=[
        f"--model={args.model}", f"--steps={args.steps}", f"--prompts={rollouts // args.n}", f"--n={args.n}",
        f"--max-new-tokens={tokens}", "--temperature=1.0", "--lr=1e-5", "--kl=0.001",
        f"--micro-batch={args.micro_batch}", f"--dtype={args.dtype}"], dtype=args.dtype, memory_every=args.memory_every)
    work.mkdir(parents=True)
    variant = f"ours:workers={args.workers},rollout={args.rollout},single={int(args.single_process)}"
    result = step.measure(variant, point, work)
    timed = result["steps"][1:] or result["steps"]
    mean_tokens = sum(s.get("response_length", 0.0) for s in timed) / len(timed)
    prompt_tokens = sum(s.get("prompt_length", 0.0) for s in timed) / len(timed)
    return {"rollouts": rollouts, "max_tokens": tokens, **{k: result["median"][k] for k in ("step", "gen", "update")},
            "peak_gb": result["peak_pss_gb"], "mean_tokens": mean_tokens, "rollout_tokens": prompt_tokens + mean_tokens,
            "computed_tokens": prompt_tokens / args.n + mean_tokens}


def sweep_table(points: list[dict[str, Any]], axis: str) -> list[str]:
    """Markdown rows of one sweep and its fitted exponents: against rollouts, or against mean response
    tokens, whole-rollout tokens (prompt + response) and the tokens computed per rollout."""
    header = "| rollouts | max tokens | mean tokens | rollout tokens | computed tokens | s/step | gen s | update s | peak GB |"
    rows = [header, "| " + " | ".join("---" for _ in header.split("|")[1:-1]) + " |"]
    for p in points:
        rows.append(f"| {p['rollouts']} | {p['max_tokens']} | {p['mean_tokens']:.1f} | {p['rollout_tokens']:.1f} | "
                    f"{p['computed_tokens']:.1f} | "
                    f"{p['step']:.2f} | {p['gen']:.2f} | {p['update']:.2f} | {p['peak_gb']:.2f} |")
    labels = {"rollouts": "exponent", "mean_tokens": "exponent (response tokens)",
              "rollout_tokens": "exponent (rollout tokens)", "computed_tokens": "exponent (computed tokens)"}
    for x_key in (["rollouts"] if axis == "rollouts" else ["mean_tokens", "rollout_tokens", "computed_tokens"]):
        xs = [float(p[x_key]) for p in points]
        slopes = {c: loglog_slope(xs, [float(p[c]) for p in points]) for c in COLUMNS}
        cells = [labels[x_key], "", "", "", ""] + [("-" if slopes[c] is None else f"{slopes[c]:.2f}") for c in COLUMNS]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollouts", type=int, nargs="+", default=[32, 64, 128, 256], help="rollouts per step to sweep")
    p.add_argument("--tokens", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024],
                   help="response token limits to sweep")
    p.add_argument("--fixed-tokens", type=int, default=64, help="token limit of the rollouts sweep")
    p.add_argument("--fixed-rollouts", type=int, default=16, help="rollouts per step of the tokens sweep")
    p.add_argument("--n", type=int, default=4, help="rollouts per prompt")
    p.add_argument("--steps", type=int, default=3, help="steps per point (the first is a warm-up)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype (auto: bfloat16 where this CPU multiplies it natively)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rollout", default="vllm", choices=ENGINE_NAMES)
    p.add_argument("--single-process", action="store_true", help="one worker inside the driver, without Ray")
    p.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M's shape, random weights)")
    p.add_argument("--memory-every", type=float, default=2.0, help="seconds between memory samples (step.py's option)")
    p.add_argument("--json", default=None, help="write every point here")
    args = p.parse_args(argv)
    args.dtype = step.concrete_dtype(args.dtype)
    if args.model is None:
        from corewarding.model_zoo import cache_dir, prepare_smollm2

        args.model = str(random_weights_copy(prepare_smollm2(), cache_dir() / "SmolLM2-135M-random"))
    return args


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    args = parse_args(argv)
    plan = {"rollouts": [(r, args.fixed_tokens) for r in args.rollouts],
            "tokens": [(args.fixed_rollouts, t) for t in args.tokens]}
    measured: dict[tuple[int, int], dict[str, Any]] = {}  # a point in both sweeps runs once
    with tempfile.TemporaryDirectory(prefix="cw-bench-scaling-") as tmp:
        for rollouts, tokens in dict.fromkeys(plan["rollouts"] + plan["tokens"]):
            print(f"running {rollouts} rollouts x <= {tokens} tokens ({args.steps} steps) ...", flush=True)
            measured[(rollouts, tokens)] = run_point(args, rollouts, tokens, Path(tmp) / f"r{rollouts}-t{tokens}")
    sweeps = {axis: [measured[key] for key in keys] for axis, keys in plan.items()}
    print(f"\n{args.workers} worker(s), {args.rollout} rollout, {args.dtype}, {args.n} rollouts per prompt, micro-batch "
          f"{args.micro_batch}, median of steps 2..{args.steps}; peak PSS of the process tree")
    for axis, title in (("rollouts", f"rollouts per step (<= {args.fixed_tokens} tokens)"),
                        ("tokens", f"response tokens ({args.fixed_rollouts} rollouts)")):
        print(f"\n{title}\n" + "\n".join(sweep_table(sweeps[axis], axis)))
    if args.json:
        Path(args.json).write_text(json.dumps(sweeps, indent=1))
    return sweeps


if __name__ == "__main__":
    main()
