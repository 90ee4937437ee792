"""Checkpoint folders (commit, `latest`, retention, fsync, a corrupt or diverging resume refused
before Ray starts) and the metric files (metrics.jsonl, the wandb run id, TensorBoard, rollout dumps)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from corewarding.config import compose_config
from corewarding.trainer import CheckpointError
from corewarding.trainer import checkpoint as ckpt
from corewarding.trainer.tracking import Tracker, dump_rollouts, format_console, read_metrics
from config_overrides import base
from config_overrides import data  # fixture


def test_corrupt_resume_dir(tiny_model_path, data, tmp_path):
    from corewarding.trainer.run import run_training

    root = tmp_path / "ckpt"
    (root / "global_step_2").mkdir(parents=True)
    (root / ckpt.LATEST_FILE).write_text("2")
    overrides = base(tiny_model_path, data, out=tmp_path) + ["trainer.resume_mode=auto"]
    with pytest.raises(CheckpointError, match="incomplete"):
        run_training(compose_config(overrides))
    (root / "global_step_2" / ckpt.STATE_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        run_training(compose_config(overrides))
    (root / ckpt.LATEST_FILE).write_text("7")
    with pytest.raises(CheckpointError, match="global_step_7, which does not exist"):
        run_training(compose_config(overrides))
    with pytest.raises(CheckpointError, match="does not exist"):
        run_training(compose_config(base(tiny_model_path, data, out=tmp_path) + [
            "trainer.resume_mode=resume_path", f"trainer.resume_from_path={tmp_path / 'nowhere'}"]))


def test_checkpoint_commit_and_latest(tmp_path):
    for step in (1, 2, 3):
        tmp = ckpt.begin(tmp_path, step)
        (tmp / "payload").write_text(str(step))
        ckpt.commit(tmp_path, step, tmp, {"dataloader": {"position": step}}, keep=2)
    assert ckpt.latest_dir(tmp_path) == tmp_path / "global_step_3"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["global_step_2", "global_step_3"]
    state = ckpt.read_state(tmp_path / "global_step_3")
    assert state["global_step"] == 3 and state["complete"] and state["dataloader"] == {"position": 3}
    assert (tmp_path / "global_step_3" / "payload").read_text() == "3"
    assert ckpt.latest_dir(tmp_path / "empty") is None
    tmp = ckpt.begin(tmp_path, 4)  # a crash inside a save leaves only global_step_4.tmp: not a checkpoint
    (tmp / "payload").write_text("half")
    assert ckpt.latest_dir(tmp_path) == tmp_path / "global_step_3"


def _save(root, step, keep=None):
    tmp = ckpt.begin(root, step)
    (tmp / "payload").write_text(str(step))
    return ckpt.commit(root, step, tmp, {"dataloader": {"position": step}}, keep=keep)


def test_retention_never_deletes_the_checkpoint_just_saved(tmp_path):
    """Saving step 40 (a run resumed from 30) while 50 and 60 exist, keep=2: 40 and 30 stay, the
    later ones are not touched, and `latest` names a checkpoint that exists."""
    for step in (30, 40, 50, 60):
        _save(tmp_path, step)
    _save(tmp_path, 40, keep=2)
    assert ckpt.latest_dir(tmp_path) == tmp_path / "global_step_40"
    assert ckpt.checkpoint_steps(tmp_path) == [30, 40, 50, 60]
    _save(tmp_path, 45, keep=2)  # older ones beyond keep go, the newer ones still stay
    assert ckpt.checkpoint_steps(tmp_path) == [40, 45, 50, 60]
    assert ckpt.latest_dir(tmp_path) == tmp_path / "global_step_45"


def test_commit_fsyncs_files_folders_and_latest(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    _save(tmp_path, 1)
    root = str(tmp_path)
    assert f"{root}/global_step_1.tmp/{ckpt.STATE_FILE}.tmp" in synced  # the state file, before its rename
    assert f"{root}/global_step_1.tmp" in synced  # the folder, before it is published
    assert f"{root}/{ckpt.LATEST_FILE}.tmp" in synced  # the latest file, before its rename
    assert synced.count(root) >= 2  # the root after each rename


@pytest.mark.parametrize("save_freq", [10, -1])
def test_resume_before_later_checkpoints_is_refused(save_freq, tiny_model_path, data, tmp_path):
    """Resuming from step 30 (or starting afresh) in a folder that holds later checkpoints fails
    before Ray starts, naming them and how to branch; without periodic saves too (a preemption
    signal saves, and the metrics log would be cut back to the start)."""
    from corewarding.trainer.run import run_training

    root = tmp_path / "ckpt"
    for step in (30, 40, 50):
        _save(root, step)
    overrides = base(tiny_model_path, data, out=tmp_path) + [f"trainer.save_freq={save_freq}"]
    with pytest.raises(CheckpointError, match=r"holds checkpoints after step 30 \(global_step_40 .. global_step_50\).*new folder"):
        run_training(compose_config(overrides + ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={root / 'global_step_30'}"]))
    with pytest.raises(CheckpointError, match=r"after step 0 .*resume it \(trainer.resume_mode=auto\)"):
        run_training(compose_config(overrides + ["trainer.resume_mode=disable"]))
    assert ckpt.checkpoint_steps(root) == [30, 40, 50]


def test_tracker_jsonl_and_resume_truncation(tmp_path):
    lines = []
    tracker = Tracker(tmp_path, ["console"], printer=lines.append)
    for step in range(1, 5):
        tracker.log({"reward/mean": step / 10, "timing/step": 1.0}, step)
    tracker.close()
    assert len(lines) == 4 and lines[0].startswith("step 1 | reward 0.100")
    tracker = Tracker(tmp_path, ["console"], resume_step=2, printer=lines.append)
    tracker.log({"reward/mean": 0.9}, 3)
    tracker.close()
    assert [m["step"] for m in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    Tracker(tmp_path, [], resume_step=None).close()  # a fresh start drops the old file
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_a_resume_cuts_back_the_validation_samples_and_tensorboard_too(tmp_path, monkeypatch):
    """val_generations.jsonl keeps the samples up to the resumed step (a fresh start drops it), and
    TensorBoard purges the events from the step after it (a crashed run's steps past its checkpoint;
    a fresh start: all of an earlier run's)."""
    import types

    tracker = Tracker(tmp_path, [])
    for step in (2, 4, 6):
        tracker.log_generations([{"response": f"r{step}"}], step)
    tracker.close()
    Tracker(tmp_path, [], resume_step=4).close()
    samples = [json.loads(line) for line in (tmp_path / "val_generations.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 4]
    Tracker(tmp_path, [], resume_step=None).close()
    assert not (tmp_path / "val_generations.jsonl").exists()
    writers = []
    fake = types.SimpleNamespace(SummaryWriter=lambda **kw: writers.append(kw) or types.SimpleNamespace(close=lambda: None))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    Tracker(tmp_path, ["tensorboard"], resume_step=4).close()
    Tracker(tmp_path, ["tensorboard"]).close()
    assert [w["purge_step"] for w in writers] == [5, 0]


def test_wandb_run_id_is_new_for_a_fresh_run(tmp_path, monkeypatch):
    """A fresh run must not reuse the id of an earlier run in the same folder (wandb would drop its
    first steps as already logged); a resumed run continues its own."""
    import types

    started = []
    fake = types.SimpleNamespace(init=lambda **kw: started.append(kw["id"]) or types.SimpleNamespace(finish=lambda: None))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    Tracker(tmp_path, ["wandb"]).close()
    Tracker(tmp_path, ["wandb"], resume_step=3).close()
    Tracker(tmp_path, ["wandb"], resume_step=None).close()
    assert started[1] == started[0] and started[2] != started[0]
    assert (tmp_path / "wandb_run_id.txt").read_text() == started[2]


def test_tensorboard_and_dump(tmp_path):
    tracker = Tracker(tmp_path, ["tensorboard"])
    tracker.log({"reward/mean": 0.5}, 1)
    tracker.close()
    assert list((tmp_path / "tensorboard").iterdir())
    path = dump_rollouts(tmp_path / "r", 7, [{"uid": "7-0", "reward": 1.0, "answer": None}])
    assert path.name == "7.jsonl" and json.loads(path.read_text()) == {"uid": "7-0", "reward": 1.0, "answer": None}
    assert "val_acc 0.250" in format_console(3, {"val/acc": 0.25})
