"""One GRPO step, this trainer against TRL's `GRPOTrainer`, at identical work, in one invocation.

    make bench-step                                   # SmolLM2-135M-Instruct, 6 steps per side
    python benchmarks/step.py --variants ours ours:workers=2 ours:rollout=hf trl --steps 6
    pip install -e ".[bench]"                         # TRL, for the trl variant

The work, on both sides: SmolLM2-135M-Instruct (CPU), `--prompts` built-in arithmetic prompts
per step (one-shot system prompt) x `--n` rollouts, at most `--max-new-tokens` new tokens at
`--temperature`, GT reward (boxed answer vs ground truth), GRPO advantages per group (std-scaled),
clipped surrogate + low-variance KL to a frozen reference (`--kl`), token-mean loss over the whole
batch (TRL's `dapo`), AdamW at `--lr` (constant), gradient clip 1.0, micro-batches of `--micro-batch`
rollouts, one optimizer step per step, computed in `--dtype` with float32 master weights: `auto` (the
default, what `make demo` asks for) is bfloat16 on a CPU that multiplies it natively (`avx512_bf16`,
AMX, Arm's bf16) and float32 elsewhere; ours sets `model.dtype` (FSDP2's mixed precision, vLLM in the
same dtype), TRL `bf16=True` (autocast, its mixed precision). TRL runs in one process with all the
machine's threads, generating with the policy itself (`use_vllm=False`).

A variant is `ours` or `trl`, optionally with `:key=value,...` (ours: `workers`, `rollout` = vllm | hf,
`remove_padding` = 0 | 1, `shortcut` = 0 | 1, `preload` = 0 | 1 (`trainer.cpu_preload`), `single` =
0 | 1: the one worker inside the run's process, without Ray; `attn` = sdpa | sdpa_segments | eager:
`model.attn_implementation`, the CPU default sdpa_segments when not given; `reshard` = 0 | 1:
`actor.fsdp_config.reshard_after_forward`; `compile` = 0 | 1: `actor.use_torch_compile`; trl: `preload`
= 0 | 1, the same tcmalloc in TRL's process; both: `dtype` = float32 | bfloat16, this variant's compute
dtype instead of `--dtype`'s). Each
variant runs in its own subprocess; this process samples the proportional set size (PSS: shared
pages counted once) of that subprocess and all its descendants (Ray's processes and workers
included) every `--memory-every` seconds (2) and reports the peak. Each sample costs CPU that the
measured run then lacks: the sampling column is the sampler's CPU time as a share of one core over
the variant's run (at 0.25 s, the old interval, both sides' steps ran 10-20 % slower). Step times are the median
over steps 2..N (step 1 warms caches up). Per-phase columns: gen (rollouts), old (a separate
old-log-prob pass), ref (reference forward), update (policy forward + backward + optimizer), other
(reward, advantages, transfers, the rest). "vs TRL" divides the first TRL variant of the same dtype's
step by each variant's; the last line reads `speedup_vs_trl=<that ratio for the first ours variant>`
(ours faster: above 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHASES = ("gen", "old", "ref", "update", "other")


# ----------------------------------------------------------------------------- the two sides
def ours_step_times(args: argparse.Namespace, options: dict[str, str], data: dict[str, Path], out: Path) -> list[dict]:
    """Per-step phase times of `run_training` (the production path) on the benchmark's work."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from corewarding.config import compose_config
    from corewarding.trainer.run import run_training

    workers = int(options.get("workers", 1))
    overrides = [
        "reward_model.reward_manager=naive", f"actor_rollout_ref.model.path={args.model}",
        f"data.train_files={data['train']}", "data.val_files=null", f"data.train_batch_size={args.prompts}",
        "data.max_prompt_length=256", f"data.max_response_length={args.max_new_tokens}", "data.shuffle=False",
        f"actor_rollout_ref.rollout.name={options.get('rollout', 'vllm')}", f"actor_rollout_ref.rollout.n={args.n}",
        f"actor_rollout_ref.rollout.temperature={args.temperature}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.prompts}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro_batch}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.micro_batch}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={args.micro_batch}",
        f"actor_rollout_ref.model.use_remove_padding={bool(int(options.get('remove_padding', 1)))}",
        f"actor_rollout_ref.actor.on_policy_shortcut={bool(int(options.get('shortcut', 1)))}",
        f"trainer.single_process={bool(int(options.get('single', 0)))}",
        f"trainer.cpu_preload={bool(int(options.get('preload', 1)))}",
        *([f"actor_rollout_ref.model.attn_implementation={options['attn']}"] if "attn" in options else []),
        f"actor_rollout_ref.model.dtype={variant_dtype(options, args)}",
        *([f"actor_rollout_ref.actor.fsdp_config.reshard_after_forward={bool(int(options['reshard']))}"]
          if "reshard" in options else []),
        *([f"actor_rollout_ref.actor.use_torch_compile={bool(int(options['compile']))}"] if "compile" in options else []),
        f"actor_rollout_ref.actor.optim.lr={args.lr}", "actor_rollout_ref.actor.optim.warmup_style=constant",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0", f"actor_rollout_ref.actor.kl_loss_coef={args.kl}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "trainer.device=cpu", "trainer.nnodes=1", f"trainer.n_gpus_per_node={workers}",
        f"trainer.total_training_steps={args.steps}", "trainer.logger=[console]", "trainer.resume_mode=disable",
        f"trainer.default_local_dir={out / 'run'}", "trainer.val_before_train=False", "trainer.save_freq=-1",
        f"ray_init.temp_dir={Path(tempfile.gettempdir()) / f'cw-bench-{os.getpid()}'}",
    ]
    history = run_training(compose_config(overrides), progress=False)["history"]
    steps = []
    for h in history:
        if h["step"] <= 0:
            continue
        phases = {"gen": h.get("timing/gen", 0.0), "old": h.get("timing/old_log_prob", 0.0),
                  "ref": h.get("timing/ref", 0.0), "update": h.get("timing/update_actor", 0.0)}
        steps.append(_with_other(phases, h["timing/step"], reward=h["reward/mean"],
                                 response_length=h.get("response_length/mean", 0.0),
                                 prompt_length=h.get("prompt_length/mean", 0.0)))
    return steps


