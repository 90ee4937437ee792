"""The vLLM engine's arguments, without starting an engine: seeds per rollout group, the factory's
settings, the tensor-parallel launcher and its environment, sleep mode's two-part wake-up and the
heap at start-up (a recording stand-in for vLLM's LLM)."""

from __future__ import annotations

import os
import types

import pytest
import torch

vllm = pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm


def test_engine_seed_is_per_rollout_group():
    """rollout.seed + rank // tp: every rank its own seed with TP 1; the ranks of a TP group share one
    (they must sample the same tokens), the next group gets the next seed."""
    from types import SimpleNamespace

    from corewarding.workers.rollout_runner import rollout_seed

    def seeds(tp: int, world: int) -> list[int]:
        return [rollout_seed(SimpleNamespace(seed=7, tensor_model_parallel_size=tp), rank) for rank in range(world)]

    assert seeds(1, 2) == [7, 8]
    assert seeds(2, 4) == [7, 7, 8, 8]


def test_factory_passes_the_vllm_settings(monkeypatch):
    """make_engine hands vLLM the settings as given; sleep mode only on a GPU."""
    from corewarding.workers import rollout
    from corewarding.workers.rollout import vllm_engine

    made = []
    monkeypatch.setattr(vllm_engine, "VLLMRolloutEngine", lambda path, **kwargs: made.append((path, kwargs)))
    settings = rollout.EngineSettings(name="vllm", max_model_len=12, seed=8, tensor_parallel_size=2, sleep_mode=True,
                                      max_num_seqs=8, max_num_batched_tokens=512)
    for device in ("cpu", "cuda"):
        rollout.make_engine(settings, "/m", None, device)
    (_, on_cpu), (_, on_gpu) = made
    assert on_cpu["tensor_parallel_size"] == 2 and on_cpu["max_model_len"] == 12 and on_cpu["seed"] == 8
    assert on_cpu["enable_sleep_mode"] is False and on_gpu["enable_sleep_mode"] is True


def test_tensor_parallel_llm_arguments():
    """TP > 1 runs one engine per worker process under vLLM's external_launcher (untested on GPU)."""
    from corewarding.workers.rollout.vllm_engine import parallel_kwargs

    assert parallel_kwargs(1) == {"tensor_parallel_size": 1}
    assert parallel_kwargs(4) == {
        "tensor_parallel_size": 4,
        "distributed_executor_backend": "external_launcher",
        "disable_custom_all_reduce": True,
    }


def test_launcher_env_comes_from_torch_distributed(tmp_path, monkeypatch):
    """external_launcher reads RANK / LOCAL_RANK: the worker's rank and its own device index (Ray shows
    a worker one GPU), not the LOCAL_RANK the worker group set for the node."""
    import torch.distributed as dist

    from corewarding.workers.rollout.vllm_engine import _set_launcher_env

    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.delenv("VLLM_ALLREDUCE_USE_SYMM_MEM", raising=False)
    monkeypatch.setenv("VLLM_ALLREDUCE_USE_FLASHINFER", "1")  # set by the user: kept
    own = not dist.is_initialized()  # the in-process engine above may have made a world of 1 already
    if own:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _set_launcher_env()
        expected = (str(dist.get_rank()), str(dist.get_world_size()), "0")
    finally:
        if own:
            dist.destroy_process_group()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == expected == ("0", "1", "0")
    # the IPC all-reduce paths (Ray shows each worker one GPU) are off unless the user asked for them
    assert os.environ["VLLM_ALLREDUCE_USE_SYMM_MEM"] == "0" and os.environ["VLLM_ALLREDUCE_USE_FLASHINFER"] == "1"


def test_gpu_sleep_and_wake_up_in_two_parts():
    """Sleep mode (GPU only, so a recording stand-in for vLLM's LLM here): level 2, then the weights
    wake first (the worker pushes into them) and the KV cache after; the engine counts as awake, and
    its prefix cache is reset, only when both are back."""
    from corewarding.workers.rollout.vllm_engine import VLLMRolloutEngine

    calls = []
    llm = types.SimpleNamespace(sleep=lambda level: calls.append(("sleep", level)),
                                wake_up=lambda tags: calls.append(("wake_up", tags)),
                                reset_prefix_cache=lambda: calls.append(("reset",)),
                                collective_rpc=lambda method, kwargs: calls.append(("rpc", method, len(list(kwargs["weights_iterator"])))))
    engine = object.__new__(VLLMRolloutEngine)
    engine.llm, engine.enable_sleep_mode, engine.sleeping, engine.awake = llm, True, False, set()
    engine.tie_word_embeddings = False
    assert engine.sleep() is True and engine.weights_dropped
    with pytest.raises(RuntimeError, match="wake_up"):
        engine.load_weights([("w", torch.zeros(2))])  # no memory for the weights yet
    engine.wake_up(tags=("weights",))
    assert engine.sleeping  # the KV cache is still released
    engine.load_weights([("w", torch.zeros(2))])  # the push goes in now, as the worker does it
    engine.wake_up(tags=("kv_cache",))
    assert not engine.sleeping and not engine.weights_dropped
    engine.wake_up()  # awake already: nothing to do
    assert calls == [("sleep", 2), ("wake_up", ["weights"]), ("rpc", "reload_weights", 1), ("reset",),
                     ("wake_up", ["kv_cache"]), ("reset",)]


def test_the_engine_starts_on_a_collected_then_frozen_heap(monkeypatch):
    """Garbage cycles are collected before the heap is frozen for vLLM's start-up (frozen, they
    would wait for the engine's shutdown), and torch.set_num_threads comes back afterwards."""
    import gc

    from corewarding.workers.rollout import vllm_engine

    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(vllm, "LLM", lambda **kwargs: calls.append(("LLM", kwargs)) or "engine")
    set_num_threads = torch.set_num_threads
    assert vllm_engine._start_llm(model="m") == "engine"
    assert calls == ["collect", "freeze", ("LLM", {"model": "m"})]
    assert torch.set_num_threads is set_num_threads
