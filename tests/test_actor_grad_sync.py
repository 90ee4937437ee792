"""Deferred gradient sync (`defer_grad_sync`, the CPU workers' setting) in one process on a tiny random
Llama: a mini-batch's micro-batches reduce gradients once, at the last, and FSDP2's layers keep their
gathered parameters between them, with the weights of the per-micro-batch update."""

from __future__ import annotations

import dataclasses

import torch

from corewarding.workers.update.actor import ppo_update

from actor_setup import CPU, GradRecorder, load, ragged_rollouts, settings, with_old_log_probs
from actor_setup import model_path  # fixture
from numerics import WEIGHTS_REL, assert_all_rel_close


def test_deferred_sync_keeps_the_gathered_parameters_between_micro_batches(model_path, tmp_path):
    """With `defer_grad_sync` (CPU workers) the FSDP2 layers gather their parameters once per
    mini-batch: the micro-batches after the first find them still gathered (no all-gather, no cast),
    the last backward reshards them and the layers' reshard_after_forward comes back; the weights
    after the step equal those of an update that gathers per micro-batch (GPUs)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from corewarding.workers.model import sharding

    batch = with_old_log_probs(model_path, ragged_rollouts(seed=7), noise=0.3)
    own = not dist.is_initialized()  # a single-process run earlier in this pytest process may hold one
    if own:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        weights = {}
        for defer in (True, False):
            model = load(model_path)
            sharding.shard_model(model, init_device_mesh("cpu", (1,)), torch.float32, offload=False, reshard=True,
                                 rank=0, device=CPU)
            q_proj = model.get_decoder().layers[0].self_attn.q_proj
            held: list[bool] = []  # per forward: layer 0's parameters already gathered when the model starts
            model.get_decoder().register_forward_pre_hook(lambda *_: held.append(not isinstance(q_proj.weight, DTensor)))
            ppo_update(model, torch.optim.SGD(model.parameters(), lr=0.1), batch,
                       settings(defer_grad_sync=defer), 1, world_size=1, device=CPU)
            assert held == ([False, True, True] if defer else [False, False, False])  # 3 micro-batches of 2 rows
            assert all(isinstance(p, DTensor) for p in model.parameters())  # resharded after the last backward
            with torch.no_grad():
                model(input_ids=torch.tensor([[5, 6, 7]]))
            assert isinstance(q_proj.weight, DTensor)  # reshard_after_forward is back
            weights[defer] = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    finally:
        if own:
            dist.destroy_process_group()
    assert_all_rel_close(weights[True], weights[False], WEIGHTS_REL, "weights")


def test_deferred_gradient_sync_reduces_once_per_mini_batch(model_path):
    """With `defer_grad_sync` (CPU workers) a mini-batch's micro-batches run backward without reducing
    gradients over ranks (FSDP2's `set_requires_gradient_sync(False)`) but its last, which reduces the
    sum; the two-rank update still equals one process's (`test_workers.py`)."""
    batch = with_old_log_probs(model_path, ragged_rollouts(seed=7), noise=0.3)
    ppo = settings()  # one mini-batch of 6 rows in micro-batches of 2: 3 micro-batches
    model = load(model_path)
    sync = {"now": True}
    seen: list[bool] = []  # the setting each micro-batch's forward ran under
    model.set_requires_gradient_sync = lambda requires: sync.update(now=requires)
    model.get_decoder().register_forward_pre_hook(lambda module, args: seen.append(sync["now"]))
    ppo_update(model, GradRecorder(model), batch, dataclasses.replace(ppo, defer_grad_sync=True), 1, world_size=1,
               device=CPU)
    assert seen == [False, False, True]
    seen.clear()
    ppo_update(model, GradRecorder(model), batch, ppo, 1, world_size=1, device=CPU)
    assert seen == [True, True, True]  # GPUs: every backward reduces (FSDP2's default), nothing is changed