def trl_trainer(args: argparse.Namespace, options: dict[str, str], data: dict[str, Path], out: Path) -> Any:
    """TRL's GRPOTrainer set up for the benchmark's work."""
    import pandas as pd
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from corewarding.rewards import answers_equivalent, extract_boxed_answer

    torch.set_num_threads(os.cpu_count() or 1)
    frame = pd.read_parquet(data["train"])
    dataset = Dataset.from_dict({
        "prompt": [[dict(m) for m in prompt] for prompt in frame["prompt"]],
        "ground_truth": [str(rm["ground_truth"]) for rm in frame["reward_model"]],
    })

    def gt_reward(completions: list, ground_truth: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(answers_equivalent(extract_boxed_answer(t), g)) for t, g in zip(texts, ground_truth)]

    rows = args.prompts * args.n
    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=rows // args.micro_batch, num_generations=args.n, generation_batch_size=rows,
        max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=1.0, top_k=0,
        beta=args.kl, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.01,
        max_grad_norm=1.0, num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        max_steps=args.steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=variant_dtype(options, args) == "bfloat16",
        gradient_checkpointing=False, shuffle_dataset=False, seed=0, disable_tqdm=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    return GRPOTrainer(model=model, reward_funcs=gt_reward, args=config, train_dataset=dataset,
                       processing_class=tokenizer)


