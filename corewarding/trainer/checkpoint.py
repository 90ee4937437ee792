"""Checkpoint folders: atomic writes, the driver's state, finding where to resume.

Layout under `trainer.default_local_dir`::

    global_step_<N>/                 one checkpoint (the workers write policy, optimizer, scheduler,
      trainer_state.json             reference/teacher and their RNG states inside it; the driver
      ...                            writes trainer_state.json last)
    latest_checkpointed_iteration.txt    N of the newest complete checkpoint

A checkpoint is written into `global_step_<N>.tmp/` and renamed when complete, so a crash never
leaves a half-written `global_step_<N>/`; `latest_checkpointed_iteration.txt` is replaced atomically
after the rename.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest_checkpointed_iteration.txt"
STATE_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint folder cannot be used; the message says which and what to do."""


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
    it and drop the oldest checkpoints beyond `keep`."""
    state = {"version": STATE_VERSION, "global_step": int(step), "complete": True, **state}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    final = step_dir(root, step)
    replace_dir(tmp, final)
    latest = Path(root) / LATEST_FILE
    latest_tmp = latest.with_name(LATEST_FILE + ".tmp")
    latest_tmp.write_text(str(int(step)), encoding="utf-8")
    latest_tmp.replace(latest)
    if keep is not None and keep > 0:
        steps = sorted(
            int(p.name.split("_")[-1]) for p in Path(root).glob("global_step_*") if p.is_dir() and p.name.split("_")[-1].isdigit()
        )
        for old_step in steps[:-keep]:
            shutil.rmtree(step_dir(root, old_step), ignore_errors=True)
    return final


def replace_dir(new: Path, out: Path) -> None:
    """Move the finished folder `new` to `out` by renames: an existing `out` is renamed away first,
    `new` renamed in, then the old one deleted; if the second rename fails the old one is put back."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
