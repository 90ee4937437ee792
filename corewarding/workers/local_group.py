"""The one worker of a `trainer.single_process=True` run, inside the driver process, without Ray
(this module does not import it): breakpoints, profilers and machines without Ray."""

from __future__ import annotations

import os
from typing import Any

from corewarding.config import Config
from corewarding.workers.dispatch import RankCalls
from corewarding.workers.fsdp_worker import ActorRolloutRefWorker
from corewarding.workers.ports import free_port
from corewarding.workers.worker_api import WorkerGroupBase

RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "GLOO_SOCKET_IFNAME")


class LocalWorkerGroup(WorkerGroupBase):
    """The one worker of a `trainer.single_process=True` run, inside this process: the same worker
    class and the same calls as `RayWorkerGroup`, without Ray, so breakpoints and profilers reach
    the worker's code. Its torch.distributed group is a world of one on loopback."""

    def __init__(self, config: Config, worker_cls: type = ActorRolloutRefWorker) -> None:
        self.config = config
        self.worker_cls = worker_cls
        self.world_size = 1
        # The rendezvous of the group's world of one goes into this process's environment, and close()
        # puts back what was there: a later torch.distributed user of the process (accelerate in
        # lm-eval, say) would otherwise find MASTER_PORT naming a port that is no longer ours.
        self._environ_before = {key: os.environ.get(key) for key in RENDEZVOUS_VARIABLES}
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
        if config.trainer.device == "cpu":
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        self.workers = [worker_cls(config, 0, 1)]

    def _run(self, name: str, calls: RankCalls) -> list[Any]:
        return [getattr(worker, name)(*args, **kwargs) for worker, (args, kwargs) in zip(self.workers, calls)]

    def close(self) -> None:
        self.workers = []
        for key, value in self._environ_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._environ_before = {}