def trl_step_times(args: argparse.Namespace, options: dict[str, str], data: dict[str, Path], out: Path) -> list[dict]:
    """Per-step phase times of TRL's GRPOTrainer on the same work (phases timed by wrapping its methods)."""
    import torch
    from transformers import TrainerCallback

    trainer = trl_trainer(args, options, data, out)
    current: dict[str, float] = {}

    def timed(name_of, fn):
        def wrapper(*a, **k):
            name = name_of(*a, **k)
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                current[name] = current.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    def logps_phase(model_, *_: Any, **__: Any) -> str:
        if torch.is_grad_enabled():
            return "update"
        return "ref" if model_ is trainer.ref_model else "old"

    trainer._generate = timed(lambda *a, **k: "gen", trainer._generate)
    trainer._get_per_token_logps_and_entropies = timed(logps_phase, trainer._get_per_token_logps_and_entropies)
    trainer.accelerator.backward = timed(lambda *a, **k: "update", trainer.accelerator.backward)
    steps: list[dict] = []
    rewards: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            current.clear()
            current["_start"] = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            total = time.perf_counter() - current.pop("_start")
            steps.append(_with_other({p: current.get(p, 0.0) for p in PHASES if p != "other"}, total))

        def on_log(self, _args, _state, _control, logs=None, **__: Any) -> None:
            if logs and "reward" in logs:
                rewards.append(float(logs["reward"]))

    trainer.add_callback(StepTimer())
    trainer.train()
    for step, reward in zip(steps, rewards):
        step["reward"] = reward
    return steps


def _with_other(phases: dict[str, float], total: float, **extra: float) -> dict[str, float]:
    phases = dict(phases)
    phases["other"] = max(0.0, total - sum(phases.values()))
    return {**phases, "step": total, **extra}


# ----------------------------------------------------------------------------- driver
def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    side, _, rest = text.partition(":")
    if side not in ("ours", "trl"):
        raise SystemExit(f"unknown variant {text!r}: use ours[:key=value,...] or trl")
    options = dict(item.split("=", 1) for item in rest.split(",") if item)
    return side, options


def run_one(args: argparse.Namespace) -> None:
    """The child: one variant, its per-step times to --result."""
    from corewarding.data import write_builtin_dataset

    side, options = parse_variant(args.run_one)
    out = Path(args.work_dir)
    data = write_builtin_dataset(out / "data", n_train=args.prompts * args.steps, n_val=4, word_fraction=0.0)
    steps = (ours_step_times if side == "ours" else trl_step_times)(args, options, data, out)
    Path(args.result).write_text(json.dumps(steps))


