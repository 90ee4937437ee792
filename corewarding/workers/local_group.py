"""The one worker of a `trainer.single_process=True` run, inside the driver process, without Ray
(this module does not import it): breakpoints, profilers and machines without Ray."""

from __future__ import annotations

import os
import socket
from typing import Any

from corewarding.batch import Batch
from corewarding.config import Config
from corewarding.workers.dispatch import collect_rule
from corewarding.workers.fsdp_worker import ActorRolloutRefWorker


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class LocalWorkerGroup:
    """The one worker of a `trainer.single_process=True` run, inside this process: the same worker
    class and the same calls as `RayWorkerGroup`, without Ray, so breakpoints and profilers reach
    the worker's code. Its torch.distributed group is a world of one on loopback."""

    def __init__(self, config: Config, worker_cls: type = ActorRolloutRefWorker) -> None:
        self.config = config
        self.worker_cls = worker_cls
        self.world_size = 1
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
        if config.trainer.device == "cpu":
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        self.workers = [worker_cls(config, 0, 1)]

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list:
        return [getattr(self.workers[0], method)(*args, **kwargs)]

    def dispatch(self, method: str, batch: Batch, **kwargs: Any) -> Any:
        return collect_rule(self.worker_cls, method)([getattr(self.workers[0], method)(batch, **kwargs)])

    def shutdown(self) -> None:
        self.workers = []
