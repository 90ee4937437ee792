"""Run one function in several spawned processes, one per group of GPUs, and collect the results
in rank order: how `corewarding.eval --num_gpus N` puts an engine on every GPU of a node.

Each process sees only its own GPUs (`CUDA_VISIBLE_DEVICES`, set before anything in it touches
CUDA), so vLLM and transformers place their engine there unchanged; on a machine without GPUs the
processes run on the CPU. Processes are spawned, not forked (CUDA and vLLM do not survive a fork),
and are not daemons (vLLM starts processes of its own).
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import traceback
from typing import Any, Callable, Sequence

POLL_S = 5.0  # how often the parent checks that no process died without reporting


class ProcessFailed(RuntimeError):
    """A worker process raised or died; the message carries its rank and traceback or exit code."""


def visible_devices() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named:
        return [d.strip() for d in named.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def device_groups(num_gpus: int, per_process: int) -> list[list[str]]:
    """`num_gpus` devices in contiguous groups of `per_process` (one group per process); on a CPU
    machine `num_gpus // per_process` processes without devices."""
    if num_gpus < 1 or per_process < 1 or num_gpus % per_process:
        raise ValueError(f"--num_gpus {num_gpus} must be a positive multiple of --tensor_parallel_size {per_process}")
    devices = visible_devices()
    if not devices:
        return [[] for _ in range(num_gpus // per_process)]
    if num_gpus > len(devices):
        raise ValueError(f"--num_gpus {num_gpus} but this node shows {len(devices)} GPUs ({','.join(devices)})")
    return [devices[i : i + per_process] for i in range(0, num_gpus, per_process)]


def contiguous_shares(n_items: int, n_shares: int, granule: int = 1) -> list[tuple[int, int]]:
    """Split range(n_items) into n_shares contiguous [start, end) ranges whose inner boundaries are
    multiples of `granule` (whole batches), as even as that allows; shares may be empty."""
    if n_shares < 1 or granule < 1:
        raise ValueError(f"need n_shares >= 1 and granule >= 1, got {n_shares}, {granule}")
    n_granules = -(-n_items // granule)
    # the first shares take the extra granules, as numpy.array_split does
    bounds = [min(n_items, granule * -(-(n_granules * i) // n_shares)) for i in range(n_shares + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _worker(fn: Callable[..., Any], rank: int, devices: list[str], payload: Any, results: Any) -> None:
    if devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    try:
        results.put((rank, True, fn(payload)))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        results.put((rank, False, traceback.format_exc()))


def run_in_processes(fn: Callable[[Any], Any], payloads: Sequence[Any], devices: Sequence[list[str]]) -> list[Any]:
    """`fn(payloads[r])` in process r, which sees only `devices[r]`; returns the results in rank
    order. `fn` must be a module-level function and payloads and results picklable."""
    if len(payloads) != len(devices):
        raise ValueError(f"{len(payloads)} payloads for {len(devices)} device groups")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_worker, args=(fn, rank, list(group), payload, results), daemon=False)
        for rank, (payload, group) in enumerate(zip(payloads, devices))
    ]
    for process in processes:
        process.start()
    collected: dict[int, Any] = {}
    try:
        while len(collected) < len(processes):
            try:
                rank, ok, value = results.get(timeout=POLL_S)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(processes) if r not in collected and p.exitcode is not None]
                # a process that exited may still have its result in the pipe: look once more
                if dead and results.empty():
                    raise ProcessFailed(f"process {dead[0]} exited with code {processes[dead[0]].exitcode} before reporting") from None
                continue
            if not ok:
                raise ProcessFailed(f"process {rank} (devices {','.join(devices[rank]) or 'cpu'}) failed:\n{value}")
            collected[rank] = value
    finally:
        for process in processes:
            if len(collected) < len(processes) and process.is_alive():
                process.terminate()
            process.join()
    return [collected[rank] for rank in range(len(processes))]
