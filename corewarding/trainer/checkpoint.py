"""Checkpoint folders: atomic writes, the driver's state, finding where to resume.

The folder and file names, and the rule that finds a run's latest checkpoint, are
`corewarding.checkpoint_layout`'s (export follows the same rule). Under `trainer.default_local_dir`
the workers write the policy, optimizer, scheduler, reference/teacher and their RNG states into
`global_step_<N>/`; the driver writes `trainer_state.json` last, and then
`latest_checkpointed_iteration.txt`.

A checkpoint is written into `global_step_<N>.tmp/` and renamed when complete, so a crash never
leaves a half-written `global_step_<N>/`; `latest_checkpointed_iteration.txt` is replaced atomically
after the rename. Every file, the folders and the latest file are fsynced before the rename that
publishes them, so a power loss cannot leave `latest` naming a checkpoint whose data is not on disk.

Retention (`trainer.max_actor_ckpt_to_keep`) only ever deletes checkpoints older than the one just
saved, never that one (which `latest` names). A run never writes into a folder that holds
checkpoints after its starting step (`check_start_step`): to go back to step N, branch into a new
`trainer.default_local_dir` with `trainer.resume_from_path=<old run>/global_step_N`, or delete the
later checkpoints first.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from corewarding.checkpoint_layout import (
    LATEST_FILE,
    checkpoint_steps,
    describe_steps,
    latest_step_dir,
    staging_dir,
    step_dir,
    step_name,
)
from corewarding.storage import CheckpointError, describe_error, fsync_dir, replace_dir, write_text

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
STATE_VERSION = 1


def begin(root: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of `step`."""
    tmp = staging_dir(root, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(root: str | Path, step: int, tmp: Path, state: dict[str, Any], keep: int | None = None) -> Path:
    """Write the driver state into `tmp`, rename it to global_step_<step>, point the latest file at
    it and drop the oldest checkpoints beyond `keep` (never this one, never a later one). A failed
    write (a full disk) removes `tmp` and raises `CheckpointError` naming the checkpoint still good."""
    root = Path(root)
    final = step_dir(root, step)
    state = {"version": STATE_VERSION, "global_step": int(step), "complete": True, **state}
    try:
        write_text(tmp / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))
        fsync_dir(tmp)
        replace_dir(tmp, final)
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise save_failed(root, step, exc) from exc
    try:
        write_text(root / LATEST_FILE, str(int(step)))
    except OSError as exc:  # latest still names the previous checkpoint: the new one is not used
        shutil.rmtree(final, ignore_errors=True)
        raise save_failed(root, step, exc) from exc
    if keep is not None and keep > 0:
        prune(root, int(step), keep)
    return final


def prune(root: str | Path, newest: int, keep: int) -> list[int]:
    """Delete all but the `keep` highest checkpoints at or below step `newest` (the one just saved,
    which is always kept); checkpoints after `newest` are never touched. Returns the steps deleted."""
    older = [s for s in checkpoint_steps(root) if s < newest]
    doomed = older[: max(0, len(older) - (keep - 1))]
    for old_step in doomed:
        shutil.rmtree(step_dir(root, old_step), ignore_errors=True)
    return doomed


def check_start_step(root: str | Path, start: int, resumed_from: Path | None) -> None:
    """Refuse a run that starts at step `start` in a folder holding checkpoints after it: its own
    saves would overwrite them and retention would mix two histories."""
    later = [s for s in checkpoint_steps(root) if s > start]
    if not later:
        return
    found = describe_steps(later)
    how = (
        f"to branch from step {start} set trainer.default_local_dir to a new folder (keep "
        f"trainer.resume_from_path={resumed_from}), or delete the later checkpoints to go back"
        if resumed_from is not None
        else "resume it (trainer.resume_mode=auto), set trainer.default_local_dir to a new folder, or delete them"
    )
    raise CheckpointError(
        f"trainer.default_local_dir={root} holds checkpoints after step {start} ({found}) that this run "
        f"would overwrite: {how}"
    )


def folder_bytes(path: str | Path) -> int:
    """The size of the files under `path` (a checkpoint: what one save costs on disk)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save_failed(root: str | Path, step: int, reason: BaseException | str) -> CheckpointError:
    """The one-line error of a failed save: what went wrong and which checkpoint is still good."""
    reason = describe_error(reason) if isinstance(reason, BaseException) else str(reason)
    try:
        good = latest_dir(root)
    except CheckpointError:
        good = None
    still = f"{good} is still good" if good is not None else "no earlier checkpoint exists"
    return CheckpointError(f"cannot save checkpoint {step_name(step)} in {root}: {reason}; {still}")


def latest_dir(root: str | Path) -> Path | None:
    """The checkpoint to resume in run folder `root` (`checkpoint_layout.latest_step_dir`, the rule
    export follows too), or None when there is none; its errors say how to resume or start afresh."""
    try:
        return latest_step_dir(root)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}; to resume a checkpoint by name: trainer.resume_mode=resume_path trainer.resume_from_path=<folder>, "
            "to start afresh: trainer.resume_mode=disable"
        ) from None


def read_state(path: str | Path) -> dict[str, Any]:
    """The driver state of a checkpoint folder; a clear `CheckpointError` when it is not usable."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"resume checkpoint {path} does not exist (trainer.resume_from_path)")
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(
            f"checkpoint {path} is incomplete (no {STATE_FILE}); delete it or resume from an earlier global_step_* folder"
        )
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt ({STATE_FILE}: {exc}); delete it or resume from an earlier one") from exc
    if not isinstance(state, dict) or not state.get("complete") or "global_step" not in state:
        raise CheckpointError(f"checkpoint {path} is corrupt ({STATE_FILE} lacks global_step/complete); delete it")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise CheckpointError(f"checkpoint {path} was written by a newer version (state version {state['version']})")
    return state
