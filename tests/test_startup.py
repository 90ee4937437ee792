"""The processes this project owns start without the scikit-learn import transformers would make
(`corewarding/startup.py`): a worker that Ray starts for a group, and each command line; a worker in
a user's own process (a single-process run) leaves that process's transformers as it is. A worker
starts without pandas too: it reads no data file (`corewarding/data/schema.py`); on CPU it loads its
models with the garbage collector paused."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corewarding.config import compose_config, load_config
from corewarding.startup import RAY_WORKER_ENV
from corewarding.workers.dispatch import Dispatch, first_rank, register
from corewarding.workers.fsdp_worker import ActorRolloutRefWorker

REPO = Path(__file__).resolve().parents[1]
# find_spec, not importorskip: the fresh processes below import this module, and must not import sklearn
pytestmark = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")


UNUSED_BY_A_WORKER = ("sklearn", "pandas")  # (pyarrow: Ray imports it in its workers)


def _loads_transformers_and_reports_unused(model_path: str) -> list[str]:
    """Which of UNUSED_BY_A_WORKER are imported once transformers' generation code and a tokenizer are."""
    import transformers.generation.utils  # noqa: F401 - what imports scikit-learn
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_path)
    return [name for name in UNUSED_BY_A_WORKER if name in sys.modules]


def _config(model_path: Path, device: str = "cpu"):
    return load_config(compose_config([
        f"trainer.device={device}", "trainer.nnodes=1", "trainer.n_gpus_per_node=1", "trainer.cpus_per_worker=1",
        "trainer.preemption_signals=[]", f"actor_rollout_ref.model.path={model_path}",
    ]), check_paths=False)


class ImportProbe(ActorRolloutRefWorker):
    """The FSDP worker as it starts, with one more method: which unused packages did loading a
    tokenizer and transformers' generation code import?"""

    @register(Dispatch.SAME_ARGS, first_rank)
    def imported_unused(self) -> list[str]:
        return _loads_transformers_and_reports_unused(self.config.actor_rollout_ref.model.path)


WORKER_IN_A_FRESH_PROCESS = """
import sys
from test_startup import ImportProbe, _config
print(ImportProbe(_config(sys.argv[1]), 0, 1).imported_unused())
"""


@pytest.mark.parametrize("ray_worker", [True, False])
def test_only_a_worker_of_a_ray_group_hides_sklearn(tiny_model_path, ray_worker):
    """The worker's own start-up, in a fresh process: with the group's variable transformers imports
    no scikit-learn; without it (a single-process run in a user's process) it does, as before.
    (scikit-learn brings pandas; a worker of the group imports neither.)"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), RAY_WORKER_ENV: "1" if ray_worker else "0"}
    done = subprocess.run([sys.executable, "-c", WORKER_IN_A_FRESH_PROCESS, str(tiny_model_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = done.stdout.strip().splitlines()[-1]
    assert (imported == "[]") if ray_worker else ("'sklearn'" in imported), imported


@pytest.mark.slow
def test_a_worker_of_the_ray_group_starts_without_sklearn_or_pandas(ray_session, tiny_model_path):
    from ray import cloudpickle

    from corewarding.workers.group import RayWorkerGroup

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    group = RayWorkerGroup(_config(tiny_model_path), worker_cls=ImportProbe)
    try:
        assert group.call(ImportProbe.imported_unused) == []
    finally:
        group.close()


ENTRY_POINTS = ["corewarding.main", "corewarding.plan", "corewarding.eval", str(REPO / "rewrite_questions.py")]
EACH_ENTRY_POINT = """
import runpy, sys
import transformers.utils
from transformers.utils import import_utils

as_installed = import_utils.is_sklearn_available
for entry in sys.argv[1:]:
    sys.argv = [entry, "--help"]
    try:
        if entry.endswith(".py"):
            runpy.run_path(entry, run_name="__main__")
        else:
            runpy.run_module(entry, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    print(entry, transformers.utils.is_sklearn_available())
    transformers.utils.is_sklearn_available = import_utils.is_sklearn_available = as_installed
"""


def test_each_command_line_hides_sklearn_before_it_runs():
    """`python -m ... --help` (or the script), each in turn in one fresh process: the entry point
    told transformers that scikit-learn is absent before its command ran."""
    env = {k: v for k, v in os.environ.items() if k != RAY_WORKER_ENV}
    done = subprocess.run([sys.executable, "-c", EACH_ENTRY_POINT, *ENTRY_POINTS], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    reported = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines() if line.startswith(tuple(ENTRY_POINTS)))
    assert reported == {entry: "False" for entry in ENTRY_POINTS}, done.stdout[-3000:]


def test_gc_paused_restores_the_collector_whatever_happens():
    import gc

    from corewarding.startup import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("a failed start-up")
    assert gc.isenabled()
    gc.disable()  # a caller that runs without the collector keeps it off
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_cpu_worker_loads_its_models_with_the_collector_paused(tiny_model_path, monkeypatch, device):
    import gc

    worker = ActorRolloutRefWorker(_config(tiny_model_path, device), 0, 1)
    monkeypatch.setattr(worker, "_init_model", lambda total_steps: gc.isenabled())
    assert worker.init_model(1) is (device != "cpu")
    assert gc.isenabled()
