"""Run one function per rank in spawned processes (torch.distributed tests without Ray)."""

from __future__ import annotations

import multiprocessing
from typing import Callable, Sequence


def run_spawned_ranks(target: Callable[..., None], args_per_rank: Sequence[tuple], timeout: float) -> None:
    """Start `target(*args)` for every args tuple in its own spawned process, wait up to `timeout`
    seconds each, kill what still runs, and fail unless every rank exited with status 0."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=target, args=tuple(args)) for args in args_per_rank]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=timeout)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert [p.exitcode for p in procs] == [0] * len(procs), "a rank failed or hung (see captured output)"
