"""What the driver calls on the workers.

`WorkerApi` is the worker's remote methods; `fsdp_worker.ActorRolloutRefWorker` implements them, each
with its `@register(dispatch, collect)` declaration and its documentation. `WorkerGroup` is the same
methods on a group of workers that answers as one worker (every collect rule combines the ranks'
answers into one worker's answer), with its size and teardown: the trainer calls
`workers.update_teacher(weight)`, typed, and that is `ActorRolloutRefWorker.update_teacher(weight)` on
every rank.

`RayWorkerGroup` (group.py) and `LocalWorkerGroup` (local_group.py) implement it through
`WorkerGroupBase`, which makes every method from the worker method's declaration (`call`); a group
only says how it runs a method on its ranks (`_run`).
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, Callable, Protocol, TypeVar

import torch

from corewarding.batch import Batch
from corewarding.workers.dispatch import RankCalls, declaration_of, rank_calls
from corewarding.workers.rollout_runner import Generated
from corewarding.workers.update.actor import ActorUpdate

T = TypeVar("T")


class WorkerApi(Protocol):
    """The worker's remote methods (documented on `ActorRolloutRefWorker`'s)."""

    def ignore_signals(self, names: list[str]) -> None:
        ...

    def init_model(self, total_steps: int) -> str | None:
        ...

    def generate_sequences(self, prompts: Batch, role: str, prompt_width: int) -> Generated:
        ...

    def compute_log_prob(self, batch: Batch, model: str = "actor", with_entropy: bool = False,
                         with_self_certainty: bool = False) -> Batch:
        ...

    def update_actor(self, batch: Batch, rollouts_per_prompt: int) -> ActorUpdate:
        ...

    def update_teacher(self, weight: float) -> None:
        ...

    def export_hf(self, out_dir: str, which: str = "actor") -> None:
        ...

    def save_checkpoint(self, step_dir: str) -> None:
        ...

    def load_checkpoint(self, step_dir: str) -> None:
        ...

    def get_versions(self) -> dict[str, int]:
        ...

    def get_full_state_dict(self, which: str = "actor") -> dict[str, torch.Tensor]:
        ...

    def leave_process_group(self) -> None:
        ...


def api_methods() -> list[str]:
    """The names of the worker's remote methods, in `WorkerApi`'s order."""
    return [name for name, value in vars(WorkerApi).items() if inspect.isfunction(value) and not name.startswith("_")]


class WorkerGroup(WorkerApi, Protocol):
    """The worker's remote methods on every rank of a group, answering as one worker."""

    world_size: int

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the workers and free what the group holds (best effort: called at teardown)."""


class WorkerGroupBase(WorkerGroup):
    """What RayWorkerGroup and LocalWorkerGroup share: `call`, and every `WorkerApi` method made from
    it (after the class); a group supplies `worker_cls`, `world_size` and `_run`."""

    worker_cls: type

    def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`method`, a worker method with its `@register` declaration, on every rank: the arguments
        as its dispatch says, the ranks' results combined by its collect rule."""
        declaration = declaration_of(method)
        calls = rank_calls(method.__name__, declaration.dispatch, self.world_size, args, kwargs)
        return declaration.collect(self._run(method.__name__, calls))

    @abc.abstractmethod
    def _run(self, name: str, calls: RankCalls) -> list[Any]:
        """The worker method `name` on every rank with that rank's arguments; the results in rank order."""


def _on_every_rank(name: str) -> Callable[..., Any]:
    """The group's method `name`: the group's worker class's method of that name, through `call`."""

    def method(self: WorkerGroupBase, *args: Any, **kwargs: Any) -> Any:
        return self.call(getattr(self.worker_cls, name), *args, **kwargs)

    method.__name__, method.__qualname__ = name, f"WorkerGroupBase.{name}"
    method.__doc__ = f"`{name}` on every rank (`WorkerApi.{name}`; its declaration says how)."
    return method


for _name in api_methods():
    setattr(WorkerGroupBase, _name, _on_every_rank(_name))
