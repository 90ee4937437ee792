"""A run's records as the scripts read them: the file of a run given on a command line, the series
of one logged key, and a run's validation summary (base / best / final step, the collapse monitor's
reading) with its table cells. A run is a folder with the `metrics.jsonl` the trainer writes
(`corewarding.trainer.tracking`) and, from `scripts/replicate.py`, a finished marker.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from corewarding.trainer.tracking import read_metrics

METRICS = "metrics.jsonl"
MISSING_METRICS = "no such metrics file"
REPLICATION_DONE = "replication_done.json"  # scripts/replicate.py's mark of a finished run: its run time
STEP_KEYS = ("step", "global_step", "_step", "training/global_step")


def run_file(path: Path, name: str, missing: str) -> Path:
    """`path`, or the file `name` in the folder `path`; exits with `missing` where there is none."""
    path = path.expanduser()
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise SystemExit(f"error: {path}: {missing}")
    return path


def parse_run_arg(text: str, name: str = METRICS, missing: str = MISSING_METRICS) -> tuple[str, Path]:
    """`label=path` or a path (labelled by the folder holding the file): (label, the file `name`)."""
    if "=" in text and not Path(text).exists():
        label, path = text.split("=", 1)
        return label, run_file(Path(path), name, missing)
    path = run_file(Path(text), name, missing)
    return path.parent.name or path.stem, path


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


def merged_steps(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per step, in step order; a step logged again (a resumed run) keeps its later values."""
    by_step: dict[int, dict[str, Any]] = {}
    for entry in history:
        if "step" in entry:
            by_step.setdefault(int(entry["step"]), {}).update(entry)
    return [by_step[s] for s in sorted(by_step)]


@functools.cache
def _default_monitor_rules() -> Any:
    """`trainer.collapse_monitor` of the default config, composed once per process."""
    from corewarding.config import compose_config, load_config

    return load_config(compose_config([]), check_paths=False).trainer.collapse_monitor


def replay_monitor(history: list[dict[str, Any]]) -> dict[str, int]:
    """This version's collapse monitor (at its default rules) replayed over the logged metrics: the
    first step of each sign it saw (`CollapseMonitor.first`). Every seed and method is judged alike,
    whichever version ran it."""
    from corewarding.trainer.monitor import CollapseMonitor

    monitor = CollapseMonitor(_default_monitor_rules(), warn=False)
    for entry in sorted(history, key=lambda h: h["step"]):
        if entry["step"] > 0:
            monitor.update(entry["step"], dict(entry))
        if "val/acc" in entry:
            monitor.validation(entry["step"], dict(entry))
    return monitor.first


def run_summary(metrics_file: Path) -> dict[str, Any]:
    """Validation accuracy by step (`val`, with standard errors `se` where logged), its base / best /
    final step, the collapse monitor replayed (`monitor`: the first step of each sign), the logged
    history (one entry per step; a truncated last line, a run still writing, is skipped) and the
    run's folder (`dir`)."""
    history = merged_steps(read_metrics(metrics_file, skip_bad_lines=True))
    found = points(history, "val/acc")
    if found is None:
        raise SystemExit(f"error: {metrics_file}: no validation accuracy (val/acc) logged")
    val = {int(s): v for s, v in zip(*found)}
    errors = points(history, "val/acc_se")
    se = {int(s): e for s, e in zip(*errors)} if errors else {}
    steps = sorted(val)
    return {"val": val, "se": se, "base": steps[0], "final": steps[-1],
            "best": max(steps, key=lambda s: (val[s], -s)),  # ties go to the earlier step
            "monitor": replay_monitor(history), "history": history, "dir": metrics_file.parent}


def plus_minus(mean: float, se: float | None) -> str:
    return f"{mean:.3f} ± {se:.3f}" if se is not None else f"{mean:.3f}"


def _accuracy(run: dict[str, Any], which: str) -> str:
    step = run[which]
    return plus_minus(run["val"][step], run["se"].get(step))


def accuracy_cells(run: dict[str, Any]) -> list[str]:
    """The base, best (step) and final validation cells of a `run_summary`."""
    return [_accuracy(run, "base"), f"{_accuracy(run, 'best')} ({run['best']})", _accuracy(run, "final")]


MONITOR_NOTE = ("Collapse monitor: this version's monitor replayed over the logged metrics; `collapse`: the validation "
                "accuracy below half of its best with the rollouts' majority ratio at least 0.9, `degenerate`: the "
                "same fall with half of the responses cut at the length limit, `fell`: the fall alone.")


def monitor_cell(first: dict[str, int]) -> str:
    """The monitor's reading of a run from `replay_monitor`: its first collapse or degenerate step,
    else the first step its validation accuracy fell by half, else none."""
    from corewarding.trainer.monitor import CollapseMonitor

    for sign, word in ((CollapseMonitor.COLLAPSE, "collapse"), (CollapseMonitor.DEGENERATE, "degenerate"),
                       (CollapseMonitor.FELL, "fell")):
        if sign in first:
            return f"{word} (step {first[sign]})"
    return "none"
