"""Saving a trained step and resuming from a checkpoint: the workers' files and the driver's state
together (`checkpoint.py` owns the folders: the atomic commit, retention, the driver's state file)."""

from __future__ import annotations

import logging
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from corewarding.data import StatefulLoader
from corewarding.trainer import checkpoint as ckpt
from corewarding.workers.worker_api import WorkerGroup

logger = logging.getLogger(__name__)


def worker_error(exc: BaseException) -> str:
    """The one-line message of an exception a worker raised (Ray wraps it with a traceback)."""
    cause = getattr(exc, "cause", None)
    cause = cause if isinstance(cause, BaseException) else exc
    lines = str(cause).strip().splitlines()
    return ckpt.describe_error(cause) if isinstance(cause, OSError) or not lines else lines[-1]


def save_step(workers: WorkerGroup, root: str | Path, step: int, driver_state: dict[str, Any], keep: int | None,
              publishing: AbstractContextManager[Any]) -> Path:
    """Workers write into global_step_<N>.tmp, the driver commits it (inside `publishing`). A failed
    write anywhere (a full disk) removes the .tmp folder and raises one `CheckpointError` line naming
    the checkpoint that is still good."""
    try:
        tmp = ckpt.begin(root, step)
    except OSError as exc:
        raise ckpt.save_failed(root, step, exc) from exc
    try:
        workers.save_checkpoint(str(tmp))
    except Exception as exc:  # noqa: BLE001 - Ray wraps the workers' exception
        shutil.rmtree(tmp, ignore_errors=True)
        raise ckpt.save_failed(root, step, worker_error(exc)) from exc
    with publishing:
        return ckpt.commit(root, step, tmp, driver_state, keep=keep)


def resume(workers: WorkerGroup, path: Path, state: dict[str, Any], method: str, world_size: int,
           loader: StatefulLoader, allow_sampling_change: bool) -> None:
    """The loader and the workers as the checkpoint at `path` left them (`state`: its driver state);
    one `CheckpointError` line when this run cannot resume from it."""
    if state.get("method") not in (None, method):
        raise ckpt.CheckpointError(
            f"checkpoint {path} was written by method {state['method']!r}, this run is {method!r}"
        )
    saved_world = int(state.get("world_size", world_size))
    if saved_world != world_size:  # the workers re-slice the optimizer (worker_state.load_optimizer_shard)
        logger.info("checkpoint %s was written by %d workers, this run has %d: re-slicing its optimizer state and "
                    "re-deriving the sampling RNG streams", path, saved_world, world_size)
    try:  # first: it is cheap and says clearly when the data or batch size changed
        loader.load_state_dict(state["dataloader"], allow_sampling_change)
    except ValueError as exc:
        raise ckpt.CheckpointError(f"checkpoint {path}: {exc}") from exc
    try:
        workers.load_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - Ray wraps the worker's exception
        raise ckpt.CheckpointError(f"checkpoint {path} cannot be loaded by the workers ({worker_error(exc)[:300]}); "
                                   "delete it or resume from an earlier one") from exc
