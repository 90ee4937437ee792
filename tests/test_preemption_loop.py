"""A preemption signal in every window of the fit loop, sent from inside the loop itself (the
points where the loop validates, saves, logs or draws the next batch are wrapped to send SIGTERM
to this process), on the recording worker group of scripted_trainer.py: each time the run ends
with `Preempted` naming the last trained step, a checkpoint of that step is on disk, and a fresh
trainer resumed from it trains the remaining steps on the prompts a straight run trains on."""

from __future__ import annotations

import os
import signal
from typing import Any, Callable

import pytest

from corewarding.trainer import checkpoint as ckpt
from corewarding.trainer.preemption import Preempted, PreemptionWatch
from scripted_trainer import make_trainer
from scripted_trainer import data  # fixture

STEPS = 4  # make_trainer plans 4 steps


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line of the caller


def signal_inside(trainer: Any, name: str, when: Callable[[], bool]) -> None:
    """Wrap `trainer.<name>` so that it sends SIGTERM while it runs, on the calls where `when()`."""
    inner = getattr(trainer, name)

    def wrapped(*args, **kwargs):
        out = inner(*args, **kwargs)
        if when():
            sigterm()
        return out

    setattr(trainer, name, wrapped)


def signal_on_draw(trainer: Any, draw: int) -> None:
    """SIGTERM while the loop draws its `draw`-th batch: after the last decision, before the step."""
    stream = trainer._batch_stream

    def batches():
        for count, batch in enumerate(stream(), start=1):
            if count == draw:
                sigterm()
            yield batch

    trainer._batch_stream = batches


def trained_prompts(workers: Any) -> list[list[tuple[int, ...]]]:
    """The prompts of each update the workers received, in order."""
    return [sorted({tuple(p) for p in update.rows["prompt_ids"]}) for update in workers.updates]


WINDOWS = {  # window -> (extra overrides, how to hook it, the last trained step when the run stops)
    "during the step": ([], lambda t: signal_inside(t, "train_step", lambda: t.global_step == 2), 2),
    "during validation": (["trainer.test_freq=1"], lambda t: signal_inside(t, "validate", lambda: t.global_step == 2), 2),
    "during a periodic save": (["trainer.save_freq=2"],
                               lambda t: signal_inside(t, "save_checkpoint", lambda: t.global_step == 2), 2),
    "during logging": ([], lambda t: signal_inside(t, "_log", lambda: t.global_step == 2), 2),
    "between steps": ([], lambda t: signal_on_draw(t, 3), 3),
    "during start-up validation": (["trainer.val_before_train=True"],
                                   lambda t: signal_inside(t, "validate", lambda: t.global_step == 0), 0),
}


@pytest.mark.parametrize("window", list(WINDOWS))
def test_a_signal_in_any_window_saves_the_last_trained_step(window, tiny_model_path, data, tmp_path):
    extra, hook, last = WINDOWS[window]
    common = ["trainer.save_freq=-1", "trainer.test_freq=-1",
              "trainer.val_before_train=False", *extra]
    straight, straight_workers, _ = make_trainer(tiny_model_path, data, tmp_path / "straight", "majority_voting", *common)
    straight.fit(progress=False)

    root = tmp_path / "run"
    trainer, workers, _ = make_trainer(tiny_model_path, data, root, "majority_voting", *common)
    hook(trainer)
    saves = []
    signal_inside(trainer, "save_checkpoint", lambda: saves.append(trainer.global_step) and False)
    watch = PreemptionWatch(["SIGTERM"], lambda: None)
    watch.install()
    try:
        with pytest.raises(Preempted) as stopped:
            trainer.fit(progress=False, preemption=watch)
    finally:
        watch.restore()

    assert trainer.global_step == last
    latest = ckpt.latest_dir(root)
    if last == 0:
        assert latest is None and stopped.value.checkpoint is None
        assert str(stopped.value).startswith("SIGTERM: no step trained yet, no checkpoint; resume with the same command")
    else:
        assert latest == stopped.value.checkpoint == ckpt.step_dir(root, last)
        assert str(stopped.value).startswith(f"SIGTERM: last trained step {last}, checkpoint {latest}; resume with")
    assert saves.count(last) == (1 if last else 0)  # a step saved periodically is not saved again

    resumed, resumed_workers, _ = make_trainer(tiny_model_path, data, root, "majority_voting", *common)
    if latest is not None:
        resumed.load_checkpoint(latest, ckpt.read_state(latest))
    history = resumed.fit(progress=False)
    assert [h["step"] for h in history if h["step"] > 0] == list(range(last + 1, STEPS + 1))
    assert trained_prompts(workers) + trained_prompts(resumed_workers) == trained_prompts(straight_workers)


def test_a_signal_during_the_last_step_saves_it_and_ends_the_run(tiny_model_path, data, tmp_path):
    """The planned end came with the signal: the step is saved and the run returns (no requeue)."""
    trainer, _, _ = make_trainer(tiny_model_path, data, tmp_path, "majority_voting", "trainer.save_freq=-1",
                                 "trainer.test_freq=-1", "trainer.val_before_train=False")
    signal_inside(trainer, "_log", lambda: trainer.global_step == STEPS)
    watch = PreemptionWatch(["SIGTERM"], lambda: None)
    watch.install()
    try:
        history = trainer.fit(progress=False, preemption=watch)
    finally:
        watch.restore()
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert ckpt.latest_dir(tmp_path) == ckpt.step_dir(tmp_path, STEPS)


def test_a_signal_in_start_up_skips_the_pre_training_validation(tiny_model_path, data, tmp_path):
    """A signal that arrived while the workers loaded (before `fit`): the run stops at once with no
    step to save, without first running the whole pre-training validation (minutes at scale, longer
    than a scheduler's grace time)."""
    trainer, _, _ = make_trainer(tiny_model_path, data, tmp_path, "majority_voting", "trainer.save_freq=-1",
                                 "trainer.test_freq=-1", "trainer.val_before_train=True")
    validations = []
    signal_inside(trainer, "validate", lambda: validations.append(trainer.global_step) and False)
    watch = PreemptionWatch(["SIGTERM"], lambda: None)
    watch.install()
    try:
        sigterm()
        with pytest.raises(Preempted) as stopped:
            trainer.fit(progress=False, preemption=watch)
    finally:
        watch.restore()
    assert validations == [] and trainer.global_step == 0 and stopped.value.checkpoint is None
