"""The prepared check of the GPU path, on one CUDA device, without Ray or vLLM.

    python scripts/gpu_check.py --out outputs/gpu_check.json     # a CUDA machine: under 8 minutes
    python scripts/gpu_check.py --device cpu --small              # its CUDA-free parts (a test runs this)

It builds a tiny random Qwen3-shaped model with a byte-level tokenizer (nothing from a hub), teaches
it for a few seconds to box an answer, and trains it with the trainer itself in single-process mode
(`trainer.single_process=True`: the worker in this process, its process group a world of one, NCCL on
CUDA): bf16 mixed precision, gradient checkpointing, an offloaded reference model, the HF rollout
engine; 3 Co-rewarding-II steps and 2 Co-rewarding-I steps. It checks finite losses, the EMA teacher
against its formula (from the saved checkpoints), packed = padded log-probs within bf16 tolerance, a
checkpoint round trip in a fresh process (step 3 resumed from step 2 equals step 3 of the straight
run), a flat per-step peak memory, measures one update micro-batch and one no-grad log-prob
micro-batch of 8 x (512 + 3,072) tokens of a Qwen3-1.7B-shaped model against
`benchmarks/memory.py`'s estimate (`--small`: a hidden-256 model,
4 x (64 + 128) tokens), and times the output head compiled against eager (`benchmarks/head.py`). One JSON file, a table on stdout, exit status 1 when any check fails.

The GPU machine lent to this project has torch and transformers but no hydra, omegaconf or
math-verify: `bash scripts/gpu_check_wheels.sh` downloads their wheels into `.whl/` (the command to
run there is in docs/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from corewarding import checkpoint_layout  # noqa: E402

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|pad|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
SMALL = dict(QWEN3_1_7B, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64)
BF16_REL = 2e-2  # packed vs padded in bf16: ~8 bits of mantissa, summed in another order per layer
EMA_REL = 1e-5   # fp32 master weights: a handful of float32 roundings of the update
PEAK_GROWTH = 1.10  # per-step peak memory after the first step may not grow by more than this


@dataclass
class Check:
    name: str
    ok: bool
    value: str
    seconds: float


class Checks:
    def __init__(self) -> None:
        self.items: list[Check] = []

    def run(self, name: str, fn: Callable[[], tuple[bool, str]]) -> None:
        """Run one check; an exception is a failed check with its message, the others still run."""
        start = time.perf_counter()
        try:
            ok, value = fn()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the rest
            ok, value = False, f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        self.items.append(Check(name, ok, value, time.perf_counter() - start))
        print(f"[{'ok' if ok else 'FAIL'}] {name}: {value}", flush=True)


# ----------------------------------------------------------------------------------- model and data
def byte_tokenizer(folder: Path) -> Any:
    """A byte-level tokenizer (256 byte tokens, no merges, ChatML special tokens), saved to `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|pad|>",
                                        chat_template=CHATML)
    tokenizer.save_pretrained(folder)
    return tokenizer


def boxing_model(folder: Path, device: torch.device, steps: int) -> Path:
    """A random 2-layer Qwen3 taught to answer "The answer is \\boxed{d}." (d in 1..3) to the
    built-in prompts, so that rewards and votes are not all zero; saved as a HF folder (fp32)."""
    import random

    from transformers import Qwen3Config, Qwen3ForCausalLM

    from corewarding.data import ONE_SHOT_SYSTEM_PROMPT, builtin_problems

    tok = byte_tokenizer(folder)
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None)
    model = Qwen3ForCausalLM(config).to(device)
    prompts = [tok.apply_chat_template([{"role": "system", "content": ONE_SHOT_SYSTEM_PROMPT},
                                        {"role": "user", "content": p["question"]}], add_generation_prompt=True, tokenize=False)
               for p in builtin_problems(32, seed=5)]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        pairs = [(rng.choice(ids), tok(f"The answer is \\boxed{{{rng.choice('123')}}}.", add_special_tokens=False)["input_ids"]
                  + [tok.eos_token_id]) for _ in range(16)]
        width, resp = max(len(p) for p, _ in pairs), len(pairs[0][1])
        x = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p + r for p, r in pairs], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + resp) for p, _ in pairs], device=device)
        logits = model(input_ids=x, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                       logits_to_keep=resp + 1).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, width:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.to("cpu").save_pretrained(folder, safe_serialization=True)
    return folder


def small_truth_data(folder: Path) -> dict[str, Path]:
    """The built-in data with ground truths 1..3, the answers the boxing model gives."""
    import pandas as pd

    from corewarding.data import write_builtin_dataset

    paths = write_builtin_dataset(folder, n_train=32, n_val=8, seed=0)
    for path in paths.values():
        frame = pd.read_parquet(path)
        frame["reward_model"] = [{"ground_truth": str(1 + int(info["index"]) % 3), "style": "rule"}
                                 for info in frame["extra_info"]]
        frame.to_parquet(path, index=False)
    return paths


def run_overrides(model: Path, data: dict[str, Path], out: Path, method: str, device: str, steps: int) -> list[str]:
    """The check's training settings: bf16, checkpointing, offloaded reference, HF engine, one worker."""
    return [
        f"reward_model.reward_manager={method}", f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data['train']}", f"data.train_aug_files={data['train_rewrite']}", f"data.val_files={data['val']}",
        "data.train_batch_size=4", "data.max_prompt_length=384", "data.max_response_length=32", "data.seed=3",
        "actor_rollout_ref.model.dtype=bfloat16", "actor_rollout_ref.rollout.dtype=bfloat16",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True", "actor_rollout_ref.model.use_remove_padding=True",
        "actor_rollout_ref.ref.fsdp_config.param_offload=True",
        "actor_rollout_ref.ref.sliding_average.alpha_start=0.5", "actor_rollout_ref.ref.sliding_average.alpha_end=0.8",
        "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.optim.lr=1e-3", "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
        f"trainer.device={device}", "trainer.nnodes=1", "trainer.n_gpus_per_node=1", "trainer.single_process=True",
        f"trainer.total_training_steps={steps}", "trainer.logger=[console]", "trainer.save_freq=1",
        f"trainer.default_local_dir={out / 'ckpt'}", "trainer.resume_mode=disable", "trainer.val_before_train=False",
        "trainer.test_freq=-1",
    ]


def train(overrides: list[str]) -> list[dict[str, Any]]:
    from corewarding.config.loading import compose_config
    from corewarding.trainer.run import run_training

    return [h for h in run_training(compose_config(overrides), progress=False)["history"] if h["step"] > 0]


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors of b, in float64."""
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return math.sqrt(num / den)


# ----------------------------------------------------------------------------------- checks
def finite_losses(history: list[dict[str, Any]], steps: int) -> tuple[bool, str]:
    keys = ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "actor/entropy")
    bad = [(h["step"], k) for h in history for k in keys if not math.isfinite(float(h[k]))]
    moved = any(h["actor/grad_norm"] > 0 for h in history)
    ok = [h["step"] for h in history] == list(range(1, steps + 1)) and not bad and moved
    return ok, f"{len(history)} steps, pg_loss {[round(h['actor/pg_loss'], 4) for h in history]}" + (f", not finite {bad}" if bad else "")


def ema_formula(ckpt: Path, model: Path, history: list[dict[str, Any]]) -> tuple[bool, str]:
    """teacher_k = a_k teacher_{k-1} + (1 - a_k) policy_{k-1} (policy_{k-1}: saved after step k-1)."""
    errors = []
    for k in (2, 3):
        a = history[k - 1]["teacher/ema_weight"]
        teacher, before, policy = (load_weights(checkpoint_layout.ref_dir(checkpoint_layout.step_dir(ckpt, k))),
                                   load_weights(checkpoint_layout.ref_dir(checkpoint_layout.step_dir(ckpt, k - 1))),
                                   load_weights(checkpoint_layout.actor_dir(checkpoint_layout.step_dir(ckpt, k - 1))))
        expected = {n: a * before[n].double() + (1 - a) * policy[n].double() for n in teacher}
        errors.append(relative(teacher, expected))
    moved = relative(load_weights(checkpoint_layout.ref_dir(checkpoint_layout.step_dir(ckpt, 3))), load_weights(model))
    return max(errors) <= EMA_REL and moved > 1000 * EMA_REL, f"rel. error {max(errors):.1e} (bound {EMA_REL:g}), teacher moved {moved:.1e}"


def packed_equals_padded(model_path: Path, device: torch.device) -> tuple[bool, str]:
    """The actor's log-probs of 8 rollout rows in packed and in padded layout, bf16, SDPA."""
    from memory import rollout_rows
    from transformers import AutoModelForCausalLM

    from corewarding.batch import Batch
    from corewarding.workers.model.forward import ForwardSettings, forward_token_stats, install_token_stats

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16, attn_implementation="sdpa").to(device)
    install_token_stats(model)
    rows = rollout_rows(8, 96, 32, seed=1)
    vocab = model.config.vocab_size - len(SPECIAL)
    rows["input_ids"] = (rows["input_ids"] % vocab) * rows["attention_mask"]
    batch = Batch(tensors={k: v.to(device) for k, v in rows.items()})
    with torch.no_grad():
        out = {layout: forward_token_stats(model, batch, ForwardSettings(temperature=1.0, layout=layout, chunk_size=64))
               for layout in ("packed", "padded")}
    mask = rows["response_mask"].to(device).bool()
    packed, padded = out["packed"].log_probs[mask].double(), out["padded"].log_probs[mask].double()
    err = float((packed - padded).norm() / padded.norm())
    return err <= BF16_REL, f"rel. difference {err:.1e} (bound {BF16_REL:g}) over {int(mask.sum())} tokens"


def fresh_process_resume(overrides: list[str], out: Path, straight: list[dict[str, Any]]) -> tuple[bool, str]:
    """Step 3 resumed from the step-2 checkpoint in a new process equals step 3 of the straight run."""
    ckpt = out / "ckpt"
    resumed_dir = out / "resumed"
    args = [a for a in overrides if not a.startswith(("trainer.default_local_dir=", "trainer.resume_mode="))]
    args += [f"trainer.default_local_dir={resumed_dir}", "trainer.resume_mode=resume_path",
             f"trainer.resume_from_path={checkpoint_layout.step_dir(ckpt, 2)}", f"hydra.run.dir={out / 'hydra'}"]
    proc = subprocess.run([sys.executable, "-m", "corewarding.main", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])))
    if proc.returncode != 0:
        return False, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
    resumed = [json.loads(line) for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    (step3,) = [m for m in resumed if m["step"] == 3]
    (want,) = [m for m in straight if m["step"] == 3]
    same_reward = step3["reward/mean"] == want["reward/mean"]
    diff = abs(step3["actor/pg_loss"] - want["actor/pg_loss"]) / max(abs(want["actor/pg_loss"]), 1e-3)
    return same_reward and diff <= BF16_REL, f"reward {step3['reward/mean']:.4f} vs {want['reward/mean']:.4f}, pg_loss rel. diff {diff:.1e}"


def flat_peak_memory(history: list[dict[str, Any]]) -> tuple[bool, str]:
    peaks = [h["perf/max_memory_allocated_gb"] for h in history]
    later = peaks[1:]
    ok = bool(later) and max(later) <= PEAK_GROWTH * later[0]
    return ok, "per-step peak GB " + ", ".join(f"{p:.3f}" for p in peaks)


def micro_batch_memory(device: torch.device, small: bool, log_prob: bool) -> tuple[bool, str]:
    """One update (or no-grad log-prob) micro-batch's working memory (all but the weights), measured,
    against memory.py's estimate (fake tensors, one and two layers; the update's layer share extrapolated)."""
    from memory import Case, build_model, micro_batch, model_inputs, rollout_rows, tracked_peak

    from corewarding.workers.model import sharding

    config, rows, prompt, response = (SMALL, 4, 64, 128) if small else (QWEN3_1_7B, 8, 512, 3072)
    packed = sharding.forward_layout(True, "false", device, "sdpa") == "packed"  # what the trainer would use here
    case = Case(response, packed=packed, chunked=True)
    def fake_peak(n: int) -> dict[str, float]:
        return tracked_peak(dict(config, num_hidden_layers=n), case, rows, prompt, 1024, True, fake=True, log_prob=log_prob)

    layers = config["num_hidden_layers"]
    if log_prob:  # without gradients a layer's tensors go when it returns: two layers stand for any depth
        estimate = fake_peak(2)
    else:
        one, two = fake_peak(1), fake_peak(2)
        estimate = {k: one[k] + (layers - 1) * (two[k] - one[k]) for k in one}
    estimate_gb = estimate["Total"] - estimate["Parameter"]
    if device.type == "cuda":
        model = build_model(config, checkpointing=True).to(device)
        for param in model.parameters():
            param.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        inputs, logit_rows = model_inputs(rollout_rows(rows, prompt, response), case)
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        micro_batch(model, inputs, logit_rows, case, 1024, lambda t: t.to(device), log_prob)
        torch.cuda.synchronize(device)
        measured_gb = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        del model
        torch.cuda.empty_cache()
    else:
        real = tracked_peak(config, case, rows, prompt, 1024, True, fake=False, log_prob=log_prob)
        measured_gb = real["Total"] - real["Parameter"]
    start_up = start_up_estimate_gb(config, rows, prompt + response, log_prob)
    ratio = measured_gb / estimate_gb
    return 0.75 <= ratio <= 1.25, (f"{case.name}, {rows} x ({prompt} + {response}) tokens, {layers} layers: measured "
                                   f"{measured_gb:.2f} GB, benchmarks/memory.py {estimate_gb:.2f} GB (ratio {ratio:.2f}, "
                                   f"bound 0.75-1.25), start-up check {start_up:.2f} GB")


def compiled_head(device: torch.device, small: bool) -> tuple[bool, str]:
    """actor.use_torch_compile's output head against the eager one at Qwen3's vocabulary (bf16):
    values and gradients within bf16 tolerance, and what each costs (`benchmarks/head.py`)."""
    from head import compare

    from corewarding.hardware import torch_compile_missing

    missing = torch_compile_missing(device.type)
    if missing:  # a GPU that cannot compile fails the check; a CPU run of the check's parts says so and goes on
        return device.type == "cpu", f"not run: {missing}"
    config, tokens = (SMALL, 64) if small else (QWEN3_1_7B, 2048)
    r = compare(tokens, config["hidden_size"], config["vocab_size"], torch.bfloat16, device, repeats=3)
    eager, fused = r["eager"], r["compiled"]
    return r["max_relative_difference"] < BF16_REL, (
        f"{tokens} x {config['hidden_size']} -> {config['vocab_size']}: max relative difference "
        f"{r['max_relative_difference']:.1e}; forward + backward eager {eager['step_s'] * 1e3:.0f} ms, compiled "
        f"{fused['step_s'] * 1e3:.0f} ms (first call {fused['first_s']:.1f} s)")


def start_up_estimate_gb(config: dict[str, Any], rows: int, row_length: int, log_prob: bool) -> float:
    """What the trainer's start-up memory check (`workers/memory_plan.py`) expects of the same micro-batch."""
    from corewarding.workers import memory_plan

    shape = memory_plan.ModelShape(total=0, root=0, layer=0, largest=0, layers=config["num_hidden_layers"],
                                   hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                                   vocab=config["vocab_size"])
    settings = memory_plan.Settings(world_size=1, total_gb=0.0, vllm_share=0.0, sleeps=True, actor_offload=False,
                                    ref_offload=False, micro_tokens=rows * row_length, log_prob_tokens=rows * row_length,
                                    row_length=row_length, chunk=1024, checkpointing=True)
    return (memory_plan.log_prob_gb if log_prob else memory_plan.working_gb)(shape, settings)


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--small", action="store_true", help="a small model for the micro-batch measurement (CPU)")
    p.add_argument("--work", default=None, help="folder for the model, data and runs (default: a temporary one; "
                   "the model of an earlier run in it is reused)")
    p.add_argument("--out", default="outputs/gpu_check.json", help="the JSON file of results")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device is visible: run with --device cpu for the CUDA-free parts", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    checks = Checks()
    started = time.perf_counter()
    if device.type == "cpu":
        torch.set_num_threads(1)  # two OpenMP threads on a busy 2-core machine run the warm-up 10x slower
    model = work / "model"
    if not (model / "model.safetensors").exists():  # a --work folder of an earlier run keeps its model
        boxing_model(model, device, steps=300 if device.type == "cuda" else 100)
    data = small_truth_data(work / "data")

    runs: dict[str, list[dict[str, Any]]] = {}
    for method, steps in (("co_rewarding_II", 3), ("co_reward", 2)):
        shutil.rmtree(work / method, ignore_errors=True)
        overrides = run_overrides(model, data, work / method, method, args.device, steps)
        checks.run(f"{method}: {steps} steps, finite losses",
                   lambda: finite_losses(runs.setdefault(method, train(overrides)), steps))
        if method == "co_rewarding_II" and method in runs:
            history = runs[method]
            checks.run("EMA teacher = its formula", lambda: ema_formula(work / method / "ckpt", model, history))
            checks.run("checkpoint round trip in a fresh process", lambda: fresh_process_resume(overrides, work / method, history))
            if device.type == "cuda":
                checks.run("flat per-step peak memory", lambda: flat_peak_memory(history))
    checks.run("packed = padded log-probs (bf16)", lambda: packed_equals_padded(model, device))
    checks.run("update micro-batch memory vs estimate", lambda: micro_batch_memory(device, args.small, log_prob=False))
    checks.run("log-prob micro-batch memory vs estimate", lambda: micro_batch_memory(device, args.small, log_prob=True))
    checks.run("compiled head = eager head (bf16)", lambda: compiled_head(device, args.small))

    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "seconds": round(time.perf_counter() - started, 1)}
    import transformers

    env["transformers"] = transformers.__version__
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"environment": env, "checks": [asdict(c) for c in checks.items]}, indent=1))
    print("\n| check | result | value | s |\n| --- | --- | --- | --- |")
    for c in checks.items:
        print(f"| {c.name} | {'ok' if c.ok else 'FAIL'} | {c.value} | {c.seconds:.1f} |")
    print(f"\n{env}")
    return 0 if all(c.ok for c in checks.items) else 1


if __name__ == "__main__":
    from corewarding.trainer.run import exit_status

    with exit_status(resumes=False):
        sys.exit(main())
