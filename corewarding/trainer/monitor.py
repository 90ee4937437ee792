"""The collapse monitor: per-step signs of reward hacking, for every method.

Self-rewarding methods fail in a recognisable way (the paper's Figure 1): the policy converges on a
consistent or confident answer that is wrong. The rollouts' groups agree ever more (majority ratio
towards 1, one distinct answer per group), entropy collapses, and accuracy against the ground truth
falls while the self-made reward keeps rising. `group_metrics` measures the first signs on every
step's rollouts (`monitor/*`), whatever the method; `CollapseMonitor` turns them, with the reward,
pseudo-label and entropy metrics, into one-line warnings and a `monitor/collapse` flag (1 while any
sign holds), which every logger and the plots receive.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Hashable, Sequence

from corewarding.config.schema import CollapseMonitorConfig
from corewarding.rewards import answers_equivalent

logger = logging.getLogger(__name__)


def group_metrics(
    answers: Sequence[str | None], group_ids: Sequence[Hashable], ground_truths: Sequence[str | None],
    scores: Sequence[float],
) -> dict[str, float]:
    """Per group of rollouts (same uid), averaged over groups:
    - `monitor/majority_ratio`: share of the group's rollouts that give its most common answer;
    - `monitor/distinct_answers`: number of different (non-empty) answers;
    - `monitor/zero_adv_groups`: share of groups whose rewards are all equal (no learning signal);
    - `monitor/majority_acc`: share of groups whose most common answer is right (groups with a
      ground truth only; the self-consistency accuracy, maj@n)."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(group_ids):
        groups.setdefault(key, []).append(i)
    ratios, distinct, flat, right = [], [], [], []
    for rows in groups.values():
        counts = Counter(answers[i].strip() for i in rows if answers[i] is not None and answers[i].strip())
        top, top_count = counts.most_common(1)[0] if counts else (None, 0)
        ratios.append(top_count / len(rows))
        distinct.append(len(counts))
        flat.append(len({float(scores[i]) for i in rows}) == 1)
        truth = next((ground_truths[i] for i in rows if ground_truths[i] not in (None, "")), None)
        if truth is not None:
            right.append(top is not None and answers_equivalent(top, truth))
    metrics = {
        "monitor/majority_ratio": _mean(ratios),
        "monitor/distinct_answers": _mean(distinct),
        "monitor/zero_adv_groups": _mean(flat),
    }
    if right:
        metrics["monitor/majority_acc"] = _mean(right)
    return metrics


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


class CollapseMonitor:
    """Feed it every step's metrics; it adds `monitor/collapse` (0 / 1) and warns once per sign
    (`trainer.collapse_monitor` sets `window`, `drop`, `consensus` and `entropy_fraction`):
    - consensus without correctness: the majority ratio's recent mean is at least `consensus` while
      the label accuracy (pseudo-label accuracy, or maj@n where there is no pseudo-label) is `drop`
      below its best window;
    - reward up, truth down: the reward's recent mean is `drop` above its first window while the
      accuracy of the rollouts against the ground truth is `drop` below its best window;
    - entropy collapse: the recent entropy is below `entropy_fraction` of the first step's."""

    def __init__(self, rules: CollapseMonitorConfig) -> None:
        self.rules = rules
        self.series: dict[str, list[float]] = {}
        self.warned: set[str] = set()
        self.first_step: int | None = None

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        for key in ("monitor/majority_ratio", "reward/pseudo_label_acc", "monitor/majority_acc", "reward/mean",
                    "reward/gt_acc", "actor/entropy"):
            if isinstance(metrics.get(key), (int, float)):
                self.series.setdefault(key, []).append(float(metrics[key]))
        signs = self.signs()
        metrics["monitor/collapse"] = float(bool(signs))
        if signs and self.first_step is None:
            self.first_step = step
        for name, detail in signs.items():
            if name not in self.warned:
                self.warned.add(name)
                logger.warning("step %d: sign of reward hacking: %s (%s)", step, name, detail)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON), so that a resumed run judges the same windows."""
        return {"series": self.series, "warned": sorted(self.warned), "first_step": self.first_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.series = {key: list(values) for key, values in state.get("series", {}).items()}
        self.warned = set(state.get("warned", []))
        self.first_step = state.get("first_step")

    def signs(self) -> dict[str, str]:
        """The signs that hold now: name -> what was seen."""
        found = {}
        label = "reward/pseudo_label_acc" if "reward/pseudo_label_acc" in self.series else "monitor/majority_acc"
        consensus, fall = self._recent("monitor/majority_ratio"), self._fall(label)
        if consensus is not None and fall is not None and consensus >= self.rules.consensus and fall >= self.rules.drop:
            found["consensus without correctness"] = f"majority ratio {consensus:.2f}, {label} down {fall:.2f}"
        rise, truth_fall = self._rise("reward/mean"), self._fall("reward/gt_acc")
        if rise is not None and truth_fall is not None and rise >= self.rules.drop and truth_fall >= self.rules.drop:
            found["reward up, truth down"] = f"reward up {rise:.2f}, gt_acc down {truth_fall:.2f}"
        entropy = self.series.get("actor/entropy", [])
        recent = self._recent("actor/entropy")
        if recent is not None and entropy[0] > 0 and recent < self.rules.entropy_fraction * entropy[0]:
            found["entropy collapse"] = f"entropy {recent:.3f} < {self.rules.entropy_fraction} x {entropy[0]:.3f}"
        return found

    def _windows(self, key: str) -> list[float]:
        values, w = self.series.get(key, []), self.rules.window
        return [_mean(values[i : i + w]) for i in range(0, len(values) - w + 1)]

    def _recent(self, key: str) -> float | None:
        windows = self._windows(key)
        return windows[-1] if windows else None

    def _fall(self, key: str) -> float | None:
        """How far the latest window is below the best window so far."""
        windows = self._windows(key)
        return max(windows) - windows[-1] if len(windows) > 1 else None

    def _rise(self, key: str) -> float | None:
        """How far the latest window is above the first window."""
        windows = self._windows(key)
        return windows[-1] - windows[0] if len(windows) > 1 else None
