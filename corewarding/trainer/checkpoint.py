"""Checkpoint folders: atomic writes, the driver's state, finding where to resume.

Layout under `trainer.default_local_dir`::

    global_step_<N>/                 one checkpoint (the workers write policy, optimizer, scheduler,
      trainer_state.json             reference/teacher and their RNG states inside it; the driver
      ...                            writes trainer_state.json last)
    latest_checkpointed_iteration.txt    N of the newest complete checkpoint

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
import re
import shutil
from pathlib import Path
from typing import Any

from corewarding.storage import (  # noqa: F401  re-exported for the callers of this module
    CheckpointError,
    WorkerCheckpointError,
    describe_error,
    fsync_dir,
    fsync_file,
    fsync_tree,
    replace_dir,
    write_text,
)

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest_checkpointed_iteration.txt"
STATE_VERSION = 1
STEP_DIR = re.compile(r"^global_step_(\d+)$")


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"global_step_{int(step)}"


def begin(root: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of `step`."""
    tmp = step_dir(root, step).with_name(f"global_step_{int(step)}.tmp")
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


def checkpoint_steps(root: str | Path) -> list[int]:
    """The steps of the `global_step_<N>` folders under `root`, ascending (`.tmp` ones excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name)))


def check_start_step(root: str | Path, start: int, resumed_from: Path | None) -> None:
    """Refuse a run that starts at step `start` in a folder holding checkpoints after it: its own
    saves would overwrite them and retention would mix two histories."""
    later = [s for s in checkpoint_steps(root) if s > start]
    if not later:
        return
    found = f"global_step_{later[0]}" + (f" .. global_step_{later[-1]}" if len(later) > 1 else "")
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
    return CheckpointError(f"cannot save checkpoint global_step_{int(step)} in {root}: {reason}; {still}")


def latest_dir(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None when there is none.

    A `latest_checkpointed_iteration.txt` that is unreadable or points at a missing folder is an
    error (something deleted or damaged the checkpoint), not a silent fresh start."""
    root = Path(root)
    latest = root / LATEST_FILE
    if not latest.exists():
        if any(p.is_dir() for p in root.glob("global_step_*[0-9]")):
            raise CheckpointError(
                f"{root}: has global_step_* folders but no {LATEST_FILE}; resume one explicitly with "
                "trainer.resume_mode=resume_path trainer.resume_from_path=<folder>, or set trainer.resume_mode=disable"
            )
        return None
    text = latest.read_text(encoding="utf-8").strip()
    if not text.isdigit():
        raise CheckpointError(f"{latest}: expected a step number, found {text[:40]!r}; fix or delete it (or trainer.resume_mode=disable)")
    path = step_dir(root, int(text))
    if not path.is_dir():
        raise CheckpointError(f"{latest} points at {path.name}, which does not exist; fix or delete it (or trainer.resume_mode=disable)")
    return path


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
