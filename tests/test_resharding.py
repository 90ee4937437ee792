"""Re-slicing FSDP2 optimizer shards across worker counts (`worker_state.load_optimizer_shard`) on
uneven shards: 3 gloo ranks save AdamW moments of a model whose dimension 0 sizes (5, 1) do not
divide by 3 or 2 (FSDP2 gives ranks 2, 2, 1 rows and 1, 0, 0), 2 ranks load them. The moments
must come back bit for bit. The Ray worker test (test_workers_checkpoints.py) covers the whole checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from spawned_ranks import run_spawned_ranks

pytestmark = pytest.mark.slow


def _model_and_optimizer(world: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    mesh = init_device_mesh("cpu", (world,))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def _full_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    state = get_optimizer_state_dict(model, optimizer)["state"]
    return {f"{fqn}::{key}": (value.full_tensor() if isinstance(value, DTensor) else value).clone()
            for fqn, entries in state.items() for key, value in entries.items() if isinstance(value, torch.Tensor)}


def _rank(rank: int, world: int, port: int, folder: str, phase: str) -> None:
    import torch.distributed as dist

    from corewarding.workers.checkpoint import worker_state

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = Path(folder)
    model, optimizer = _model_and_optimizer(world)
    if phase == "save":
        for seed in (1, 2):  # two steps: moments that are not a function of one gradient
            x = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed))
            model(x).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        shard = worker_state.optimizer_shard(model, optimizer)
        worker_state.save_safetensors(shard["tensors"], out / f"rank_{rank}.safetensors")
        if rank == 0:
            worker_state.write_json(out / "state.json", {"optimizer_scalars": shard["scalars"],
                                                         "param_groups": shard["param_groups"]})
    else:
        saved = json.loads((out / "state.json").read_text())
        files = [out / f"rank_{r}.safetensors" for r in range(3)]

        def agree(error, what):
            if error is not None:
                raise RuntimeError(what) from error

        worker_state.load_optimizer_shard(model, optimizer, files, rank, world, saved, agree)
    moments = _full_moments(model, optimizer)
    if rank == 0:
        worker_state.save_safetensors(moments, out / f"moments_{phase}.safetensors")
    dist.destroy_process_group()


def test_uneven_shards_of_three_ranks_load_on_two(tmp_path):
    from corewarding.workers.ports import free_port

    for phase, world in (("save", 3), ("load", 2)):
        port = free_port()
        run_spawned_ranks(_rank, [(r, world, port, str(tmp_path), phase) for r in range(world)], timeout=300)
    from safetensors.torch import load_file

    shards = [load_file(str(tmp_path / f"rank_{r}.safetensors")) for r in range(3)]
    assert [s["0.weight::exp_avg"].shape[0] for s in shards] == [2, 2, 1]
    assert [s["2.bias::exp_avg"].shape[0] for s in shards] == [1, 0, 0]
    saved, loaded = (load_file(str(tmp_path / f"moments_{phase}.safetensors")) for phase in ("save", "load"))
    assert set(saved) == set(loaded) and any("exp_avg_sq" in k for k in saved)
    for name in saved:
        assert torch.equal(loaded[name], saved[name]), name
