"""Workers: the FSDP2 actor / reference / rollout worker (`ActorRolloutRefWorker`), the Ray group
that runs one per device (`RayWorkerGroup`), and the rollout engines (`workers.rollout`)."""

from __future__ import annotations

from typing import Any

__all__ = ["ActorRolloutRefWorker", "RayWorkerGroup"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import ray / transformers
    if name == "ActorRolloutRefWorker":
        from corewarding.workers.fsdp_worker import ActorRolloutRefWorker

        return ActorRolloutRefWorker
    if name == "RayWorkerGroup":
        from corewarding.workers.group import RayWorkerGroup

        return RayWorkerGroup
    raise AttributeError(name)
