"""N worker actors in one Ray placement group, forming one torch.distributed group (the one worker of
a single-process run lives in `local_group.py`, which does not import Ray).

The caller (the trainer) initialises Ray, builds the group, then calls `group.init_model(steps)`;
every worker method (`worker_api.WorkerApi`) is called on all ranks at once, as its `@register`
declaration says: with the same arguments, or with an equal share of a batch's rows.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from corewarding.config import Config
from corewarding.logs import is_verbose, worker_env
from corewarding.startup import RAY_WORKER_ENV
from corewarding.workers.dispatch import RankCalls
from corewarding.workers.fsdp_worker import ActorRolloutRefWorker
from corewarding.workers.ports import free_port
from corewarding.workers.preload import cpu_preload_libraries, with_preload
from corewarding.workers.worker_api import WorkerGroupBase


@ray.remote(num_cpus=1)
def _address_and_free_port() -> tuple[str, int]:
    """Run inside rank 0's bundle: that node's address and a port free there."""
    return ray.util.get_node_ip_address(), free_port()


def rendezvous(placement_group: Any, first_bundle: int, loopback: bool) -> tuple[str, int]:
    """Rank 0's address and a port free there. On loopback every rank is on this machine: no task to
    place (on CPU a task is a worker process's start, ~1 s); a cluster asks inside rank 0's bundle."""
    if loopback:
        return "127.0.0.1", free_port()
    strategy = PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=first_bundle)
    return ray.get(_address_and_free_port.options(scheduling_strategy=strategy).remote())


def uses_loopback(config: Config) -> bool:
    """Rendezvous on 127.0.0.1: a single node with a Ray session of its own (no ray_init.address),
    which `init_ray` binds to loopback too; a cluster uses rank 0's node address."""
    return config.trainer.nnodes == 1 and not config.ray_init.address


def ranks_by_node(bundle_nodes: list[str], tp: int) -> list[tuple[int, int]]:
    """(bundle index, local rank) of each rank: the bundles on one node take consecutive ranks (nodes
    in the order of their first bundle), so that a TP group of consecutive ranks stays on one node;
    PACK placement alone does not promise that. A node whose worker count tp does not divide is refused."""
    ranks: list[tuple[int, int]] = []
    for node in dict.fromkeys(bundle_nodes):
        bundles = [i for i, n in enumerate(bundle_nodes) if n == node]
        if len(bundles) % tp:
            raise RuntimeError(
                f"Ray placed {len(bundles)} workers on node {node[:12]}, not a multiple of "
                f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp}: a TP group would span two nodes. "
                "Give every node the same number of GPUs (trainer.n_gpus_per_node) and no other GPU jobs"
            )
        ranks += [(bundle, local) for local, bundle in enumerate(bundles)]
    return ranks


class RayWorkerGroup(WorkerGroupBase):
    def __init__(self, config: Config, worker_cls: type = ActorRolloutRefWorker) -> None:
        trainer = config.trainer
        self.config = config
        self.worker_cls = worker_cls
        self.on_gpu = trainer.device != "cpu"
        self.nnodes = trainer.nnodes
        self.per_node = trainer.n_gpus_per_node
        self.world_size = trainer.world_size
        cpus = trainer.cpus_per_worker or 1
        bundle = {"GPU": 1, "CPU": cpus} if self.on_gpu else {"CPU": cpus}
        self.placement_group = placement_group([dict(bundle) for _ in range(self.world_size)], strategy="PACK")
        try:
            ray.get(self.placement_group.ready(), timeout=float(os.environ.get("COREWARDING_PG_TIMEOUT", 600)))
        except ray.exceptions.GetTimeoutError as exc:
            remove_placement_group(self.placement_group)
            unit = "GPUs" if self.on_gpu else "CPUs"
            raise RuntimeError(
                f"Ray cannot place {self.world_size} workers (1 {unit[:-1]} each; trainer.nnodes={self.nnodes} x "
                f"trainer.n_gpus_per_node={self.per_node}); cluster resources: {ray.cluster_resources()}. "
                f"Lower trainer.n_gpus_per_node / trainer.nnodes or add {unit}."
            ) from exc

        self.loopback = loopback = uses_loopback(config)
        nodes = ray.util.placement_group_table(self.placement_group)["bundles_to_node_id"]
        bundle_nodes = [nodes[i] for i in range(self.world_size)]
        ranks = ranks_by_node(bundle_nodes, config.actor_rollout_ref.rollout.tensor_model_parallel_size)
        self.node_of_rank = [bundle_nodes[bundle] for bundle, _ in ranks]
        master_addr, master_port = rendezvous(self.placement_group, ranks[0][0], loopback)
        self.master_addr = master_addr
        remote_cls = ray.remote(worker_cls)
        self.workers = []
        preload = cpu_preload_libraries()  # found on the driver: the nodes of a cluster share its image
        for rank, (bundle, local_rank) in enumerate(ranks):
            env = {
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
                "RANK": str(rank),
                "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": str(local_rank),
                "OMP_NUM_THREADS": str(cpus),
                RAY_WORKER_ENV: "1",
            }
            env.update(worker_env(trainer.default_local_dir, rank, is_verbose(trainer.verbose)))
            if not self.on_gpu and trainer.cpu_preload and preload:
                env["LD_PRELOAD"] = with_preload(os.environ.get("LD_PRELOAD", ""), preload)
            if loopback:
                env["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
            options: dict[str, Any] = dict(
                num_cpus=cpus,
                num_gpus=1 if self.on_gpu else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement_group, placement_group_bundle_index=bundle
                ),
                runtime_env={"env_vars": env},
            )
            self.workers.append(remote_cls.options(**options).remote(config, rank, self.world_size))
        if trainer.preemption_signals:
            self.ignore_signals(list(trainer.preemption_signals))

    def _run(self, name: str, calls: RankCalls) -> list[Any]:
        return ray.get([getattr(worker, name).remote(*args, **kwargs)
                        for worker, (args, kwargs) in zip(self.workers, calls)])

    def close(self) -> None:
        for worker in getattr(self, "workers", []):
            try:
                ray.kill(worker)
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
        self.workers = []
        if getattr(self, "placement_group", None) is not None:
            try:
                remove_placement_group(self.placement_group)
            except Exception:  # noqa: BLE001
                pass
            self.placement_group = None

