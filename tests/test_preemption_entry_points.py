"""Every command that trains ends a preempted run with one `preempted: ...` line and exit status 75,
no traceback: `scripts/demo.py` and `scripts/replicate.py` (which stops its method loop and, run
again, resumes that method and goes on) in this process, with SIGTERM sent from inside the loop
while it logs step 1; and `bash run_corewarding-II.sh` (a copy, so its logs stay in tmp), alone and
inside the SLURM job script of docs/training.md, with the signal sent to the shell alone, as SLURM's
`--signal=B:...` does. `python -m
corewarding.main` is test_e2e_resume.py's `test_preemption_saves_the_step_in_flight`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corewarding.trainer.ray_trainer import Trainer
from corewarding.trainer.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import demo  # noqa: E402
import replicate  # noqa: E402

pytestmark = pytest.mark.slow
ONE_PROCESS = ["trainer.single_process=True"]  # no Ray: the worker in this process (one worker)
SMALL = ["--batch", "2", "--n", "2", "--max-new-tokens", "8", "--val-size", "2", "--val-n", "1", "--test-freq", "1",
         "--workers", "1", "--rollout", "hf"]


@pytest.fixture(scope="module")
def data_files_small(tmp_path_factory):
    from corewarding.data import write_builtin_dataset

    return write_builtin_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=2, seed=0)


@pytest.fixture
def sigterm_while_logging(monkeypatch):
    """SIGTERM to this process while the trainer logs step 1 (once)."""
    log = Trainer._log
    sent = []

    def logging_step(self, metrics, step):
        log(self, metrics, step)
        if step == 1 and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_log", logging_step)
    return sent


@pytest.fixture
def torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # a single-process worker sets the threads of this process


def test_demo_exits_75_with_one_line(boxing_model, tmp_path, capsys, sigterm_while_logging, torch_threads):
    with pytest.raises(SystemExit) as ended:
        demo.main(["--model", str(boxing_model), "--steps", "3", *SMALL, "--out", str(tmp_path), *ONE_PROCESS])
    assert ended.value.code == 75
    err = capsys.readouterr().err
    checkpoint = tmp_path / "co_rewarding_ii" / "run" / "global_step_1"
    assert (f"preempted: SIGTERM: last trained step 1, checkpoint {checkpoint}; this command starts afresh when run "
            "again; exit status 75") in err.splitlines()
    assert "Traceback" not in err and checkpoint.is_dir()


def test_replicate_stops_on_preemption_and_resumes_the_method_when_run_again(boxing_model, tmp_path, capsys,
                                                                             sigterm_while_logging, torch_threads):
    argv = ["--model", str(boxing_model), "--steps", "2", *SMALL, "--methods", "majority_voting", "gt",
            "--out", str(tmp_path / "runs"), "--figs", str(tmp_path / "figs"), *ONE_PROCESS]
    with pytest.raises(SystemExit) as ended:
        replicate.main(argv)
    assert ended.value.code == 75
    err = capsys.readouterr().err
    checkpoint = tmp_path / "runs" / "majority_voting" / "global_step_1"
    assert f"preempted: SIGTERM: last trained step 1, checkpoint {checkpoint}; resume with the same command" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs" / "gt").exists()  # the method loop stopped

    rows = replicate.main(argv)
    assert [r["method"] for r in rows] == ["majority_voting", "gt"]
    assert "resumed from" in capsys.readouterr().out
    logged = read_metrics(tmp_path / "runs" / "majority_voting" / "metrics.jsonl")
    assert sorted({m["step"] for m in logged}) == [0, 1, 2]


RUN_SCRIPT = "Co-rewarding-II/run_corewarding-II.sh"


def sbatch_recipe(folder: Path, overrides: list[str]) -> Path:
    """The SLURM job script of docs/training.md, with `scontrol requeue` writing a file instead and the
    run's folder replaced by these CPU overrides."""
    readme = (REPO / "docs" / "training.md").read_text()
    lines = readme[readme.index("    #!/bin/bash"):readme.index("    exit $status") + len("    exit $status")].splitlines()
    job = "\n".join(line[4:] for line in lines)
    job = job.replace("LLM_PATH=/models/Qwen3-8B-Base ", "").replace("trainer.default_local_dir=/shared/runs/my-run",
                                                                      " ".join(f"'{o}'" for o in overrides))
    job = job.replace('scontrol requeue "$SLURM_JOB_ID"', "touch requeued")
    (folder / "job.sh").write_text(job + "\n")
    return folder / "job.sh"


