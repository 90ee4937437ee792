"""Saving and restoring one worker (`ActorRolloutRefWorker.save_checkpoint` / `load_checkpoint` /
`export_hf`): the policy, its optimizer and LR schedule, the reference model, the counters and this
rank's RNG states, in the files and formats of `worker_state` and `rng_state`, where
`checkpoint_layout` names them. Every rank calls these together; a write or read that fails on any
rank makes every rank raise the same one-line error at once (`worker_state.agree_on_error`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers.utils import GENERATION_CONFIG_NAME as GENERATION_CONFIG

from corewarding import checkpoint_layout as layout
from corewarding.config import Config
from corewarding.storage import fsync_dir, fsync_tree
from corewarding.workers import rng_state
from corewarding.workers.checkpoint import worker_state
from corewarding.workers.checkpoint.worker_state import MODEL_FILE, attempt
from corewarding.workers.model import sharding
from corewarding.workers.rollout_runner import RolloutRunner, rollout_seed


class CheckpointedWorker(Protocol):
    """What of a worker its checkpoint writes and restores."""

    config: Config
    rank: int
    world_size: int
    device: torch.device
    tokenizer: Any
    actor: torch.nn.Module
    ref: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: LRScheduler
    rollout: RolloutRunner
    policy_version: int
    teacher_version: int
    skipped_steps: int


def _agree(worker: CheckpointedWorker) -> Callable[[BaseException | None, str], None]:
    """`worker_state.agree_on_error` over the worker's ranks."""
    return lambda error, what: worker_state.agree_on_error(error, what, worker.rank, worker.world_size)


def _write_hf_folder(worker: CheckpointedWorker, out_dir: Path, state: dict[str, torch.Tensor],
                     with_config: bool = True) -> None:
    """model.safetensors (+ config, generation config, tokenizer) in `out_dir`, all fsynced."""
    out_dir.mkdir(parents=True, exist_ok=True)
    worker_state.save_safetensors(state, out_dir / MODEL_FILE, metadata={"format": "pt"})
    if with_config:
        worker.actor.config.save_pretrained(out_dir)
        source = Path(worker.config.actor_rollout_ref.model.path) / GENERATION_CONFIG
        if source.is_file():  # as it came: transformers refuses to save some it loads (a temperature, no do_sample)
            shutil.copyfile(source, out_dir / GENERATION_CONFIG)
        elif getattr(worker.actor, "generation_config", None) is not None:  # made from config.json: unvalidated
            worker.actor.generation_config.to_json_file(out_dir / GENERATION_CONFIG)
        worker.tokenizer.save_pretrained(out_dir)
    fsync_tree(out_dir)


def export(worker: CheckpointedWorker, model: torch.nn.Module, out_dir: Path) -> None:
    """`model` (the policy or the reference) as a plain HF folder, written by rank 0."""
    state = sharding.gather_full_state(model)
    error = attempt(lambda: _write_hf_folder(worker, out_dir, state)) if worker.rank == 0 else None
    _agree(worker)(error, f"export to {out_dir} failed")


def save(worker: CheckpointedWorker, root: Path) -> None:
    """This worker's part of the checkpoint folder `root`."""
    agree = _agree(worker)
    # the reference changes only as an EMA teacher; until its first update it is the model folder
    save_ref = worker.teacher_version > 0
    actor_state = sharding.gather_full_state(worker.actor)

    def write_models() -> None:
        _write_hf_folder(worker, layout.actor_dir(root), actor_state)
        layout.optim_dir(root).mkdir(parents=True, exist_ok=True)
        layout.rng_dir(root).mkdir(parents=True, exist_ok=True)
        fsync_dir(root)

    agree(attempt(write_models) if worker.rank == 0 else None, "write failed")
    del actor_state
    if save_ref:  # after the actor's write: rank 0 holds one full model in memory at a time
        ref_state = sharding.gather_full_state(worker.ref)

        def write_ref() -> None:
            _write_hf_folder(worker, layout.ref_dir(root), ref_state, with_config=False)
            fsync_dir(root)  # the new ref/ entry

        agree(attempt(write_ref) if worker.rank == 0 else None, "write failed")
        del ref_state
    has_state = bool(worker.optimizer.state)  # one that never stepped has none; asking would fake a step
    optim = worker_state.optimizer_shard(worker.actor, worker.optimizer) if has_state else None
    agree(attempt(lambda: _write_states(worker, root, optim, has_state, save_ref)), "write failed")
    if worker.rank == 0:  # the names the other ranks created, now that all have written
        for folder in (layout.optim_dir(root), layout.rng_dir(root)):
            fsync_dir(folder)


