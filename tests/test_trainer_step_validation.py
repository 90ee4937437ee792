"""The driver's validation without Ray (`Trainer.validate`, `fit`) on the scripted engine: the
batch padded to the worker count, verl's metrics over n responses, the release preset's greedy
sampling and Hendrycks scorer, and the collapse monitor fed every validation."""

from __future__ import annotations

import numpy as np
import pytest

from corewarding.trainer.tracking import read_metrics
from scripted_trainer import make_trainer
from scripted_trainer import data  # fixture


def test_validation_pads_to_the_worker_count(tiny_model_path, data, tmp_path):
    """3 validation prompts on 2 workers: padded to 4 for the dispatch, scored on the 3 real ones,
    sampled with val_kwargs (temperature 0.8, one sample)."""
    trainer, workers, engine = make_trainer(tiny_model_path, data, tmp_path, "naive", "trainer.log_val_generations=2")
    metrics = trainer.validate()
    assert workers.calls == ["generate:validation"]
    (call,) = engine.calls
    assert len(call["views"]) == 4
    assert call["sampling"].n == 1 and call["sampling"].temperature == 0.8 and not call["sampling"].greedy
    assert metrics["val/acc"] == pytest.approx(1 / 3)
    sources = [item["data_source"] for item in trainer.val_dataset.items]
    right = sources[[item["index"] for item in trainer.val_dataset.items].index(0)]
    for source in set(sources):
        expected = (source == right) / sources.count(source)
        assert metrics[f"val/{source}/acc"] == pytest.approx(expected)
    assert metrics["val/answer_present"] == 1.0
    shown = read_metrics(tmp_path / "val_generations.jsonl")  # trainer.log_val_generations=2
    assert len(shown) == 2 and shown[0]["step"] == 0
    assert [s["reward"] for s in shown] == [float(s["answer"] == s["ground_truth"]) for s in shown]


def test_validation_with_n_responses_reports_verls_metrics(tiny_model_path, data, tmp_path):
    """val_kwargs.n=2, every question answered right by its first response and wrong ("nope") by
    its second: val/acc = 1/2 as before, and per source verl's mean@2 = 1/2, std@2 = 1/2; over
    verl's bootstrap draws (RandomState(42), 1000 pairs of the 2 responses) best@2 is the share of
    pairs holding response 0, worst@2 the share of pairs (0, 0), and maj@2 the first drawn
    response's score (a 1-1 tie goes to the answer seen first)."""
    trainer, _, engine = make_trainer(tiny_model_path, data, tmp_path, "naive", "actor_rollout_ref.rollout.val_kwargs.n=2")
    calls = iter(range(10**6))
    engine.val_answer = lambda info: info["ground_truth"] if next(calls) % 2 == 0 else "nope"
    metrics = trainer.validate()
    assert metrics["val/acc"] == 0.5
    draws = np.random.RandomState(42).choice(2, size=(1000, 2), replace=True)
    best, worst, first = (draws == 0).any(1), (draws == 0).all(1), (draws[:, 0] == 0)
    for source in {item["data_source"] for item in trainer.val_dataset.items}:
        assert metrics[f"val/{source}/mean@2"] == 0.5 and metrics[f"val/{source}/std@2"] == 0.5
        for name, expected in (("best", best), ("worst", worst), ("maj", first)):
            assert metrics[f"val/{source}/{name}@2/mean"] == pytest.approx(expected.mean(), abs=1e-12), name
            assert metrics[f"val/{source}/{name}@2/std"] == pytest.approx(expected.std(), abs=1e-12), name


def test_validation_with_the_release_preset(tiny_model_path, data, tmp_path):
    """+preset=release validates greedily (val_kwargs.do_sample=False: temperature, top_p and top_k
    ignored; n copies of the greedy response, as verl repeats the prompts) and scores with the
    Hendrycks check: answers written "<truth>.0" are right for math-verify, wrong for the release.
    Ours samples at temperature 0.8."""
    answer_with_point_zero = lambda info: info["ground_truth"] + ".0"  # noqa: E731
    trainer, _, engine = make_trainer(tiny_model_path, data, tmp_path / "ours", "naive", "actor_rollout_ref.rollout.val_kwargs.n=2")
    engine.val_answer = answer_with_point_zero
    ours = trainer.validate()
    release_trainer, _, release_engine = make_trainer(
        tiny_model_path, data, tmp_path / "release", "naive", "+preset=release", "actor_rollout_ref.rollout.val_kwargs.n=2",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0.8", "actor_rollout_ref.rollout.val_kwargs.top_p=0.5",
    )
    release_engine.val_answer = answer_with_point_zero
    release = release_trainer.validate()
    (ours_call,), (release_call,) = engine.calls, release_engine.calls
    assert (ours_call["sampling"].temperature, ours_call["sampling"].n) == (0.8, 2) and not ours_call["sampling"].greedy
    assert release_call["sampling"].greedy and release_call["sampling"].n == 2 and release_call["sampling"].top_p == 1.0
    assert ours["val/acc"] == 1.0 and release["val/acc"] == 0.0


def test_fit_gives_the_monitor_every_validation(tiny_model_path, data, tmp_path):
    """The collapse monitor's verdict reads the validations: the base model's before step 1 and those
    at test_freq, each logged with the flags, after the step's own update."""
    trainer, _, _ = make_trainer(tiny_model_path, data, tmp_path, "majority_voting", "trainer.test_freq=2",
                                 "trainer.save_freq=-1", "trainer.val_before_train=True")
    history = trainer.fit(progress=False)
    validated = [h for h in history if "val/acc" in h]
    assert [h["step"] for h in validated] == [0, 2, 4]
    assert trainer.monitor.val_acc == [h["val/acc"] for h in validated]
    for entry in history:
        assert {"monitor/acc_fell", "monitor/collapse", "monitor/degenerate", "monitor/hacking_signs"} <= set(entry)
