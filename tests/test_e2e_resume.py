"""End-to-end runs that stop and go on (2 Ray workers on CPU, one Ray session for the module): a
resume after SIGKILL equals a straight run, with dynamic sampling too; SIGTERM saves the step in
flight under the run lock; a disk that fills up during a save leaves the last checkpoint good."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from corewarding.trainer.tracking import read_metrics
from e2e_runs import (check_dump, comparable, cpu_overrides, disk_pages, main_process, read_dump, resize_disk, run,
                      run_until_killed, small_disk, wait_for_step)
from e2e_runs import data_files  # fixture


pytestmark = pytest.mark.slow


def test_exact_resume(ray_session, boxing_model, data_files, tmp_path):
    """4 steps straight == 2 steps + SIGKILL during step 4 + resume (1 step, stopped by
    max_steps_this_run with save_freq=-1) + resume (1 step). Co-rewarding-II: teacher, loader,
    optimizer, scheduler and the workers' sampling RNG all come back from the checkpoint; the
    steps the killed run logged past its checkpoint are dropped from metrics.jsonl."""
    common = ["trainer.total_training_steps=4", "trainer.save_freq=2"]
    straight = cpu_overrides(boxing_model, data_files, tmp_path / "a", "co_rewarding_II") + common
    run(straight)
    split = cpu_overrides(boxing_model, data_files, tmp_path / "b", "co_rewarding_II") + common
    run_until_killed(split, tmp_path / "b", killed_after_step=3)
    ckpt_dir = tmp_path / "b" / "ckpt"
    assert (ckpt_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    resumed = run(split + ["trainer.resume_mode=auto", "trainer.save_freq=-1", "trainer.max_steps_this_run=1"])
    assert resumed["global_step"] == 3 and [h["step"] for h in resumed["history"]] == [3]
    assert (ckpt_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    second = run(split + ["trainer.resume_mode=auto"])
    assert second["global_step"] == 4
    assert [h["step"] for h in second["history"]] == [4]
    a = comparable(read_metrics(tmp_path / "a" / "ckpt" / "metrics.jsonl"))
    b = comparable(read_metrics(ckpt_dir / "metrics.jsonl"))
    assert [e["step"] for e in a] == [e["step"] for e in b] == [1, 2, 3, 4]
    assert a == b
    for step in (3, 4):
        assert read_dump(tmp_path / "a" / "rollouts" / f"{step}.jsonl") == read_dump(tmp_path / "b" / "rollouts" / f"{step}.jsonl")


@pytest.mark.parametrize("method", ["co_reward", "co_rewarding_II", "co_rewarding_III"])
def test_dynamic_sampling_two_steps_and_exact_resume(method, ray_session, boxing_model, data_files, tmp_path):
    """algorithm.filter_groups on, generation batches of 2 prompts (pairs) for steps of 4: 2 steps
    straight == 1 step + resume + 1 step (the loader's position after several generation batches
    is in the checkpoint, so the resumed run trains on the same prompts). Every trained group of
    the dumps has a spread (Co-rewarding-I and -III: at least one group of each pair), and each pair
    comes with both views. Co-rewarding-III's resumed run also gets its EMA teacher back."""
    common = ["algorithm.filter_groups.enable=True", "data.gen_batch_size=2", "algorithm.filter_groups.max_num_gen_batches=0"]
    straight = run(cpu_overrides(boxing_model, data_files, tmp_path / "a", method) + common)
    split = cpu_overrides(boxing_model, data_files, tmp_path / "b", method) + common
    first = run(split + ["trainer.max_steps_this_run=1"])
    assert first["global_step"] == 1
    second = run(split + ["trainer.resume_mode=auto"])
    assert second["global_step"] == 2 and [h["step"] for h in second["history"]] == [2]
    a = comparable(read_metrics(tmp_path / "a" / "ckpt" / "metrics.jsonl"))
    assert a == comparable(read_metrics(tmp_path / "b" / "ckpt" / "metrics.jsonl"))
    assert all(e["train/num_gen_batches"] >= 2 and e["filter_groups/kept"] >= 4 for e in a)
    for step in (1, 2):
        records = read_dump(tmp_path / "a" / "rollouts" / f"{step}.jsonl")
        assert records == read_dump(tmp_path / "b" / "rollouts" / f"{step}.jsonl")
        check_dump(method, records)
        policy = [r for r in records if r["role"] == "policy"]
        paired = method != "co_rewarding_II"  # both views train: a pair is kept or dropped whole
        groups: dict = {}
        for r in policy:
            groups.setdefault(r["pair_id"] if paired else r["uid"], {}).setdefault(r["uid"], []).append(r["reward"])
        assert len(groups) == 4 and len(policy) == 4 * 4 * (2 if paired else 1)
        for unit in groups.values():
            assert len(unit) == (2 if paired else 1)
            assert any(max(rewards) > min(rewards) for rewards in unit.values())
    assert [h["filter_groups/kept"] for h in straight["history"] if h["step"] > 0] == [e["filter_groups/kept"] for e in a]