def tree_pss(pid: int) -> int:
    """Bytes of PSS of `pid` and all its descendants (processes that vanish are skipped)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(variant: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    result = work / "steps.json"
    command = [sys.executable, __file__, "--run-one", variant, "--work-dir", str(work), "--result", str(result),
               *args.passthrough]
    env = dict(os.environ)
    side, options = parse_variant(variant)
    if side == "trl" and int(options.get("preload", 1)):
        # the same allocator as our CPU workers (trainer.cpu_preload): TRL's one process, from its start
        from corewarding.workers.preload import cpu_preload_libraries, with_preload

        env["LD_PRELOAD"] = with_preload(env.get("LD_PRELOAD", ""), cpu_preload_libraries())
    started, sampler_cpu = time.perf_counter(), time.process_time()
    log = open(work / "log.txt", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    peak = 0
    while proc.poll() is None:
        if args.memory_every > 0:
            peak = max(peak, tree_pss(proc.pid))
        time.sleep(args.memory_every or 0.25)
    log.close()
    wall, sampler_cpu = time.perf_counter() - started, time.process_time() - sampler_cpu
    if proc.returncode != 0:
        tail = (work / "log.txt").read_text()[-3000:]
        raise SystemExit(f"variant {variant} failed (exit {proc.returncode}):\n{tail}")
    steps = json.loads(result.read_text())
    timed = steps[1:] if len(steps) > 1 else steps
    median = {key: statistics.median(s[key] for s in timed) for key in (*PHASES, "step")}
    return {"variant": variant, "dtype": variant_dtype(options, args), "steps": steps, "median": median,
            "peak_pss_gb": peak / 2**30 if args.memory_every > 0 else float("nan"),
            "wall_s": wall, "sampling": sampler_cpu / wall}


def trl_steps_by_dtype(results: list[dict[str, Any]]) -> dict[str, float]:
    """dtype -> the median step of the first TRL variant computed in it."""
    steps: dict[str, float] = {}
    for r in results:
        if r["variant"].startswith("trl"):
            steps.setdefault(r["dtype"], r["median"]["step"])
    return steps


def print_table(results: list[dict[str, Any]], trl_steps: dict[str, float]) -> None:
    header = (f"{'variant':<28} {'dtype':>8} {'s/step':>7} " + " ".join(f"{p:>7}" for p in PHASES)
              + f" {'peak GB':>8} {'sampling':>8} {'vs TRL':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        m = r["median"]
        ratio = f"{trl_steps[r['dtype']] / m['step']:.2f}" if r["dtype"] in trl_steps else "-"
        print(f"{r['variant']:<28} {r['dtype']:>8} {m['step']:7.2f} " + " ".join(f"{m[p]:7.2f}" for p in PHASES)
              + f" {r['peak_pss_gb']:8.2f} {r['sampling']:8.0%} {ratio:>7}")


def variant_dtype(options: dict[str, str], args: argparse.Namespace) -> str:
    """A variant's compute dtype: its own `dtype`, else the benchmark's `--dtype`."""
    return options.get("dtype", args.dtype)


def concrete_dtype(name: str) -> str:
    """`--dtype` as `model.dtype=auto` resolves it on this CPU."""
    from corewarding.hardware import auto_compute_dtype

    return auto_compute_dtype("cpu") if name == "auto" else name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["ours", "trl"])
    p.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M-Instruct, converted once)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--kl", type=float, default=0.001)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype of both sides (auto: bfloat16 where this CPU multiplies it natively)")
    p.add_argument("--memory-every", type=float, default=2.0,
                   help="seconds between samples of a variant's memory (0: none). A sample reads every process's "
                        "smaps_rollup, ~0.15 s of a core for ours' ~11 processes: the table's sampling column is "
                        "that cost, as a share of one core over the variant's run")
    p.add_argument("--json", default=None, help="write every variant's per-step times here")
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_every < 0:
        p.error(f"--memory-every {args.memory_every}: seconds between samples, >= 0 (0: none)")
    if args.model is None:
        from corewarding.model_zoo import prepare_smollm2

        args.model = str(prepare_smollm2())
    args.passthrough = [f"--model={args.model}", f"--steps={args.steps}", f"--prompts={args.prompts}", f"--n={args.n}",
                        f"--max-new-tokens={args.max_new_tokens}", f"--temperature={args.temperature}",
                        f"--lr={args.lr}", f"--kl={args.kl}", f"--micro-batch={args.micro_batch}"]
    args.dtype = concrete_dtype(args.dtype)  # once, so that every child and the table name the same dtype
    args.passthrough.append(f"--dtype={args.dtype}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.run_one:
        run_one(args)
        return {}
    results = []
    with tempfile.TemporaryDirectory(prefix="cw-bench-step-") as tmp:
        for i, variant in enumerate(args.variants):
            work = Path(tmp) / f"v{i}"
            work.mkdir()
            print(f"running {variant} ({args.steps} steps) ...", flush=True)
            results.append(measure(variant, args, work))
    trl_steps = trl_steps_by_dtype(results)
    print(f"\n{args.prompts} prompts x {args.n} rollouts, <= {args.max_new_tokens} new tokens, T={args.temperature}, "
          f"micro-batch {args.micro_batch}, float32 master weights; median of steps 2..{args.steps} (s); peak PSS of the process tree\n")
    print_table(results, trl_steps)
    summary = {"results": results, "trl_step_s": trl_steps}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    ours = next((r for r in results if r["variant"].startswith("ours")), None)
    if ours and ours["dtype"] in trl_steps:
        summary["speedup_vs_trl"] = trl_steps[ours["dtype"]] / ours["median"]["step"]
        print(f"speedup_vs_trl={summary['speedup_vs_trl']:.2f}")
    return summary


if __name__ == "__main__":
    from corewarding.trainer.run import exit_status

    with exit_status(resumes=False):
        main()
