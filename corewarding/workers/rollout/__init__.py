"""Rollout engines behind one interface (`base.RolloutEngine`), one module each (`hf_engine.py`:
transformers `generate`, the CPU-test engine and fallback; `vllm_engine.py`), and `make_engine`, the
one factory. Which engines exist and what each can do is `corewarding.rollout_engines`' registry."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from corewarding.rollout_engines import installed_engine
from corewarding.workers.rollout.base import RolloutEngine, RolloutOutput, SamplingSettings, validation_sampling

__all__ = [
    "EngineSettings",
    "RolloutEngine",
    "RolloutOutput",
    "SamplingSettings",
    "eos_token_ids",
    "make_engine",
    "resolve_dtype",
    "validation_sampling",
]


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


@dataclass(frozen=True)
class EngineSettings:
    """What an engine is built with (the worker takes them from `actor_rollout_ref.rollout`,
    `corewarding.eval` from its command line); each engine's `build` reads the fields it uses."""

    name: str  # a name of corewarding.rollout_engines.ENGINES
    max_model_len: int  # prompt + response tokens
    dtype: str | None = None  # null: bfloat16 on GPU, float32 on CPU
    seed: int = 0
    attn_implementation: str = "sdpa"  # hf
    trust_remote_code: bool = False
    hf_micro_batch_size: int = 32  # hf: sequences per generate call
    gpu_memory_utilization: float = 0.5  # an engine with a memory share (vllm)
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    sleep_mode: bool = False
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192


def make_engine(settings: EngineSettings, model_path: str, tokenizer: Any, device: torch.device | str) -> RolloutEngine:
    """The rollout engine `settings.name` on the model folder, for training and evaluation alike: its
    registry entry (`corewarding.rollout_engines`) names the module whose `build` makes it, imported
    only when asked for and once its package is known to be installed."""
    spec = installed_engine(settings.name)
    return importlib.import_module(spec.module).build(settings, model_path, tokenizer, torch.device(device))