GRACE_S = 120  # docs/training.md's `#SBATCH --signal=B:USR1@120`: the time SLURM leaves before it kills


def test_preemption_saves_the_step_in_flight(ray_session, boxing_model, data_files, tmp_path):
    """SIGTERM to the driver during step 2 of 3, with no periodic checkpoints (save_freq=-1): it
    finishes step 2, saves global_step_2, names it in one line and exits with status 75 within the
    grace time; meanwhile a second run on the folder is refused by its lock. The resumed run's
    metrics and rollouts equal a straight run's."""
    from corewarding.trainer.checkpoint import folder_bytes
    from corewarding.trainer.run_lock import LOCK_FILE, RunLockError

    common = ["trainer.total_training_steps=3", "trainer.save_freq=-1"]
    run(cpu_overrides(boxing_model, data_files, tmp_path / "a") + common)
    split = cpu_overrides(boxing_model, data_files, tmp_path / "b") + common
    ckpt_dir = tmp_path / "b" / "ckpt"
    with main_process(split, tmp_path / "b") as proc:
        wait_for_step(proc, tmp_path / "b", 1)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert json.loads((ckpt_dir / LOCK_FILE).read_text())["pid"] == proc.pid
        with pytest.raises(RunLockError, match=f"is in use by another run \\(pid {proc.pid} on "):
            run(split)
        proc.wait(timeout=GRACE_S)
        took = time.monotonic() - signalled
    stderr = (tmp_path / "b" / "stderr.txt").read_text()
    assert proc.returncode == 75, stderr[-3000:]
    assert f"preempted: SIGTERM: last trained step 2, checkpoint {ckpt_dir / 'global_step_2'}; resume with" in stderr
    assert (ckpt_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    assert not (ckpt_dir / LOCK_FILE).exists()  # released on the way out
    print(f"\nsignal to exit: {took:.1f} s; checkpoint: {folder_bytes(ckpt_dir / 'global_step_2') / 1e6:.1f} MB")
    resumed = run(split + ["trainer.resume_mode=auto"])
    assert resumed["global_step"] == 3 and [h["step"] for h in resumed["history"]] == [3]
    a = comparable(read_metrics(tmp_path / "a" / "ckpt" / "metrics.jsonl"))
    b = comparable(read_metrics(ckpt_dir / "metrics.jsonl"))
    assert [e["step"] for e in b] == [1, 2, 3] and a == b
    assert read_dump(tmp_path / "a" / "rollouts" / "3.jsonl") == read_dump(tmp_path / "b" / "rollouts" / "3.jsonl")


def test_full_disk_during_a_save(ray_session, boxing_model, data_files, tmp_path):
    """The disk fills up while step 2 is saved, as rank 0 writes the reference model and rank 1
    waits for it: both ranks fail at once, the run ends with one line that says the disk is full and
    that global_step_1 is still good, the .tmp folder is gone, and the run resumes from step 1."""
    from corewarding.trainer import CheckpointError

    with small_disk(tmp_path / "disk", "256m") as disk:
        # Co-rewarding-II: its checkpoints hold the EMA teacher (a reference that never moved is not saved)
        overrides = (cpu_overrides(boxing_model, data_files, disk, "co_rewarding_II")
                     + [f"trainer.rollout_data_dir={tmp_path / 'rollouts'}"])
        run(overrides + ["trainer.max_steps_this_run=1"])
        ckpt_dir, step1 = disk / "ckpt", disk / "ckpt" / "global_step_1"
        usage = os.statvfs(disk)
        used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
        # room for the policy's HF folder and half of the reference model's weights
        resize_disk(disk, used + disk_pages(step1 / "actor") + (step1 / "ref" / "model.safetensors").stat().st_size // 2)
        started = time.monotonic()
        with pytest.raises(CheckpointError) as info:
            run(overrides + ["trainer.resume_mode=auto"])
        message = str(info.value)
        assert time.monotonic() - started < 300  # not a hang until the distributed timeout
        assert "\n" not in message, message
        assert f"cannot save checkpoint global_step_2 in {ckpt_dir}: write failed on rank 0: disk full:" in message
        assert "ref/model.safetensors" in message and "No space left on device" in message
        assert message.endswith(f"; {step1} is still good"), message
        # no .tmp left (logs/ holds the workers' logs)
        assert sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name != "logs") == ["global_step_1"]
        assert (ckpt_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
        resize_disk(disk, "256m")
        resumed = run(overrides + ["trainer.resume_mode=auto"])
        assert resumed["global_step"] == 2 and (ckpt_dir / "global_step_2" / "ref" / "model.safetensors").is_file()
