"""Rollout engines behind one interface (`base.RolloutEngine`): `hf` (transformers `generate`, the
CPU-test engine and fallback) and `vllm` (imported only when asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from corewarding.workers.rollout.base import RolloutEngine, RolloutOutput, SamplingSettings, validation_sampling

__all__ = [
    "RolloutEngine",
    "RolloutOutput",
    "SamplingSettings",
    "build_rollout_engine",
    "eos_token_ids",
    "resolve_dtype",
    "rollout_seed",
    "validation_sampling",
    "vllm_engine_kwargs",
]

ENGINES = ("hf", "vllm")


def resolve_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    """`model.dtype` / `rollout.dtype` -> torch dtype; null means bfloat16 on GPU, float32 on CPU."""
    if name is None:
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    name = aliases.get(str(name), str(name))
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use bfloat16, float16 or float32")
    return dtype


def eos_token_ids(tokenizer: Any, model_path: str | Path | None = None) -> list[int]:
    """The tokenizer's EOS id plus the ids of the model's generation_config.json (Qwen's chat models
    stop at <|im_end|> and <|endoftext|>), first-seen order, no duplicates."""
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    if model_path is not None:
        try:
            from transformers import GenerationConfig

            extra = GenerationConfig.from_pretrained(str(model_path)).eos_token_id
        except (OSError, ValueError):
            extra = None
        if extra is not None:
            for token in [extra] if isinstance(extra, int) else list(extra):
                if int(token) not in ids:
                    ids.append(int(token))
    if not ids:
        raise ValueError(f"the tokenizer of {model_path} has no EOS token: generation would never stop")
    return ids


def rollout_seed(config: dict, rank: int) -> int:
    """`rollout.seed` + this rank's rollout group (rank // tensor_model_parallel_size): the ranks of a
    TP group share it (they must sample the same tokens), different groups sample differently."""
    rollout = config["actor_rollout_ref"]["rollout"]
    return int(rollout.get("seed") or 0) + int(rank) // int(rollout.get("tensor_model_parallel_size") or 1)


def vllm_engine_kwargs(config: dict, model_path: str, device: torch.device | str, rank: int = 0) -> dict[str, Any]:
    """The `VLLMRolloutEngine` arguments for worker `rank` (seeded with `rollout_seed`)."""
    rollout = config["actor_rollout_ref"]["rollout"]
    model_cfg = config["actor_rollout_ref"]["model"]
    data = config["data"]
    device = torch.device(device)
    dtype = resolve_dtype(rollout.get("dtype") or model_cfg.get("dtype"), device)
    return dict(
        model_path=str(model_path),
        dtype=str(dtype).removeprefix("torch."),
        max_model_len=int(data["max_prompt_length"]) + int(data["max_response_length"]),
        gpu_memory_utilization=float(rollout["gpu_memory_utilization"]),
        tensor_parallel_size=int(rollout.get("tensor_model_parallel_size") or 1),
        enforce_eager=bool(rollout["enforce_eager"]),
        enable_sleep_mode=bool(rollout.get("free_cache_engine", False)) and device.type == "cuda",
        seed=rollout_seed(config, rank),
        max_num_seqs=int(rollout["max_num_seqs"]),
        max_num_batched_tokens=int(rollout["max_num_batched_tokens"]),
    )


def build_rollout_engine(
    config: dict,
    model_path: str,
    model: Any | None,
    tokenizer: Any,
    device: torch.device | str,
    rank: int = 0,
) -> RolloutEngine:
    """The engine named by `actor_rollout_ref.rollout.name` for worker `rank`.

    hf: runs `model` (a plain, unsharded model on `device`) or, when `model` is None, a copy loaded
    from `model_path` in `rollout.dtype` (null: the model dtype). vllm: `VLLMRolloutEngine` on the
    model folder with `vllm_engine_kwargs` (vllm is imported only here)."""
    rollout = config["actor_rollout_ref"]["rollout"]
    model_cfg = config["actor_rollout_ref"]["model"]
    name = rollout.get("name", "hf")
    device = torch.device(device)
    if name == "hf":
        from corewarding.workers.rollout.hf_engine import HFRolloutEngine

        if model is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(
                model_path,
                dtype=resolve_dtype(rollout.get("dtype") or model_cfg.get("dtype"), device),
                attn_implementation=model_cfg.get("attn_implementation") or "sdpa",
                trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
            ).to(device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return HFRolloutEngine(
            model,
            pad_token_id=int(pad),
            eos_token_ids=eos_token_ids(tokenizer, model_path),
            micro_batch_size=int(rollout.get("micro_batch_size") or 32),
        )
    if name == "vllm":
        from corewarding.workers.rollout.vllm_engine import VLLMRolloutEngine

        return VLLMRolloutEngine(**vllm_engine_kwargs(config, model_path, device, rank))
    raise ValueError(
        f"unknown rollout engine actor_rollout_ref.rollout.name={name!r}; allowed: {', '.join(ENGINES)}"
    )
