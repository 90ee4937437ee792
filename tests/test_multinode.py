"""More than one node: ranks are laid out node by node (a TP group never spans two nodes), and a
Ray cluster of two nodes on this machine trains as one node of two workers does."""

from __future__ import annotations

import pytest

from corewarding.workers.group import ranks_by_node
from e2e_runs import comparable, cpu_overrides, run
from e2e_runs import data_files  # fixture


def test_ranks_are_consecutive_on_each_node_whatever_the_bundle_order():
    # PACK may interleave the bundles of two nodes; the ranks then follow the nodes, not the bundles
    assert ranks_by_node(["a", "b", "a", "b"], tp=2) == [(0, 0), (2, 1), (1, 0), (3, 1)]
    assert ranks_by_node(["a", "a", "b", "b"], tp=1) == [(0, 0), (1, 1), (2, 0), (3, 1)]
    with pytest.raises(RuntimeError, match="3 workers on node a.*tensor_model_parallel_size=2"):
        ranks_by_node(["a", "a", "a", "b"], tp=2)


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_as_one_node_does(boxing_model, data_files, tmp_path, monkeypatch,
                                                        two_step_histories):
    """trainer.nnodes=2 on a two-node Ray cluster (both nodes on 127.0.0.1, one CPU worker each):
    the rendezvous takes rank 0's node address (no loopback shortcut), each node holds one rank, and
    two Co-rewarding-I steps log what the single-node two-worker run logs (test_e2e's
    `test_two_steps[co_reward]`, the same settings, when it ran before in this session)."""
    import ray
    from ray.cluster_utils import Cluster

    from corewarding.workers import group

    if ray.is_initialized():
        ray.shutdown()
    single = two_step_histories.get("co_reward")
    if single is None:
        single = run(cpu_overrides(boxing_model, data_files, tmp_path / "one", "co_reward"))["history"]

    groups = []
    original_init = group.RayWorkerGroup.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        groups.append(self)

    monkeypatch.setattr(group.RayWorkerGroup, "__init__", recording_init)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        two = run(cpu_overrides(boxing_model, data_files, tmp_path / "two", "co_reward")
                  + ["trainer.nnodes=2", "trainer.n_gpus_per_node=1", f"ray_init.address={cluster.address}"])
    finally:
        ray.shutdown()
        cluster.shutdown()
    (workers,) = groups
    assert len(set(workers.node_of_rank)) == 2  # one rank on each node
    assert not workers.loopback and workers.master_addr == "127.0.0.1"  # rank 0's node address, asked in its bundle
    assert comparable(two["history"]) == comparable(single)
