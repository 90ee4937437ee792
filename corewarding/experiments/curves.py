"""Training curves of runs as one PNG: one panel per metric (a panel no run has data for is left
out), one line per run (per validation data source when a run logs several), x axis: training step.

Panels: validation accuracy (with a +-1 standard-error band where `val/acc_se` is logged), reward
(over each run's largest |value|), pseudo-label accuracy (vs the ground truth; for a method without
pseudo-labels, the accuracy of its groups' majority answer), majority ratio, distinct answers per
group, entropy, response length. `scripts/plot_curves.py` is its command line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from corewarding.experiments.runs import STEP_KEYS, points

NORMALISED = "reward (/ each run's largest |value|)"
# Panel title -> key patterns tried in order; the first pattern that matches any key of a run is
# used for that run (a pattern may match several keys, e.g. one per validation data source).
PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("validation accuracy", (r"^val/acc$", r"^val[-/].*(acc|score|reward/mean)[^/]*$", r"^val.*acc")),
    # each run's reward over its own largest |value|: the methods' rewards have different scales
    # (Self-Certainty's is ~40, a vote's is in [0, 1]), and their shapes are what compares
    (NORMALISED, (r"^reward/mean$", r"^critic/score/mean$", r"^critic/rewards/mean$", r"^reward$")),
    # label-free methods without a pseudo-label: the accuracy of their groups' vote (maj@n)
    ("pseudo-label accuracy", (r"^reward/pseudo_label_acc$", r"pseudo_label.*acc", r"^monitor/majority_acc$")),
    ("majority ratio", (r"^monitor/majority_ratio$", r"^reward/majority_ratio$")),
    ("distinct answers per group", (r"^monitor/distinct_answers$",)),
    ("entropy", (r"^actor/entropy$", r"^actor/entropy.*mean", r"(^|/)entropy$")),
    ("response length", (r"^response_length/mean$", r"response_length.*mean", r"^response_length$")),
]
SE_SUFFIX = "_se"  # a metric `k` with a `k_se` beside it is drawn with a +-1 standard-error band


def series(entries: list[dict[str, Any]], patterns: tuple[str, ...]) -> dict[str, tuple[list[float], list[float]]]:
    """key -> (steps, values) for the first pattern that matches a numeric key of these entries
    (standard errors, `*_se`, are never a series of their own)."""
    keys: list[str] = []
    for entry in entries:
        for key in entry:
            if key not in keys and key not in STEP_KEYS:
                keys.append(key)
    for pattern in patterns:
        regex = re.compile(pattern)
        out = {}
        for key in (k for k in keys if regex.search(k) and not k.endswith(SE_SUFFIX)):
            found = points(entries, key)
            if found is not None:
                out[key] = found
        if out:
            return out
    return {}


def smooth(values: list[float], weight: float) -> list[float]:
    if weight <= 0:
        return values
    out, last = [], values[0]
    for value in values:
        last = weight * last + (1 - weight) * value
        out.append(last)
    return out


def collect_panels(runs: list[tuple[str, list[dict[str, Any]]]],
                   thin: dict[str, list[list[dict[str, Any]]]] | None = None) -> list[tuple[str, list[tuple]]]:
    """What each panel draws: (title, [(label, steps, values, band, thin lines)]), for the panels
    some run has data for."""
    panels = []
    for panel_title, patterns in PANELS:
        lines = []
        for name, entries in runs:
            found = series(entries, patterns)
            for key, (steps, values) in found.items():
                label = name if len(found) == 1 else f"{name} ({key})"
                errors = points(entries, key + SE_SUFFIX)
                band = errors[1] if errors is not None and errors[0] == steps else None
                extra = [found_thin[key] for found_thin in (series(h, patterns) for h in (thin or {}).get(name, []))
                         if key in found_thin]
                if panel_title == NORMALISED:
                    scale = max(abs(v) for v in values) or 1.0
                    values = [v / scale for v in values]
                    band = [e / scale for e in band] if band is not None else None
                    extra = [(thin_steps, [v / scale for v in thin_values]) for thin_steps, thin_values in extra]
                lines.append((label, steps, values, band, extra))
        if lines:
            panels.append((panel_title, lines))
    return panels


def plot_curves(runs: list[tuple[str, list[dict[str, Any]]]], out: Path, smoothing: float = 0.0, title: str | None = None,
                thin: dict[str, list[list[dict[str, Any]]]] | None = None) -> Path:
    """One panel per metric, one line per run; `thin` (run name -> more histories, e.g. the seeds a
    run's line is the mean of) adds those as thin lines in the run's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = collect_panels(runs, thin)
    if not panels:
        raise SystemExit("error: none of the runs has a metric to plot (" + ", ".join(t for t, _ in PANELS) + ")")

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for ax, (panel_title, lines) in zip(axes.flat, panels):
        for label, steps, values, band, extra in lines:
            sparse = len(steps) <= 30
            drawn = ax.plot(steps, smooth(values, smoothing), label=label, marker="o" if sparse else None, markersize=3,
                            linewidth=1.5)
            for thin_steps, thin_values in extra:
                ax.plot(thin_steps, smooth(thin_values, smoothing), color=drawn[0].get_color(), linewidth=0.7, alpha=0.4)
            if band is not None:
                low = [v - e for v, e in zip(values, band)]
                high = [v + e for v, e in zip(values, band)]
                ax.fill_between(steps, low, high, color=drawn[0].get_color(), alpha=0.15, linewidth=0)
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
