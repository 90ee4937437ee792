"""One writer per run folder: `run.lock` in `trainer.default_local_dir`, held for a run's lifetime.

The lock is a small JSON file (host, pid, the pid's start time, when the run started, the SLURM job
and restart count when there is one) created with O_EXCL, so of two runs starting together exactly
one creates it. A run that finds one:

- held by a live process on this host: refuses to start, naming the holder;
- whose process is gone on this host (a crash, a SIGKILL): takes it over with a warning;
- written by an earlier start of this same SLURM job (a requeued job keeps its id, so that start
  is over, wherever it ran): takes it over with a warning;
- held on another host: refuses, since this host cannot tell whether that process lives, unless
  `trainer.force_unlock=True` says the holder is known to be gone.

A process counts as alive only when its pid exists with the start time the lock recorded, so a
pid reused by an unrelated process does not keep a dead run's lock. File locks (flock/fcntl) are
not used: they are unreliable on the network filesystems that clusters share run folders on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockError(RuntimeError):
    """The run folder is held by another run; the message names it and what to do."""


def _process_start(pid: int) -> float | None:
    """The start time of `pid` on this host, or None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # it exists, owned by someone else
        return -1.0


def this_process() -> dict[str, Any]:
    """The lock record of this process."""
    pid = os.getpid()
    record: dict[str, Any] = {"host": socket.gethostname(), "pid": pid, "pid_started": _process_start(pid),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        record["slurm_restart_count"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    return record


def describe(record: dict[str, Any]) -> str:
    job = f", SLURM job {record['slurm_job_id']}" if record.get("slurm_job_id") else ""
    return f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')}{job}"


def holder_is_gone(record: dict[str, Any], me: dict[str, Any]) -> bool | None:
    """True when the lock's process has certainly ended, False when it certainly lives, None when
    this host cannot tell (another host)."""
    job = record.get("slurm_job_id")
    if job and job == me.get("slurm_job_id") and record.get("slurm_restart_count") != me.get("slurm_restart_count"):
        return True
    if record.get("host") != me["host"]:
        return None
    started = _process_start(int(record.get("pid", -1)))
    if started is None:
        return True
    recorded = record.get("pid_started")
    return started >= 0 and recorded is not None and abs(started - float(recorded)) > 1.0


class RunLock:
    """`with RunLock(folder, force):` holds `folder/run.lock` for the block (see the module docstring)."""

    def __init__(self, folder: str | Path, force: bool = False) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.force = force
        self.record = this_process()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            return
        held = self._read()
        gone = holder_is_gone(held, self.record) if held else self._unreadable_is_stale()
        folder = self.path.parent
        if gone is False:
            raise RunLockError(f"trainer.default_local_dir={folder} is in use by another run ({describe(held)}): "
                               "wait for it to end, or give this run another trainer.default_local_dir")
        if gone is None and not self.force:
            raise RunLockError(
                f"trainer.default_local_dir={folder} is locked by a run on another host ({describe(held)}; "
                f"{self.path}): if that run has ended, start with trainer.force_unlock=True"
            )
        why = "forced (trainer.force_unlock=True)" if gone is None else "its process has ended"
        logger.warning("taking over the lock of %s from %s: %s", folder, describe(held or {}), why)
        # the holder may have been replaced between the read and here: remove only what was read
        if self._read() == held:
            self.path.unlink(missing_ok=True)
        if not self._create():
            now = self._read() or {}
            raise RunLockError(f"trainer.default_local_dir={folder} was just locked by another run ({describe(now)})")

    def release(self) -> None:
        """Remove the lock if it is still this run's (a forced takeover may have replaced it)."""
        if self._read() == self.record:
            self.path.unlink(missing_ok=True)

    def _unreadable_is_stale(self) -> bool:
        """A lock without a record: stale unless just created (its writer may be writing it now)."""
        try:
            return time.time() - self.path.stat().st_mtime > 10.0
        except FileNotFoundError:
            return True

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _read(self) -> dict[str, Any] | None:
        """The lock's record; {} for an unreadable one (a crash while writing it: nobody holds it)."""
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}
