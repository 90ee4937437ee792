"""A worker's RNG states: the trainer's streams (random, numpy, torch, cuda) and the rollout stream,
seeding, saving them as plain JSON into a checkpoint and restoring them, and the seeds of a run
resumed on another worker count (`resumed_seed`), whose saved streams no longer fit its ranks."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seeded_rng_state(seed: int, device: torch.device) -> torch.Tensor:
    """The state of `device`'s default generator after manual_seed(seed), without touching it."""
    return torch.Generator(device=device).manual_seed(int(seed)).get_state()


def device_rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_device_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def seed_process(seed: int) -> None:
    """random, numpy and torch seeded alike (the trainer's per-rank streams)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resumed_seed(seed: int, version: int) -> int:
    """A seed for the RNG streams of a run resumed on another worker count, from a rank's own seed
    and the policy version: the same checkpoint on the same worker count always draws alike, and
    no stream restarts where a fresh run's did."""
    return int(np.random.SeedSequence([int(seed), int(version)]).generate_state(1)[0])


def rng_to_json(device: torch.device, rollout: torch.Tensor) -> dict[str, Any]:
    """The trainer's RNG states (random, numpy, torch, cuda) and the rollout stream as plain JSON."""
    version, python_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(python_state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
        "rollout": rollout.tolist(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def rng_from_json(state: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Set the trainer's RNGs from `rng_to_json`'s output; returns the rollout stream's state."""
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)
    return torch.tensor(state["rollout"], dtype=torch.uint8)
