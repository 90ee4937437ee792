"""How a Ray worker process starts: CPU workers with tcmalloc preloaded (`trainer.cpu_preload`: the
library search, the LD_PRELOAD value, a Ray worker of the real group that has the library mapped),
and every worker without the scikit-learn import transformers would make (`workers/startup.py`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from corewarding.config import compose_config, load_config
from corewarding.workers import preload
from corewarding.workers.startup import RAY_WORKER_ENV
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
    else:
        assert ld_preload == "" and library not in mapped


class ImportProbe:
    """Stands in for the FSDP worker, starting as it does: reports whether loading a tokenizer and
    transformers' generation code imported scikit-learn."""

    def __init__(self, config, rank: int, world_size: int) -> None:
        from corewarding.workers.startup import skip_unused_imports

        skip_unused_imports()
        self.model_path = config.actor_rollout_ref.model.path

    @register(Dispatch.SAME_ARGS, first_rank)
    def imported_sklearn(self) -> bool:
        return _loads_transformers_and_reports_sklearn(self.model_path)


def _loads_transformers_and_reports_sklearn(model_path: str) -> bool:
    import transformers.generation.utils  # noqa: F401 - what imports scikit-learn
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_path)
    return "sklearn" in sys.modules


@pytest.mark.parametrize("ray_worker", [True, False])
def test_only_a_ray_worker_hides_sklearn_from_transformers(tiny_model_path, ray_worker):
    """In a fresh process: with the group's variable transformers imports no scikit-learn; without it
    (the driver, a single-process run, lm-eval) it does, as before."""
    pytest.importorskip("sklearn")
    code = ("from corewarding.workers.startup import skip_unused_imports; skip_unused_imports(); "
            f"from test_preload import _loads_transformers_and_reports_sklearn as f; print(f({str(tiny_model_path)!r}))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), RAY_WORKER_ENV: "1" if ray_worker else "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(not ray_worker)


@pytest.mark.slow
def test_a_worker_of_the_ray_group_starts_without_sklearn(ray_session, tiny_model_path):
    from ray import cloudpickle

    from corewarding.workers.group import RayWorkerGroup

    pytest.importorskip("sklearn")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    config = load_config(compose_config([
        "trainer.device=cpu", "trainer.nnodes=1", "trainer.n_gpus_per_node=1", "trainer.cpus_per_worker=1",
        "trainer.preemption_signals=[]", f"actor_rollout_ref.model.path={tiny_model_path}",
    ]), check_paths=False)
    group = RayWorkerGroup(config, worker_cls=ImportProbe)
    try:
        assert group.call(ImportProbe.imported_sklearn) is False
    finally:
        group.close()
