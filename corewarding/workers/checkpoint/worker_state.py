"""A worker's part of a checkpoint: files, formats, and the rule that a failure on any rank fails
every rank at once.

Inside `global_step_<N>/` (names and paths: `corewarding.checkpoint_layout`): `actor/` (HF folder of
the policy), `ref/model.safetensors` (only once the reference differs from the model folder: an EMA
teacher after its first update), `actor/optim/rank_<r>.safetensors` (each rank's optimizer shard)
with `actor/optim/state.json` (param groups, scheduler, counters, format), `rng/rank_<r>.json` (the
RNG states, `workers/rng_state.py`). Only safetensors and JSON: nothing in a checkpoint is unpickled, so
loading one cannot run code. Every file is fsynced.

A checkpoint of N workers loads on M: the models are saved whole; each rank cuts its slice of the
optimizer moments from all N shards (`reslice`), and the RNG streams restart from
`rng_state.resumed_seed`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from corewarding import checkpoint_layout as layout
from corewarding.storage import WorkerCheckpointError, describe_error, fsync_file
from corewarding.workers.model.sharding import local

MODEL_FILE = "model.safetensors"
CHECKPOINT_FORMAT = 2  # 2: safetensors + JSON (1: torch.save pickles + torch.distributed.checkpoint)


# ----------------------------------------------------------------------------------- failing together
def agree_on_error(error: BaseException | None, what: str, rank: int, world_size: int) -> None:
    """Every rank learns whether any rank failed (one all-gather of the error texts, where the
    ranks would otherwise wait at a barrier), then all raise the same one-line
    `WorkerCheckpointError` together, instead of the others hanging until the distributed timeout."""
    text = None if error is None else f"{what} on rank {rank}: {describe_error(error)}"
    texts: list[str | None] = [text]
    if world_size > 1:
        texts = [None] * world_size
        dist.all_gather_object(texts, text)
    failed = [t for t in texts if t]
    if failed:
        more = f" (and on {len(failed) - 1} more ranks)" if len(failed) > 1 else ""
        raise WorkerCheckpointError(failed[0] + more)


def attempt(write: Callable[[], Any]) -> BaseException | None:
    """Run `write`; the exception it raised (any kind: all ranks must hear of it), else None."""
    try:
        write()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


# ----------------------------------------------------------------------------------- files
def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, fsynced; its errors (it reports a full disk in words) name the file."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - SafetensorError is not an OSError
        raise RuntimeError(f"{path}: {exc}") from exc
    fsync_file(path)


def write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())


def check_complete(root: Path) -> dict[str, Any]:
    """The checkpoint's state.json, after checking that the files of every rank that wrote it are
    there (every rank checks all of them, so that all raise together and none is left in a collective)."""
    optim = layout.optim_dir(root)
    state_file = optim / layout.OPTIM_STATE_FILE
    if not state_file.exists() and (optim / "extra.pt").exists():
        raise FileNotFoundError(
            f"checkpoint {root} was written by an older version in a pickle format, which is not loaded "
            "(unpickling a file can run code): resume from a checkpoint written by this version"
        )
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else {}
    needed = [layout.actor_dir(root) / MODEL_FILE, state_file]
    needed += [layout.rng_file(root, r) for r in range(int(state.get("world_size", 0)))]
    if state.get("ref_saved", bool(state)):  # without state.json, whether a reference belongs there is unknown
        needed.append(layout.ref_dir(root) / MODEL_FILE)
    missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint {root} is incomplete (missing {', '.join(missing[:3])}): delete it or "
                                "point trainer.resume_from_path at a complete one")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {root} has format {state.get('format')!r}, this version reads {CHECKPOINT_FORMAT}")
    if state["optimizer_has_state"]:
        lost = [r for r in range(int(state["world_size"])) if not layout.optim_shard_file(root, r).exists()]
        if lost:
            missing = layout.optim_shard_file(root, lost[0]).relative_to(root)
            raise FileNotFoundError(f"checkpoint {root} is incomplete (missing {missing})")
    return state


# ----------------------------------------------------------------------------------- optimizer shards
def optimizer_shard(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's optimizer state: local tensors by "<param fqn>::<key>", JSON-able scalars, param groups."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for fqn, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{fqn}::{key}"] = local(value).detach().to("cpu").contiguous()
            else:
                scalars[f"{fqn}::{key}"] = value
    return {"tensors": tensors, "scalars": scalars, "param_groups": state["param_groups"]}


def load_optimizer_shard(model: torch.nn.Module, optimizer: torch.optim.Optimizer, shard_files: list[Path], rank: int,
                         world_size: int, saved: dict[str, Any], agree: Callable[[BaseException | None, str], None]) -> None:
    """Fill this rank's optimizer state, in place, from the shards of the ranks that saved it: its
    own shard when the worker count is the same, else this rank's slice of every moment cut anew
    from all of them (`reslice`)."""
    from safetensors import safe_open
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer)  # the layout, with local shards to fill
    same_layout = len(shard_files) == world_size
    error = None
    try:
        with contextlib.ExitStack() as stack:  # tensors are read one at a time, not whole files
            files = [stack.enter_context(safe_open(str(f), framework="pt")) for f in shard_files]
            own = files[rank] if same_layout else None
            for fqn, entries in state["state"].items():
                for key, value in entries.items():
                    name = f"{fqn}::{key}"
                    if not isinstance(value, torch.Tensor):
                        entries[key] = saved["optimizer_scalars"][name]
                    elif own is not None:
                        local(value).copy_(own.get_tensor(name))
                    else:
                        local(value).copy_(reslice(value, [f.get_tensor(name) for f in files], name))
    except Exception as exc:  # noqa: BLE001 - a bad shard on one rank must fail all ranks together
        error = exc
    agree(error, f"cannot read the optimizer shards {shard_files[0].parent}")
    groups = saved["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    state["param_groups"] = groups
    set_optimizer_state_dict(model, optimizer, state)


def reslice(target: torch.Tensor, saved: list[torch.Tensor], name: str) -> torch.Tensor:
    """This rank's part of `target` (a DTensor sharded on dimension 0, or a plain tensor every rank
    holds whole, as AdamW's step) from the parts `saved` by the ranks of another worker count.

    FSDP2 cuts dimension 0 as `torch.chunk` does: every rank ceil(n / world) rows, the last ones fewer
    or none (the padding it adds is not part of the local shard, nor of the saved files). The
    saved parts, in rank order, are therefore the whole tensor once concatenated."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(target, DTensor):
        return saved[0]
    if tuple(target.placements) != (Shard(0),):
        raise ValueError(f"{name}: cannot re-slice a {target.placements} tensor (FSDP2 shards dimension 0)")
    whole = torch.cat(saved, dim=0)
    if tuple(whole.shape) != tuple(target.shape):
        raise ValueError(f"{name}: the saved shards make {tuple(whole.shape)}, the model has {tuple(target.shape)}")
    index, parts = target.device_mesh.get_local_rank(), target.device_mesh.size()
    chunks = torch.chunk(whole, parts, dim=0)
    mine = chunks[index] if index < len(chunks) else whole[:0]
    if mine.shape != local(target).shape:
        raise ValueError(f"{name}: this rank's slice is {tuple(mine.shape)}, its shard {tuple(local(target).shape)}")
    return mine