def _write_states(worker: CheckpointedWorker, root: Path, optim: dict[str, Any] | None, has_state: bool,
                  ref_saved: bool) -> None:
    if optim is not None:
        worker_state.save_safetensors(optim["tensors"], layout.optim_shard_file(root, worker.rank))
    if worker.rank == 0:
        state = {
            "format": worker_state.CHECKPOINT_FORMAT,
            "scheduler": worker.lr_scheduler.state_dict(),
            "optimizer_has_state": has_state,
            "optimizer_scalars": optim["scalars"] if optim else {},
            "param_groups": optim["param_groups"] if optim else [],
            "policy_version": worker.policy_version,
            "teacher_version": worker.teacher_version,
            "skipped_steps": worker.skipped_steps,
            "world_size": worker.world_size,
            "tensor_parallel_size": worker.config.actor_rollout_ref.rollout.tensor_model_parallel_size,
            # False: the reference is the model folder it started from (not written again)
            "ref_saved": ref_saved,
            "model_path": str(worker.config.actor_rollout_ref.model.path),
        }
        worker_state.write_json(layout.optim_dir(root) / layout.OPTIM_STATE_FILE, state)
    worker_state.write_json(layout.rng_file(root, worker.rank), rng_state.rng_to_json(worker.device, worker.rollout.rng))


def load_models(worker: CheckpointedWorker, root: Path) -> dict[str, Any]:
    """The policy's weights and, when the checkpoint saved it, the reference's; returns the
    checkpoint's state (`worker_state.check_complete`)."""
    agree = _agree(worker)
    saved = worker_state.check_complete(root)
    sharding.load_full_state(worker.actor, layout.actor_dir(root) / MODEL_FILE, worker.rank, agree)
    model_path = str(worker.config.actor_rollout_ref.model.path)
    if not saved.get("ref_saved", True) and saved.get("model_path") not in (None, model_path):
        # the same on every rank (one config): all ranks raise together
        raise ValueError(f"checkpoint {root} did not save its reference model, which is the model folder the run "
                         f"started from ({saved['model_path']}); this run has actor_rollout_ref.model.path="
                         f"{model_path}: resume with that path")
    if saved.get("ref_saved", True):
        sharding.load_full_state(worker.ref, layout.ref_dir(root) / MODEL_FILE, worker.rank, agree)
    return saved


def load_training_state(worker: CheckpointedWorker, root: Path, saved: dict[str, Any]) -> None:
    """The optimizer (re-sliced from every rank's shard on another worker count), the LR schedule,
    the counters and this rank's RNG states (re-derived on another worker count or tensor-parallel
    size: `_reseed`)."""
    agree = _agree(worker)
    saved_world = int(saved["world_size"])
    if saved["optimizer_has_state"]:
        shards = [layout.optim_shard_file(root, r) for r in range(saved_world)]
        worker_state.load_optimizer_shard(worker.actor, worker.optimizer, shards, worker.rank, worker.world_size, saved,
                                          agree)
    else:
        worker.optimizer.state.clear()
    worker.lr_scheduler.load_state_dict(saved["scheduler"])
    for group, lr in zip(worker.optimizer.param_groups, worker.lr_scheduler.get_last_lr()):
        group["lr"] = lr
    worker.policy_version = int(saved["policy_version"])
    worker.teacher_version = int(saved["teacher_version"])
    worker.skipped_steps = int(saved.get("skipped_steps", 0))
    worker.rollout.forget_weights()
    tp = worker.config.actor_rollout_ref.rollout.tensor_model_parallel_size
    if saved_world != worker.world_size or int(saved.get("tensor_parallel_size", tp)) != tp:
        _reseed(worker)
        return
    rng_file = layout.rng_file(root, worker.rank)
    error, rollout_rng = None, worker.rollout.rng
    try:
        rollout_rng = rng_state.rng_from_json(json.loads(rng_file.read_text(encoding="utf-8")), worker.device)
    except Exception as exc:  # noqa: BLE001 - a bad file on one rank must fail all ranks together
        error = exc
    agree(error, f"cannot read {rng_file}")
    worker.rollout.rng = rollout_rng


def _reseed(worker: CheckpointedWorker) -> None:
    """After a resume on another worker count, the rows a rank samples are not the ones it sampled
    before; on another tensor-parallel size, the ranks of a TP group must draw the same seeds, which
    streams saved per rank do not: so no saved stream continues. Every rank's trainer and rollout
    streams start anew from its seed and the policy version (`rng_state.resumed_seed`), the same
    for the same checkpoint."""
    rollout = worker.config.actor_rollout_ref.rollout
    rng_state.seed_process(rng_state.resumed_seed(rollout.seed + worker.rank, worker.policy_version))
    worker.rollout.rng = rng_state.seeded_rng_state(
        rng_state.resumed_seed(rollout_seed(rollout, worker.rank), worker.policy_version), worker.device)
