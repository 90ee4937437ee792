"""Will this run start on my GPU node? The start-up memory check of a GPU run
(`corewarding.workers.memory_plan`), answered on any machine: no GPU, no weights, no Ray.

    python -m corewarding.plan <the run's hydra overrides> [--gpu-memory-gb 80]
    python -m corewarding.plan +method=co_rewarding_i actor_rollout_ref.model.path=/models/Qwen3-8B-Base \\
        data.train_files=x.parquet data.train_aug_files=y.parquet trainer.n_gpus_per_node=8

It composes the config as `python -m corewarding.main` does (with `trainer.device=cuda` unless the
overrides set it; data files are not opened), reads only the model folder's `config.json` (the
model is counted on the meta device), and prints both phases of one GPU's memory: each part, the
sum, the card and the 95 % limit. World size: trainer.n_gpus_per_node x trainer.nnodes. Exit
status 0: it fits (or trainer.skip_memory_check=True starts it anyway); 1: the workers would refuse
it (the message names the keys to change); 2: bad input, one line `error: ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from corewarding.config import Config, ConfigError, compose_config, load_config
from corewarding.workers import memory_plan
from corewarding.workers.memory_plan import ModelShape, Settings


def read_config(overrides: list[str]) -> Config:
    """The run's typed config, on GPUs: `trainer.device=cuda` unless an override sets the device."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not any(o.lstrip("+~").startswith("trainer.device=") for o in overrides):
        overrides = [*overrides, "trainer.device=cuda"]
    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose the configuration: {exc}".replace("\n", " ")) from None
    config = load_config(cfg, check_paths=False)
    if config.trainer.device != "cuda":
        raise ConfigError(f"trainer.device={config.trainer.device}: the memory plan is for GPU runs "
                          "(trainer.device=cuda)")
    return config


def read_shape(config: Config) -> ModelShape:
    """The model's shape from its folder's config.json alone (no weights)."""
    from transformers import AutoConfig

    model = config.actor_rollout_ref.model
    folder = Path(model.path).expanduser()
    file = folder / "config.json"
    if not file.is_file():
        raise ConfigError(f"actor_rollout_ref.model.path={model.path}: no {file} (the plan reads only the model's "
                          "config.json: copy it into that folder)")
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=model.trust_remote_code)
        return ModelShape.from_hf_config(hf_config)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{file}: cannot build the model from it: {exc}".replace("\n", " ")) from None


def table(phases: dict[str, dict[str, float]], total_gb: float) -> list[str]:
    """Every part of each phase in GB (`-`: not in that phase), the sums and their share of the card."""
    names = sorted(dict.fromkeys(name for parts in phases.values() for name in parts), key=lambda n: n == "context")
    lines = [f"{'GB per GPU':<14}" + "".join(f"{phase:>10}" for phase in phases)]
    for name in names:
        lines.append(f"{name:<14}" + "".join(f"{parts[name]:>10.1f}" if name in parts else f"{'-':>10}"
                                             for parts in phases.values()))
    sums = [sum(parts.values()) for parts in phases.values()]
    lines.append(f"{'total':<14}" + "".join(f"{s:>10.1f}" for s in sums))
    lines.append(f"{'of the card':<14}" + "".join(f"{s / total_gb:>10.0%}" for s in sums))
    limit = memory_plan.HEADROOM * total_gb
    lines.append(f"{'under limit':<14}" + "".join(f"{limit - s:>10.1f}" for s in sums))
    return lines


def report(config: Config, shape: ModelShape, s: Settings) -> list[str]:
    """The plan's lines: the model and the cards, the settings that count, the phases' table."""
    trainer, limit = config.trainer, memory_plan.HEADROOM * s.total_gb
    phases = memory_plan.phases_gb(shape, s)
    on = {True: "on", False: "off"}
    lines = [
        f"model {config.actor_rollout_ref.model.path}: {shape.total / 1e9:.2f} B parameters, {shape.layers} layers",
        f"GPUs: {s.world_size} ({trainer.nnodes} node(s) x {trainer.n_gpus_per_node}) of {s.total_gb:g} GB; "
        f"limit {memory_plan.HEADROOM:.0%} = {limit:.1f} GB",
        f"settings: gpu_memory_utilization {s.vllm_share:g}, vLLM asleep after rollouts {on[s.sleeps]}, update "
        f"micro-batch {s.micro_tokens:,} tokens, log-prob micro-batch {s.log_prob_tokens:,} tokens, gradient "
        f"checkpointing {on[s.checkpointing]}, actor offload {on[s.actor_offload]}, reference offload {on[s.ref_offload]}",
        *table(phases, s.total_gb),
    ]
    if s.vllm_share > 0:
        lines.append(f"largest gpu_memory_utilization that fits: {memory_plan.largest_share(phases, s.total_gb):.2f}")
    return lines


def plan(overrides: list[str], gpu_memory_gb: float) -> int:
    """Print the plan; 0 when the workers would start, 1 when they would refuse (the keys to change)."""
    if gpu_memory_gb <= 0:
        raise ConfigError(f"--gpu-memory-gb {gpu_memory_gb:g}: give the card's memory in GB (e.g. 80)")
    config = read_config(overrides)
    shape = read_shape(config)
    settings = memory_plan.settings_of(config, config.world_size, gpu_memory_gb)
    if not config.trainer.skip_memory_check:
        settings, note = memory_plan.fit_rollout_share(shape, settings)
        if note:
            print(f"note: {note}", flush=True)
    print("\n".join(report(config, shape, settings)), flush=True)
    try:
        memory_plan.check(shape, settings)
    except ValueError as exc:
        if config.trainer.skip_memory_check:
            print(f"WARNING (trainer.skip_memory_check=True: starts anyway) {exc}", flush=True)
            return 0
        print(f"refused: {exc}", file=sys.stderr, flush=True)
        return 1
    print("fits: the workers' start-up memory check passes", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; bad input raises SystemExit(2) after one `error: ...` line."""
    from corewarding.trainer.run import exit_status

    parser = argparse.ArgumentParser(prog="python -m corewarding.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0,
                        help="one card's memory in GiB (default 80; nvidia-smi's memory.total in MiB / 1024)")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, as for python -m corewarding.main")
    args: Any = parser.parse_intermixed_args(argv)
    with exit_status(resumes=False):
        status = plan(list(args.overrides), args.gpu_memory_gb)
    return status


if __name__ == "__main__":
    from corewarding.startup import skip_unused_imports

    skip_unused_imports()
    sys.exit(main())
