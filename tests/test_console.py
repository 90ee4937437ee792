"""A quiet console: a short training run as a user starts it (`python -m corewarding.main`, Ray, the
vLLM engine) prints no vLLM or Ray INFO line; the workers' logs are in the run folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

VLLM_INFO = re.compile(r"\bINFO\b.*(\bvllm\b|\[[\w/]+\.py:\d+\])")  # vLLM's own format, or ours naming the logger


@pytest.mark.slow
def test_a_run_prints_steps_and_keeps_worker_logs_in_the_run_folder(tiny_model_path, tmp_path):
    pytest.importorskip("vllm")
    from corewarding.data import write_builtin_dataset

    data = write_builtin_dataset(tmp_path / "data", n_train=8, n_val=4, seed=0)
    run_dir = tmp_path / "run"
    ray_dir = tempfile.mkdtemp(prefix="cwr", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    overrides = [
        f"actor_rollout_ref.model.path={tiny_model_path}", f"data.train_files={data['train']}",
        f"data.val_files={data['val']}", "data.train_batch_size=2", "data.max_prompt_length=192",
        "data.max_response_length=8", "actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False", "trainer.device=cpu", "trainer.nnodes=1",
        "trainer.n_gpus_per_node=1", "trainer.total_training_steps=2", "trainer.logger=[console]",
        f"trainer.default_local_dir={run_dir}", "trainer.resume_mode=disable", "trainer.val_before_train=False",
        "trainer.test_freq=-1", "trainer.save_freq=-1", "ray_init.num_cpus=2", f"ray_init.temp_dir={ray_dir}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "COREWARDING_VERBOSE"}
    try:
        done = subprocess.run([sys.executable, "-m", "corewarding.main", *overrides], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    console = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(console[-60:])
    assert "worker logs" in console[0] and str(run_dir / "logs") in console[0], console[:3]
    assert not [line for line in console if VLLM_INFO.search(line)], "\n".join(console)
    assert not [line for line in console if "Failed to load weights" in line or "ActorRolloutRefWorker pid=" in line]
    assert sum(line.startswith("step ") for line in console) == 2, "\n".join(console)
    log = Path(run_dir / "logs" / "worker_0.log").read_text()
    assert re.search(r"INFO vllm\.", log), log[-3000:]


QUIET_WORKER = """
import logging, os, sys
from corewarding.logs import quiet_worker
print(quiet_worker())
logging.getLogger("vllm.engine").info("an INFO line")
logging.getLogger("corewarding.workers").error("an ERROR line")
print("a print")
os.write(2, b"a C-level write\\n")
"""


def test_a_quiet_worker_sends_its_output_to_the_file_and_its_errors_to_the_console(tmp_path):
    from corewarding.logs import worker_env

    env = {**os.environ, **worker_env(tmp_path / "run", 3, verbose=False)}
    done = subprocess.run([sys.executable, "-c", QUIET_WORKER], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "run" / "logs" / "worker_3.log").read_text()
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "ERROR corewarding.workers: an ERROR line" in done.stderr
    for line in ("INFO vllm.engine: an INFO line", "ERROR corewarding.workers: an ERROR line", "a print", "a C-level write"):
        assert line in log, log
    assert worker_env(tmp_path, 0, verbose=True) == {}
