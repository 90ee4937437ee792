"""The collapse monitor on hand-made rollouts and metric series."""

from __future__ import annotations

import logging

import pytest

from corewarding.config.schema import CollapseMonitorConfig
from corewarding.trainer.monitor import CollapseMonitor, group_metrics


def rules(window: int = 2, entropy_fraction: float = 0.2) -> CollapseMonitorConfig:
    return CollapseMonitorConfig(window=window, drop=0.1, relative_drop=0.5, consensus=0.9,
                                 entropy_fraction=entropy_fraction)


def test_group_metrics_by_hand():
    answers = ["5", "5", "7", None, "3", "3", "3", "3", "1", "2", "4", "8"]
    uids = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    truths = ["5"] * 4 + ["4"] * 4 + [None] * 4
    scores = [1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0]
    m = group_metrics(answers, uids, truths, scores)
    assert m["monitor/majority_ratio"] == pytest.approx((2 / 4 + 4 / 4 + 1 / 4) / 3)
    assert m["monitor/distinct_answers"] == pytest.approx((2 + 1 + 4) / 3)
    assert m["monitor/zero_adv_groups"] == pytest.approx(1 / 3)  # group b: all rewards 1
    assert m["monitor/majority_acc"] == pytest.approx(1 / 2)  # a right (5), b wrong (3 vs 4), c has no truth
    assert "monitor/majority_acc" not in group_metrics(["1"], ["x"], [None], [0.0])


def feed(monitor: CollapseMonitor, series: dict[str, list[float]], flag: str = "monitor/collapse") -> list[float]:
    flags = []
    for step in range(len(next(iter(series.values())))):
        metrics = {key: values[step] for key, values in series.items()}
        monitor.update(step + 1, metrics)
        flags.append(metrics[flag])
    return flags


def test_consensus_without_correctness_fires_once_with_a_warning(caplog):
    """Majority voting collapsing: agreement rises to 1 while the pseudo-labels get worse."""
    series = {
        "monitor/majority_ratio": [0.4, 0.5, 0.7, 0.9, 1.0, 1.0, 1.0, 1.0],
        "reward/pseudo_label_acc": [0.30, 0.35, 0.35, 0.30, 0.20, 0.10, 0.05, 0.0],
        "reward/mean": [0.3, 0.4, 0.6, 0.8, 0.95, 1.0, 1.0, 1.0],
        "reward/gt_acc": [0.20, 0.25, 0.25, 0.20, 0.10, 0.05, 0.0, 0.0],
        "actor/entropy": [1.5, 1.4, 1.2, 0.9, 0.6, 0.4, 0.2, 0.1],
    }
    monitor = CollapseMonitor(rules())
    with caplog.at_level(logging.WARNING, logger="corewarding.trainer.monitor"):
        flags = feed(monitor, series)
    assert flags[:4] == [0.0] * 4 and flags[-1] == 1.0
    assert monitor.first_step == flags.index(1.0) + 1
    assert set(monitor.signs()) == {"consensus without correctness", "reward up, truth down", "entropy low"}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and sum("sign of reward hacking" in w for w in warnings) == 2
    assert any("warning: entropy low" in w for w in warnings)  # said, but not a collapse


def test_healthy_learning_raises_nothing():
    """GT-reward learning: reward and accuracy rise together, entropy falls moderately."""
    series = {
        "monitor/majority_ratio": [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.95],
        "monitor/majority_acc": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8],
        "reward/mean": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8],
        "reward/gt_acc": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8],
        "actor/entropy": [1.5, 1.4, 1.3, 1.2, 1.1, 1.0, 0.9, 0.9],
    }
    monitor = CollapseMonitor(rules())
    assert feed(monitor, series) == [0.0] * 8 and monitor.first_step is None


def test_a_gt_reward_falling_from_its_peak_is_not_reward_hacking():
    """The seed-1 GT run: reward is gt_acc itself, up from its start and down from its peak (noise on
    8 questions a step); a reward that keeps rising while gt_acc falls is still flagged."""
    gt = [0.02, 0.06, 0.17, 0.17, 0.36, 0.47, 0.41, 0.22, 0.34, 0.56, 0.41, 0.47, 0.56, 0.48, 0.25, 0.23]
    monitor = CollapseMonitor(rules(window=3))
    feed(monitor, {"reward/mean": gt, "reward/gt_acc": gt})
    assert monitor.first_step is None and "reward up, truth down" not in monitor.warned
    hacked = CollapseMonitor(rules(window=3))
    feed(hacked, {"reward/mean": [0.1 + 0.05 * i for i in range(16)], "reward/gt_acc": gt})
    assert "reward up, truth down" in hacked.warned and hacked.first_step is not None


def test_low_entropy_alone_is_a_warning_not_a_collapse():
    """GT-reward learning lowers entropy too: monitor/entropy_low, never monitor/collapse."""
    series = {"actor/entropy": [1.0, 0.8, 0.5, 0.2, 0.1, 0.1]}
    monitor = CollapseMonitor(rules())
    assert feed(monitor, series, "monitor/entropy_low") == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # step 5: (0.2 + 0.1) / 2 < 0.2
    assert feed(CollapseMonitor(rules()), series) == [0.0] * 6 and monitor.first_step is None
    assert set(monitor.signs()) == {"entropy low"}


def test_a_relative_fall_counts_at_low_accuracy():
    """A model at 5 % cannot fall by 0.1: its pseudo-label accuracy halving counts as a fall."""
    series = {"monitor/majority_ratio": [0.5, 0.7, 0.9, 0.95, 1.0, 1.0],
              "reward/pseudo_label_acc": [0.05, 0.06, 0.05, 0.03, 0.02, 0.01]}
    assert feed(CollapseMonitor(rules()), series) == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # windows 0.055 -> 0.025
    steady = dict(series, **{"reward/pseudo_label_acc": [0.05, 0.06, 0.05, 0.05, 0.04, 0.05]})
    assert feed(CollapseMonitor(rules()), steady) == [0.0] * 6


def test_answers_vanish():
    """Self-Certainty's collapse: the rollouts stop giving an answer at all."""
    monitor = CollapseMonitor(rules())
    flags = feed(monitor, {"reward/answer_present": [0.4, 0.5, 0.3, 0.2, 0.1, 0.0]})
    assert flags == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # windows 0.45, 0.4, 0.25, then 0.15 <= 0.5 x 0.45
    assert set(monitor.signs()) == {"answers vanish"}


def test_relative_drop_zero_switches_the_relative_rules_off():
    off = CollapseMonitorConfig(window=2, drop=0.1, relative_drop=0.0, consensus=0.9, entropy_fraction=0.2)
    series = {"monitor/majority_ratio": [0.5, 0.7, 0.9, 0.95, 1.0, 1.0],
              "reward/pseudo_label_acc": [0.05, 0.06, 0.05, 0.03, 0.02, 0.01],
              "reward/answer_present": [0.9, 0.9, 0.9, 0.9, 0.9, 0.9]}
    assert feed(CollapseMonitor(off), series) == [0.0] * 6
