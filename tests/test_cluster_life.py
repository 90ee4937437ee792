"""Cluster life without a cluster: the run folder's lock (`trainer.run_lock`) and the preemption
signal watch (`trainer.preemption`). The runs that use them are in test_e2e_resume.py."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from corewarding.trainer.preemption import Preempted, PreemptionWatch
from corewarding.trainer.run_lock import LOCK_FILE, RunLock, RunLockError, this_process


def plant(folder, **record) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({**this_process(), **record}))


def test_the_lock_is_held_for_the_block_and_released(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        held = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert held == lock.record and held["pid"] == os.getpid()
        with pytest.raises(RunLockError, match=f"in use by another run \\(pid {os.getpid()} on "):
            RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_live_process_on_this_host_keeps_its_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil

        plant(tmp_path, pid=holder.pid, pid_started=psutil.Process(holder.pid).create_time())
        with pytest.raises(RunLockError, match=f"trainer.default_local_dir={tmp_path} is in use by another run "
                                               f"\\(pid {holder.pid} on "):
            RunLock(tmp_path, force=True).acquire()  # force is for other hosts only
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_process_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    plant(tmp_path, pid=gone.pid, pid_started=1.0)
    with caplog.at_level(logging.WARNING), RunLock(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text()) == lock.record
    assert f"from pid {gone.pid}" in caplog.text and "its process has ended" in caplog.text


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path):
    """The lock's pid lives, but started later than the process that wrote the lock."""
    plant(tmp_path, pid=os.getppid(), pid_started=12.0)
    with RunLock(tmp_path):
        pass


def test_a_lock_of_another_host_needs_force_unlock(tmp_path, caplog):
    plant(tmp_path, host="node-17", pid=4242)
    with pytest.raises(RunLockError, match="locked by a run on another host \\(pid 4242 on node-17 .*"
                                           "start with trainer.force_unlock=True"):
        RunLock(tmp_path).acquire()
    with caplog.at_level(logging.WARNING), RunLock(tmp_path, force=True):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "forced (trainer.force_unlock=True)" in caplog.text


def test_a_requeued_slurm_job_takes_its_own_lock_from_another_node(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "981")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    plant(tmp_path, host="node-17", pid=4242, slurm_job_id="981", slurm_restart_count="0")
    with RunLock(tmp_path):
        pass
    plant(tmp_path, host="node-17", pid=4242, slurm_job_id="982", slurm_restart_count="0")
    with pytest.raises(RunLockError, match="SLURM job 982"):
        RunLock(tmp_path).acquire()


def test_a_forced_takeover_is_not_undone_by_the_old_holder(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    plant(tmp_path, host="node-17", pid=4242)  # another run took the folder over meanwhile
    first.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == "node-17"


def test_preemption_watch_records_the_first_signal_and_stops_at_the_second(tmp_path):
    watch = PreemptionWatch(["SIGUSR1"], lambda: tmp_path / "global_step_3")
    before = signal.getsignal(signal.SIGUSR1)
    watch.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watch.received == signal.SIGUSR1
        with watch.publishing():  # the renames that publish a checkpoint finish first
            os.kill(os.getpid(), signal.SIGUSR1)
            published = True
        pytest.fail("the deferred second signal did not stop the run")
    except Preempted as exc:
        assert published and exc.at_once and exc.checkpoint == tmp_path / "global_step_3"
        assert "global_step_3 is still good" in str(exc)
    finally:
        watch.restore()
    assert signal.getsignal(signal.SIGUSR1) == before
