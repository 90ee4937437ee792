#!/usr/bin/env python
"""Training curves of one or more runs from their metrics.jsonl files, as one PNG.

    python scripts/plot_curves.py --runs co-II=checkpoints/co-rewarding/co2/metrics.jsonl \\
        maj=checkpoints/co-rewarding/maj/metrics.jsonl --out outputs/curves.png
    python scripts/plot_curves.py checkpoints/co-rewarding/*/metrics.jsonl   # names from the folders

Panels (a panel no run has data for is left out): validation accuracy (with a +-1 standard-error
band where `val/acc_se` is logged), reward, pseudo-label accuracy (vs the ground truth; for a method
without pseudo-labels, the accuracy of its groups' majority answer), majority ratio, distinct answers
per group, entropy, response length; x axis: training step; one line per run (per validation data
source when a run logs several). A run dir may be given instead of its metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

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
STEP_KEYS = ("step", "global_step", "_step", "training/global_step")


def parse_run_arg(text: str) -> tuple[str, Path]:
    """`name=path` or a path (the name is the folder holding metrics.jsonl)."""
    if "=" in text and not Path(text).exists():
        name, path = text.split("=", 1)
        return name, _metrics_file(Path(path))
    path = _metrics_file(Path(text))
    return path.parent.name or path.stem, path


def _metrics_file(path: Path) -> Path:
    path = path.expanduser()
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such metrics file")
    return path


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; a truncated last line (run still writing) is skipped."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"warning: {path}:{number}: not JSON, skipped", file=sys.stderr)
    return entries


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def points(entries: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]] | None:
    """(steps, values) of one key, or None where no entry has it. A step logged twice (a resumed
    run) keeps its last value."""
    found: dict[float, float] = {}
    for position, entry in enumerate(entries):
        value = _number(entry.get(key))
        if value is None:
            continue
        step = next((_number(entry[s]) for s in STEP_KEYS if s in entry), None)
        found[step if step is not None else float(position)] = value
    steps = sorted(found)
    return (steps, [found[s] for s in steps]) if steps else None


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


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="metrics.jsonl files or run dirs (name = folder name)")
    parser.add_argument("--runs", nargs="+", default=[], help="name=path/metrics.jsonl (or name=run_dir)")
    parser.add_argument("--out", default="outputs/curves.png", help="PNG to write (default outputs/curves.png; figs/ holds only the committed figures)")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA smoothing weight in [0, 1) (default 0: raw)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    specs = [parse_run_arg(p) for p in args.runs + args.paths]
    if not specs:
        parser.error("give at least one metrics file (positional or --runs)")
    if not 0 <= args.smooth < 1:
        parser.error("--smooth must be in [0, 1)")
    runs = [(name, read_metrics(path)) for name, path in specs]
    out = plot_curves(runs, Path(args.out), args.smooth, args.title)
    print(out)
    return out


if __name__ == "__main__":
    main()
