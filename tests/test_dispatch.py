"""The seam between the trainer and the workers: every public method of the worker is declared
(`@register(dispatch, collect)`) and typed for the group (`WorkerApi`, same signature); a group calls
a method as its declaration says and refuses one without a declaration."""

from __future__ import annotations

import inspect
import os
from typing import Any

import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import compose_config, load_config
from corewarding.workers.dispatch import Dispatch, RankCalls, concat_rows, declaration_of, first_rank, register
from corewarding.workers.fsdp_worker import ActorRolloutRefWorker
from corewarding.workers.worker_api import WorkerApi, WorkerGroupBase, api_methods


def api_signature(method: Any) -> inspect.Signature:
    """The method's signature without the `_ray_trace_ctx` keyword that `ray.remote` adds to an actor
    class's methods (on the class itself, so every test after a Ray group sees it)."""
    signature = inspect.signature(method)
    return signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "_ray_trace_ctx"])


def declaration_problems(worker_cls: type) -> list[str]:
    """What keeps `worker_cls`'s public methods from being the group's typed API, one line each."""
    public = {name for name, _ in inspect.getmembers(worker_cls, inspect.isfunction) if not name.startswith("_")}
    problems = []
    for name in sorted(public | set(api_methods())):
        method = getattr(worker_cls, name, None)
        if method is None:
            problems.append(f"{name}: not a worker method")
            continue
        if not hasattr(WorkerApi, name):
            problems.append(f"{name}: not in WorkerApi")
        elif api_signature(method) != api_signature(getattr(WorkerApi, name)):
            problems.append(f"{name}: another signature than WorkerApi's")
        try:
            declaration_of(method)
        except TypeError:
            problems.append(f"{name}: no @register declaration")
    return problems


def test_every_public_worker_method_is_declared_and_typed_for_the_group():
    assert declaration_problems(ActorRolloutRefWorker) == []


def test_the_check_holds_once_ray_has_made_the_worker_an_actor_class():
    """`ray.remote` rewrites the worker's method signatures in place (Ray's tracing keyword): the
    check must read the API as declared, whichever test made a Ray group first."""
    import ray

    ray.remote(num_cpus=1)(ActorRolloutRefWorker)
    assert "_ray_trace_ctx" in inspect.signature(ActorRolloutRefWorker.compute_log_prob).parameters
    assert declaration_problems(ActorRolloutRefWorker) == []


def test_a_worker_method_without_its_declaration_is_found():
    """What the check above sees when a declaration is removed, or a public method is added bare."""

    class Undeclared(ActorRolloutRefWorker):
        def update_teacher(self, weight: float) -> None:  # the override has no @register
            pass

        def peek(self) -> None:
            pass

    assert declaration_problems(Undeclared) == [
        "peek: not in WorkerApi", "peek: no @register declaration", "update_teacher: no @register declaration",
    ]


class Probe:
    """A worker of rank `rank` that records its calls."""

    def __init__(self, config: Any, rank: int, world_size: int) -> None:
        self.rank, self.calls = rank, []

    @register(Dispatch.SAME_ARGS, first_rank)
    def update_teacher(self, weight: float) -> None:
        self.calls.append(("update_teacher", weight))

    @register(Dispatch.SAME_ARGS, first_rank)
    def whoami(self, tag: str) -> tuple[int, str]:
        return self.rank, tag

    @register(Dispatch.SPLIT_ROWS, concat_rows)
    def mark_rows(self, batch: Batch, offset: int) -> Batch:
        return Batch({"x": batch["x"], "rank": torch.full((len(batch),), self.rank + offset)})

    def undeclared(self, tag: str) -> str:
        return tag


class InProcessRanks(WorkerGroupBase):
    """A group of `world_size` probes in this process."""

    def __init__(self, world_size: int, worker_cls: type = Probe) -> None:
        self.worker_cls, self.world_size = worker_cls, world_size
        self.workers = [worker_cls(None, rank, world_size) for rank in range(world_size)]

    def _run(self, name: str, calls: RankCalls) -> list[Any]:
        return [getattr(worker, name)(*args, **kwargs) for worker, (args, kwargs) in zip(self.workers, calls)]

    def close(self) -> None:
        self.workers = []


def test_a_group_calls_every_rank_as_the_declaration_says():
    group = InProcessRanks(2)
    group.update_teacher(0.25)  # the typed method, made from the worker's declaration
    assert [w.calls for w in group.workers] == [[("update_teacher", 0.25)]] * 2
    assert group.call(Probe.whoami, "a") == (0, "a")  # the first rank's answer
    rows = group.call(Probe.mark_rows, Batch({"x": torch.arange(6)}), offset=10)
    assert rows["x"].tolist() == list(range(6)) and rows["rank"].tolist() == [10, 10, 10, 11, 11, 11]
    with pytest.raises(ValueError, match="data.train_batch_size"):
        group.call(Probe.mark_rows, Batch({"x": torch.arange(5)}), offset=0)
    with pytest.raises(TypeError, match="mark_rows splits its first argument's rows .*by position"):
        group.call(Probe.mark_rows, batch=Batch({"x": torch.arange(6)}), offset=0)


def test_a_method_without_a_declaration_cannot_be_called_through_a_group():
    class Bare(Probe):
        def update_teacher(self, weight: float) -> None:  # overrides the declared one without @register
            self.calls.append(("bare", weight))

    with pytest.raises(TypeError, match="declares no @register"):
        InProcessRanks(2).call(Probe.undeclared, "a")
    bare = InProcessRanks(2, worker_cls=Bare)
    with pytest.raises(TypeError, match=r"Bare\.update_teacher declares no @register"):
        bare.update_teacher(0.5)
    assert [w.calls for w in bare.workers] == [[], []]  # refused before any rank ran it


def test_the_local_group_is_a_group_of_one(monkeypatch):
    """`LocalWorkerGroup` hands the batch itself to its one worker and refuses undeclared methods too;
    closed, it leaves the process's environment as it found it (no rendezvous of a world that is gone)."""
    from corewarding.workers.local_group import RENDEZVOUS_VARIABLES, LocalWorkerGroup

    for key in RENDEZVOUS_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")  # the user's own: kept while the group runs and after
    config = load_config(compose_config(["trainer.device=cpu", "trainer.n_gpus_per_node=1",
                                         "actor_rollout_ref.model.path=/nonexistent"]), check_paths=False)
    group = LocalWorkerGroup(config, worker_cls=Probe)
    batch = Batch({"x": torch.arange(3)})
    assert group.call(Probe.mark_rows, batch, offset=0)["rank"].tolist() == [0, 0, 0]
    assert group.call(Probe.whoami, "b") == (0, "b")
    with pytest.raises(TypeError, match="declares no @register"):
        group.call(Probe.undeclared, "b")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and os.environ["GLOO_SOCKET_IFNAME"] == "eth7"
    group.close()
    assert group.workers == []
    assert {key: os.environ.get(key) for key in RENDEZVOUS_VARIABLES} == {
        **dict.fromkeys(RENDEZVOUS_VARIABLES), "GLOO_SOCKET_IFNAME": "eth7"}
