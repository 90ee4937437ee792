"""A quiet console: the workers' own output (vLLM, Ray, torch, gloo) goes to a log file in the run folder.

By default a run's console shows the progress bar, one line per step, the validation lines,
collapse warnings and errors. Each Ray worker sends its stdout and stderr, Python's and the C
libraries' alike, to `<trainer.default_local_dir>/logs/worker_<rank>.log`, with log records at INFO
and warnings; records at ERROR and above go to the console as well (Ray forwards the worker's
original stderr to the driver). `trainer.verbose=True` or the environment variable
``COREWARDING_VERBOSE=1`` keeps everything on the console, as Ray and vLLM print it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

VERBOSE_ENV = "COREWARDING_VERBOSE"
WORKER_LOG_ENV = "COREWARDING_WORKER_LOG"  # set by the Ray worker group: where this worker writes
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def is_verbose(flag: bool) -> bool:
    """`trainer.verbose`, or ``COREWARDING_VERBOSE`` set to anything but 0 / false."""
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def worker_log(run_dir: str | Path, rank: int) -> Path:
    return Path(run_dir) / "logs" / f"worker_{rank}.log"


def worker_env(run_dir: str | Path, rank: int, verbose: bool) -> dict[str, str]:
    """The environment of a Ray worker: quiet, where its log goes, and vLLM's records handed to
    Python's root logger (vLLM's own handler would print INFO to stdout and ERROR nowhere else)."""
    if verbose:
        return {}
    return {WORKER_LOG_ENV: str(worker_log(run_dir, rank)), "VLLM_CONFIGURE_LOGGING": "0"}


def quiet_worker() -> Path | None:
    """In a Ray worker started with `worker_env`: send file descriptors 1 and 2 to the log file and
    log INFO there, ERROR and above also to the original stderr (the console). Returns the file."""
    target = os.environ.get(WORKER_LOG_ENV)
    if not target:
        return None
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)  # C-level writes too (gloo, oneDNN, vLLM's C++ side)
    os.dup2(fd, 2)
    os.close(fd)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    to_file = logging.StreamHandler(sys.stderr)  # fd 2: the log file now
    to_console = logging.StreamHandler(console)
    to_console.setLevel(logging.ERROR)
    for handler in (to_file, to_console):
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # FutureWarnings of vLLM's and torch's dependencies: into the file
    return path