@pytest.mark.parametrize("how", ["run script", "sbatch recipe"])
def test_a_signal_to_the_shell_alone_saves_and_exits_75(how, boxing_model, data_files_small, tmp_path):
    """SIGTERM to `bash run_corewarding-II.sh` alone (or USR1 to docs/training.md's SLURM job shell alone)
    after step 1 of 3: the trainer saves its last trained step and the shell exits 75 (the job asks
    for a requeue), with the trainer's line in logs/<name>.log."""
    for script in (RUN_SCRIPT, "scripts/run_common.sh", "scripts/visible_gpus.sh"):  # a copy: logs/, outputs/ stay in tmp
        (tmp_path / script).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / script, tmp_path / script)
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "LLM_PATH": str(boxing_model), "NUM_GPUS": "1", "PYTHON": sys.executable,
           "TRAIN_FILES": str(data_files_small["train"]), "VAL_FILES": str(data_files_small["val"]), "EXP_NAME": "cr2"}
    overrides = ["trainer.device=cpu", "actor_rollout_ref.rollout.name=hf", "trainer.single_process=True",
                 "trainer.total_training_steps=3", "trainer.save_freq=-1", "trainer.test_freq=-1",
                 "trainer.val_before_train=False", "trainer.logger=[console]", f"trainer.default_local_dir={ckpt}",
                 f"trainer.rollout_data_dir={tmp_path / 'rollouts'}", "data.train_batch_size=2",
                 "data.max_prompt_length=192", "data.max_response_length=8", "actor_rollout_ref.rollout.n=2",
                 "actor_rollout_ref.rollout.teacher_n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                 "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.actor.optim.lr=1e-4",
                 "actor_rollout_ref.model.enable_gradient_checkpointing=False"]
    if how == "run script":
        command, sent = ["bash", str(tmp_path / RUN_SCRIPT), *overrides], signal.SIGTERM
    else:
        command, sent = ["bash", str(sbatch_recipe(tmp_path, overrides))], signal.SIGUSR1
    shell = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    log_file = tmp_path / "Co-rewarding-II" / "logs" / "cr2.log"
    try:
        deadline = time.monotonic() + 300
        metrics = ckpt / "metrics.jsonl"
        while not (metrics.exists() and any(m["step"] == 1 for m in read_metrics(metrics))):
            assert shell.poll() is None, log_file.read_text()[-3000:] if log_file.exists() else "no log"
            assert time.monotonic() < deadline, "the run did not reach step 1 in 300 s"
            time.sleep(0.2)
        os.kill(shell.pid, sent)  # the shell only, not its process group
        status = shell.wait(timeout=120)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    for _ in range(50):  # tee writes the trainer's last line just after the trainer has exited
        if "preempted: " in log_file.read_text():
            break
        time.sleep(0.1)
    log = log_file.read_text()
    assert status == 75, log[-3000:]
    step = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert step in (1, 2)  # the signal lands after step 1's logging: at its decision point or during step 2
    assert f"preempted: {sent.name}: last trained step {step}, checkpoint {ckpt / f'global_step_{step}'}; resume" in log
    assert (tmp_path / "Co-rewarding-II" / "requeued").exists() == (how == "sbatch recipe")  # the job's cd
