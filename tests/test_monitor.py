"""The collapse monitor on hand-made rollouts and metric series, and replayed over the recorded runs."""

from __future__ import annotations

import logging
import statistics
import sys
from pathlib import Path

import pytest

from corewarding.config.schema import CollapseMonitorConfig
from corewarding.experiments.runs import merged_steps, monitor_cell, replay_monitor
from corewarding.trainer.monitor import CollapseMonitor, group_metrics
from corewarding.trainer.tracking import read_metrics


def rules(window: int = 2, entropy_fraction: float = 0.2, relative_drop: float = 0.5) -> CollapseMonitorConfig:
    return CollapseMonitorConfig(window=window, drop=0.1, relative_drop=relative_drop, consensus=0.9, truncation=0.5,
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


def feed(monitor: CollapseMonitor, series: dict[str, list[float]], flag: str = "monitor/hacking_signs",
         val: dict[int, float] | None = None) -> list[float]:
    """Steps 1, 2, ... of `series`, with a validation (`val`: step -> val/acc; step 0 the base)
    after the steps it names, as the trainer does; the flag after each step."""
    val = val or {}
    if 0 in val:
        monitor.validation(0, {"val/acc": val[0]})
    flags = []
    for step in range(1, len(next(iter(series.values()))) + 1):
        metrics = {key: values[step - 1] for key, values in series.items()}
        monitor.update(step, metrics)
        if step in val:
            metrics["val/acc"] = val[step]
            monitor.validation(step, metrics)
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
    assert monitor.first["consensus without correctness"] == flags.index(1.0) + 1
    assert CollapseMonitor.COLLAPSE not in monitor.first  # no validation: no verdict
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
    assert feed(monitor, series) == [0.0] * 8 and monitor.first == {}


def test_a_gt_reward_falling_from_its_peak_is_not_reward_hacking():
    """The seed-1 GT run: reward is gt_acc itself, up from its start and down from its peak (noise on
    8 questions a step); a reward that keeps rising while gt_acc falls is still flagged."""
    gt = [0.02, 0.06, 0.17, 0.17, 0.36, 0.47, 0.41, 0.22, 0.34, 0.56, 0.41, 0.47, 0.56, 0.48, 0.25, 0.23]
    monitor = CollapseMonitor(rules(window=3))
    feed(monitor, {"reward/mean": gt, "reward/gt_acc": gt})
    assert "reward up, truth down" not in monitor.warned
    hacked = CollapseMonitor(rules(window=3))
    feed(hacked, {"reward/mean": [0.1 + 0.05 * i for i in range(16)], "reward/gt_acc": gt})
    assert "reward up, truth down" in hacked.first


def test_low_entropy_alone_is_a_warning_not_a_collapse():
    """GT-reward learning lowers entropy too: monitor/entropy_low, never monitor/collapse."""
    series = {"actor/entropy": [1.0, 0.8, 0.5, 0.2, 0.1, 0.1]}
    monitor = CollapseMonitor(rules())
    assert feed(monitor, series, "monitor/entropy_low") == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # step 5: (0.2 + 0.1) / 2 < 0.2
    assert feed(CollapseMonitor(rules()), series, "monitor/collapse") == [0.0] * 6
    assert feed(CollapseMonitor(rules()), series) == [0.0] * 6 and CollapseMonitor.COLLAPSE not in monitor.first
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


def test_a_non_finite_value_is_left_out_of_the_means_and_numpy_scalars_are_kept():
    """One NaN (a diverged step, a custom reward) would make every later window's best NaN and
    silence the sign: it stays in the series as NaN, so the series keep step by step aligned (the
    GT-reward guard compares two of them window by window), and is left out of every mean; a numpy
    float counts as a float; a NaN validation is no baseline."""
    import math

    import numpy as np

    monitor = CollapseMonitor(rules())
    values = [float("nan"), np.float32(0.4), 0.5, float("inf"), 0.3, 0.2, 0.1, 0.0]
    flags = feed(monitor, {"reward/answer_present": values, "reward/gt_acc": [0.5] * len(values)})
    series = monitor.series["reward/answer_present"]
    assert len(series) == len(monitor.series["reward/gt_acc"]) == len(values)
    assert [i for i, v in enumerate(series) if math.isnan(v)] == [0, 3]
    assert monitor._windows("reward/answer_present") == pytest.approx([0.4, 0.45, 0.5, 0.3, 0.25, 0.15, 0.05])
    assert flags[-1] == 1.0 and set(monitor.signs()) == {"answers vanish"}
    monitor.validation(0, {"val/acc": float("nan")})
    monitor.validation(8, {"val/acc": 0.2})
    assert monitor.val_acc == [0.2]


def test_relative_drop_zero_switches_the_relative_rules_off():
    series = {"monitor/majority_ratio": [0.5, 0.7, 0.9, 0.95, 1.0, 1.0],
              "reward/pseudo_label_acc": [0.05, 0.06, 0.05, 0.03, 0.02, 0.01],
              "reward/answer_present": [0.9, 0.9, 0.9, 0.9, 0.9, 0.9]}
    assert feed(CollapseMonitor(rules(relative_drop=0.0)), series) == [0.0] * 6
    falls = {0: 0.05, 3: 0.06, 6: 0.01}
    assert feed(CollapseMonitor(rules(relative_drop=0.0)), series, "monitor/acc_fell", val=falls) == [0.0] * 6
    assert feed(CollapseMonitor(rules()), series, "monitor/acc_fell", val=falls)[-1] == 1.0


CONFIDENT_AND_WRONG = {"monitor/majority_ratio": [0.4, 0.6, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99],
                       "response_length/clip_ratio": [0.0] * 8}


def test_a_collapse_is_a_validation_fall_by_half_under_consensus(caplog):
    """Majority-Voting's way: the validation accuracy falls below half of its best (the base model's
    included) while the groups agree; flagged from that validation on, with one warning."""
    val = {0: 0.05, 4: 0.30, 8: 0.12}
    monitor = CollapseMonitor(rules())
    with caplog.at_level(logging.WARNING, logger="corewarding.trainer.monitor"):
        collapse = feed(monitor, CONFIDENT_AND_WRONG, "monitor/collapse", val=val)
    assert collapse == [0.0] * 7 + [1.0]  # 0.12 < 0.5 x 0.30, majority ratio (0.98 + 0.99) / 2
    assert monitor.first[CollapseMonitor.COLLAPSE] == 8 and monitor.first["validation accuracy fell"] == 8
    assert sum("monitor: collapse" in r.getMessage() for r in caplog.records) == 1
    held = {0: 0.05, 4: 0.30, 8: 0.16}  # 0.16 >= 0.15: no fall
    assert feed(CollapseMonitor(rules()), CONFIDENT_AND_WRONG, "monitor/acc_fell", val=held) == [0.0] * 8
    from_base = {0: 0.30, 8: 0.12}  # the base model is the best so far
    assert feed(CollapseMonitor(rules()), CONFIDENT_AND_WRONG, "monitor/collapse", val=from_base)[-1] == 1.0


def test_a_fall_without_consensus_is_only_a_fall_and_one_by_truncation_is_degenerate():
    """The same fall with the groups still disagreeing (0.8) is `acc_fell` alone; with half of the
    responses cut at the length limit it is `degenerate` (Self-Certainty's way), not a collapse."""
    val = {0: 0.05, 4: 0.30, 8: 0.12}
    split = dict(CONFIDENT_AND_WRONG, **{"monitor/majority_ratio": [0.8] * 8})
    flags = {flag: feed(CollapseMonitor(rules()), split, flag, val=val)[-1]
             for flag in ("monitor/acc_fell", "monitor/collapse", "monitor/degenerate")}
    assert flags == {"monitor/acc_fell": 1.0, "monitor/collapse": 0.0, "monitor/degenerate": 0.0}
    cut = dict(CONFIDENT_AND_WRONG, **{"response_length/clip_ratio": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.7]})
    flags = {flag: feed(CollapseMonitor(rules()), cut, flag, val=val)[-1]
             for flag in ("monitor/acc_fell", "monitor/collapse", "monitor/degenerate")}
    assert flags == {"monitor/acc_fell": 1.0, "monitor/collapse": 0.0, "monitor/degenerate": 1.0}


