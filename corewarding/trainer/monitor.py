"""The collapse monitor: per-step signs of reward hacking, for every method.

Self-rewarding methods fail in a recognisable way (the paper's Figure 1): the policy converges on a
consistent or confident answer that is wrong. The rollouts' groups agree ever more (majority ratio
towards 1, one distinct answer per group), entropy collapses, and accuracy against the ground truth
falls while the self-made reward keeps rising. `group_metrics` measures the first signs on every
step's rollouts (`monitor/*`), whatever the method. `CollapseMonitor` gives the verdict on the
validation accuracy, as the decisive experiment defines a collapse (`monitor/collapse`, and
`monitor/degenerate` for a fall by truncation), and reports the noisier signs of the step's own
rollouts apart (`monitor/hacking_signs`, `monitor/entropy_low`); every logger and the plots receive them.
"""

from __future__ import annotations

import logging
import math
import numbers
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


def _number(value: Any) -> bool:
    """A metric value: a Python or numpy number (a bool is a flag, not a value)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


class CollapseMonitor:
    """Feed it every step's metrics (`update`) and every validation's (`validation`); it adds flags
    (0 / 1) to them and warns once per sign (`trainer.collapse_monitor` sets the thresholds).

    The verdict, given at each validation and held until the next, as figs/decisive/PROTOCOL.md
    defines a collapse (there at step 48, over steps 45-48: `window` 4):
    - `monitor/acc_fell`: the validation accuracy (`val/acc`) is below `relative_drop` of the best
      one before it (the base model's included);
    - `monitor/collapse`: it fell, and the rollouts' majority ratio over the `window` steps before
      the validation is at least `consensus`: confident and wrong, the paper's collapse;
    - `monitor/degenerate`: it fell, and the share of responses cut at the length limit
      (`response_length/clip_ratio`, same steps) is at least `truncation`: the model stops
      answering within the limit (Self-Certainty's way here), counted apart from a collapse.
    `monitor/hacking_signs`, early signs on the step's own rollouts (noisy on small batches: a batch
    of 8 prompts moves its accuracy by 0.1 from step to step; docs/metrics.md). An accuracy "falls"
    when its latest window is `drop` below its best window, or `relative_drop` of it:
    - consensus without correctness: the majority ratio's recent mean is at least `consensus` while
      the label accuracy (pseudo-label accuracy, or maj@n where there is no pseudo-label) falls;
    - reward up, truth down: the reward's recent mean is `drop` above its first window while the
      accuracy of the rollouts against the ground truth falls, and the reward did not fall with it
      (no lower than where the truth had its best window: a GT reward is the truth);
    - answers vanish: the share of rollouts with an answer (`reward/answer_present`) falls by
      `relative_drop` of its best window.
    `monitor/entropy_low`: entropy below `entropy_fraction` of the first step's. GT learning lowers
    it too, so it is a warning."""

    SERIES = ("monitor/majority_ratio", "reward/pseudo_label_acc", "monitor/majority_acc", "reward/mean",
              "reward/gt_acc", "reward/answer_present", "actor/entropy", "response_length/clip_ratio")
    FELL, COLLAPSE, DEGENERATE = "validation accuracy fell", "collapse", "degenerate by truncation"
    HACKING = ("consensus without correctness", "reward up, truth down", "answers vanish")
    ENTROPY = "entropy low"
    FLAGS = {"monitor/acc_fell": (FELL,), "monitor/collapse": (COLLAPSE,), "monitor/degenerate": (DEGENERATE,),
             "monitor/hacking_signs": HACKING, "monitor/entropy_low": (ENTROPY,)}

    def __init__(self, rules: CollapseMonitorConfig, warn: bool = True) -> None:
        self.rules, self.warn = rules, warn
        self.series: dict[str, list[float]] = {}
        self.val_acc: list[float] = []
        self.verdict: dict[str, str] = {}
        self.warned: set[str] = set()
        self.first: dict[str, int] = {}

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """A training step's metrics: its series move on, and the flags are added to `metrics`."""
        for key in self.SERIES:
            if _number(metrics.get(key)):  # NaN / inf kept as NaN: the series stay step by step aligned
                value = float(metrics[key])
                self.series.setdefault(key, []).append(value if math.isfinite(value) else math.nan)
        self._flag(step, metrics)

    def validation(self, step: int, metrics: dict[str, Any]) -> None:
        """A validation's metrics (`val/acc`), at `step` (0: the base model): the verdict, then the
        flags again."""
        if _number(metrics.get("val/acc")) and math.isfinite(metrics["val/acc"]):
            self.val_acc.append(float(metrics["val/acc"]))
            self.verdict = self._verdict()
        self._flag(step, metrics)

    def _flag(self, step: int, metrics: dict[str, Any]) -> None:
        signs = self.signs()
        for flag, names in self.FLAGS.items():
            metrics[flag] = float(any(name in signs for name in names))
        for name, detail in signs.items():
            self.first.setdefault(name, step)
            if self.warn and name not in self.warned:
                self.warned.add(name)
                kind = ("sign of reward hacking" if name in self.HACKING
                        else "warning" if name == self.ENTROPY else "monitor")
                logger.warning("step %d: %s: %s (%s)", step, kind, name, detail)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON), so that a resumed run judges the same windows."""
        return {"series": self.series, "val_acc": self.val_acc, "verdict": self.verdict, "warned": sorted(self.warned),
                "first": self.first}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.series = {key: list(values) for key, values in state.get("series", {}).items()}
        self.val_acc = list(state.get("val_acc", []))
        self.verdict = dict(state.get("verdict", {}))
        self.warned = set(state.get("warned", []))
        self.first = dict(state.get("first", {}))

    def signs(self) -> dict[str, str]:
        """The signs that hold now: name -> what was seen."""
        found = dict(self.verdict)
        label = "reward/pseudo_label_acc" if "reward/pseudo_label_acc" in self.series else "monitor/majority_acc"
        consensus, fall = self._recent("monitor/majority_ratio"), self._fall(label)
        if consensus is not None and fall is not None and consensus >= self.rules.consensus and self._fell(label):
            found["consensus without correctness"] = f"majority ratio {consensus:.2f}, {label} down {fall:.2f}"
        rise, truth_fall = self._rise("reward/mean"), self._fall("reward/gt_acc")
        if (rise is not None and truth_fall is not None and rise >= self.rules.drop and self._fell("reward/gt_acc")
                and self._held_since_best("reward/mean", "reward/gt_acc")):
            found["reward up, truth down"] = f"reward up {rise:.2f}, gt_acc down {truth_fall:.2f}"
        if self._fell("reward/answer_present", absolute=False):
            windows = self._windows("reward/answer_present")
            found["answers vanish"] = f"answer present {windows[-1]:.2f}, best window {max(windows):.2f}"
        first = next((e for e in self.series.get("actor/entropy", []) if math.isfinite(e)), None)
        recent = self._recent("actor/entropy")
        if recent is not None and first is not None and first > 0 and recent < self.rules.entropy_fraction * first:
            found[self.ENTROPY] = f"entropy {recent:.3f} < {self.rules.entropy_fraction} x {first:.3f}"
        return found

    def _verdict(self) -> dict[str, str]:
        """The validation signs: a fall to below `relative_drop` of the best validation before the
        latest, and what the rollouts did in the `window` steps before it (consensus, or truncation)."""
        if len(self.val_acc) < 2 or self.rules.relative_drop <= 0:
            return {}
        latest, best = self.val_acc[-1], max(self.val_acc[:-1])
        if latest >= self.rules.relative_drop * best:
            return {}
        found = {self.FELL: f"val/acc {latest:.3f} < {self.rules.relative_drop} x its best {best:.3f}"}
        consensus, truncated = self._recent("monitor/majority_ratio"), self._recent("response_length/clip_ratio")
        if truncated is not None and truncated >= self.rules.truncation:
            found[self.DEGENERATE] = f"{found[self.FELL]}, {truncated:.2f} of the responses cut at the length limit"
        elif consensus is not None and consensus >= self.rules.consensus:
            found[self.COLLAPSE] = f"{found[self.FELL]}, majority ratio {consensus:.2f}"
        return found

    def _fell(self, key: str, absolute: bool = True) -> bool:
        """The latest window is `relative_drop` of the best window below it (0: that rule is off),
        or (`absolute`) `drop` below it."""
        fall = self._fall(key)
        if fall is None:
            return False
        best, relative = max(self._windows(key)), self.rules.relative_drop
        return (absolute and fall >= self.rules.drop) or (relative > 0 and best > 0 and fall >= relative * best)

    def _held_since_best(self, key: str, reference: str) -> bool:
        """`key`'s latest window is not below its window where `reference` had its best: it did not
        fall with it (a GT reward is the truth itself; its noise is no hacking)."""
        windows, ref = self._windows(key), self._windows(reference)
        if not windows or len(windows) != len(ref):
            return True
        return windows[-1] >= windows[ref.index(max(ref))]

    def _windows(self, key: str) -> list[float]:
        """Means of `window` consecutive steps over their finite values (a step's NaN is left out; a
        window without any is dropped, which only a run of NaN steps as long as a window makes)."""
        values, w = self.series.get(key, []), self.rules.window
        spans = [[v for v in values[i : i + w] if math.isfinite(v)] for i in range(0, len(values) - w + 1)]
        return [_mean(span) for span in spans if span]

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
