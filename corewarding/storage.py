"""Durable files: fsync, atomic replacement of a file or a folder, and the errors of a checkpoint.

Below both the trainer (its checkpoint folders, `corewarding.trainer.checkpoint`) and the workers
(the files they write into a checkpoint), so that neither reaches into the other for them.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class CheckpointError(RuntimeError):
    """A checkpoint folder cannot be used; the message says which and what to do."""


class WorkerCheckpointError(RuntimeError):
    """A checkpoint file could not be written or read on some worker rank; every rank raises it
    together, with the same one-line message."""


_DISK_FULL = ("No space left on device", "StorageFull", "Disk quota exceeded")


def describe_error(exc: BaseException) -> str:
    """One line: 'disk full: ...' for ENOSPC / EDQUOT (also when a library reports it in words,
    as safetensors does), else the error's own text."""
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if full or any(marker in text for marker in _DISK_FULL):
        return f"disk full: {text}"
    return text


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a folder, so that the names created or renamed in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under `root` (and `root` itself)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(folder) / name)
        fsync_dir(folder)


def write_text(path: Path, text: str) -> None:
    """Replace `path` atomically and durably: a fsynced temp file renamed over it, then the folder fsynced."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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