def test_a_resumed_monitor_judges_the_same_validations():
    """The checkpoint keeps the validation accuracies: a monitor restored from it flags the fall that
    the uninterrupted one flags (JSON round trip, as the checkpoint writes it)."""
    import json

    whole = CollapseMonitor(rules())
    feed(whole, CONFIDENT_AND_WRONG, val={0: 0.05, 4: 0.30, 8: 0.12})
    first = CollapseMonitor(rules())
    feed(first, {key: values[:4] for key, values in CONFIDENT_AND_WRONG.items()}, val={0: 0.05, 4: 0.30})
    resumed = CollapseMonitor(rules())
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for step in range(5, 9):
        metrics = {key: values[step - 1] for key, values in CONFIDENT_AND_WRONG.items()}
        resumed.update(step, metrics)
    metrics["val/acc"] = 0.12
    resumed.validation(8, metrics)
    assert metrics["monitor/collapse"] == 1.0 and resumed.first == whole.first


FIGS = Path(__file__).resolve().parents[1] / "figs"
# What the recorded 16-step runs of figs/runs did, read from their validation and rollouts (the README's
# "Does it learn?"): Majority-Voting on the union of both views and Co-rewarding-I with half of its
# twins unfaithful converge on wrong answers (validation 0, majority ratio 0.98-0.99); Self-Certainty
# and the random reward stop answering within the length limit; GT and Co-rewarding-II learn.
REPLICATION = {"union/majority_voting_union": "collapse", "f050/co_rewarding_i": "collapse",
               "seed0/self_certainty": "degenerate", "seed1/self_certainty": "degenerate",
               "seed2/self_certainty": "degenerate", "controls/random": "degenerate",
               "seed0/entropy": "none", "seed1/entropy": "fell", "seed2/entropy": "fell",  # falls, no consensus
               **{f"seed{s}/{m}": "none" for s in range(3) for m in ("gt", "co_rewarding_ii", "majority_voting")}}


def _reading(run_dir: Path) -> str:
    first = replay_monitor(merged_steps(read_metrics(run_dir / "metrics.jsonl")))
    return monitor_cell(first).split(" ")[0]


@pytest.mark.parametrize("run", sorted(REPLICATION))
def test_the_monitor_reads_the_recorded_replication_runs_for_what_they_are(run):
    assert _reading(FIGS / "runs" / run) == REPLICATION[run]


def test_the_monitor_agrees_with_the_decisive_protocol_on_its_runs():
    """Replayed over every finished run of the decisive experiment, the monitor flags a collapse
    (a degenerate run) exactly where figs/decisive/PROTOCOL.md's definition reads one at step 48."""
    sys.path.insert(0, str(FIGS.parent / "scripts"))
    import decisive_results

    base, runs = decisive_results.read_runs(FIGS / "decisive" / "runs")
    assert len(runs) >= 10
    protocol = {"collapsed": "collapse", "truncation": "degenerate"}
    for run in runs:
        reading = decisive_results.status(run, statistics.fmean(base))
        monitor = _reading(FIGS / "decisive" / "runs" / f"seed{run.seed}" / run.name)
        expected = protocol.get(reading, "neither")
        assert (monitor if monitor in protocol.values() else "neither") == expected, (run.name, run.seed)
