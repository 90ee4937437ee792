"""Metric logging: console, a JSONL file (always), wandb and tensorboard; per-step rollout dumps.

`Tracker.log(metrics, step)` writes one JSON line to `<default_local_dir>/metrics.jsonl`, one compact
console line (every `trainer.console_every` steps) and, when configured, to wandb / tensorboard.
`dump_rollouts(dir, step, records)` writes `<dir>/<step>.jsonl` (one JSON object per rollout).
`progress_bar` draws the training steps' bar, the console lines printed above it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import uuid
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping

logger = logging.getLogger(__name__)

# Keys of the one-line console summary, in order, with their short labels.
CONSOLE_KEYS = [
    ("reward/mean", "reward"),
    ("reward/pseudo_label_acc", "pl_acc"),
    ("reward/gt_acc", "gt_acc"),
    ("reward/answer_present", "boxed"),
    ("actor/entropy", "ent"),
    ("actor/pg_loss", "pg"),
    ("actor/kl_loss", "kl"),
    ("actor/grad_norm", "gnorm"),
    ("response_length/mean", "len"),
    ("teacher/ema_weight", "ema"),
    ("val/acc", "val_acc"),
    ("perf/tokens_per_s", "tok/s"),
    ("timing/step", "t"),
]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.3f}"
    return str(value)


def _truncate_after(path: Path, step: int | None) -> None:
    """A JSON-lines log of steps: on a fresh start dropped; on resume only the entries up to the
    resumed step kept (a crashed run may have logged steps past its last checkpoint)."""
    if not path.exists():
        return
    if step is None:
        path.unlink()
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    tmp.replace(path)


def format_console(step: int, metrics: Mapping[str, Any]) -> str:
    parts = [f"step {step}"]
    parts += [f"{label} {_fmt(metrics[key])}" for key, label in CONSOLE_KEYS if key in metrics]
    return " | ".join(parts)


class Tracker:
    def __init__(
        self,
        out_dir: str | Path,
        loggers: Iterable[str] = ("console",),
        project: str = "co-rewarding",
        experiment: str = "default",
        config: Mapping[str, Any] | None = None,
        console_every: int = 1,
        resume_step: int | None = None,
        printer=None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.loggers = set(loggers)
        self.console_every = max(1, int(console_every))
        self.printer = printer or (lambda line: print(line, file=sys.stdout, flush=True))
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        for path in (self.jsonl_path, self.out_dir / "val_generations.jsonl"):
            _truncate_after(path, resume_step)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self._wandb = None
        self._tb = None
        if "wandb" in self.loggers:
            self._wandb = self._start_wandb(project, experiment, config, resumed=resume_step is not None)
        if "tensorboard" in self.loggers:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = os.environ.get("TENSORBOARD_DIR") or str(self.out_dir / "tensorboard")
            # as the JSON-lines logs: TensorBoard hides an earlier run's events (a fresh start) or
            # those a crashed run logged past the checkpoint (a resume)
            self._tb = SummaryWriter(log_dir=tb_dir, purge_step=0 if resume_step is None else resume_step + 1)

    def _start_wandb(self, project: str, experiment: str, config: Mapping[str, Any] | None, resumed: bool):
        """A resumed run continues its wandb run (the id saved beside the checkpoints); a fresh run
        gets a new id (reusing one would make wandb drop the new run's early steps)."""
        import wandb

        id_file = self.out_dir / "wandb_run_id.txt"
        saved = id_file.read_text().strip() if id_file.exists() else ""
        run_id = saved if resumed and saved else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        return wandb.init(
            project=project, name=experiment, id=run_id, resume="allow", config=dict(config or {}),
            dir=str(self.out_dir),
        )

    def log(self, metrics: Mapping[str, Any], step: int, console: bool = True) -> None:
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}, sort_keys=True) + "\n")
        self._jsonl.flush()
        numeric = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._wandb is not None:
            self._wandb.log(numeric, step=int(step))
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, int(step))
            self._tb.flush()
        if console and "console" in self.loggers and step % self.console_every == 0:
            self.printer(format_console(step, clean))

    def log_generations(self, samples: list[Mapping[str, Any]], step: int) -> None:
        """verl's `trainer.log_val_generations`: a few validation samples (prompt, response,
        answer, ground truth, reward) appended to `val_generations.jsonl` and, with wandb, logged as
        a table."""
        with open(self.out_dir / "val_generations.jsonl", "a", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps({"step": int(step), **{k: _jsonable(v) for k, v in sample.items()}},
                                    ensure_ascii=False) + "\n")
        if self._wandb is not None and samples:
            import wandb

            columns = list(samples[0])
            table = wandb.Table(columns=columns, data=[[str(s.get(c)) for c in columns] for s in samples])
            self._wandb.log({"val/generations": table}, step=int(step))

    def close(self) -> None:
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | Path, skip_bad_lines: bool = False) -> list[dict[str, Any]]:
    """The entries of a metrics.jsonl file, in order. A line that is not JSON raises, or with
    `skip_bad_lines` is skipped with a warning (the truncated last line of a run still writing)."""
    entries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if not skip_bad_lines:
                raise
            print(f"warning: {path}:{number}: not JSON, skipped", file=sys.stderr)
    return entries


def rollout_folder(folders: Mapping[str, str | None], role: str, view: str | None) -> str | None:
    """The folder of a rollout record among `folders` (`trainer.<key>` for the keys of
    `corewarding.config.schema.ROLLOUT_DIRS`): `[ref_]rollout_data_dir[_aug]` for a teacher's (ref_) rollout on a rephrased
    question (_aug), the most specific key that is set (`_aug` dropped first, then `ref_`); None: not kept."""
    ref, aug = ("ref_" if role == "teacher" else ""), ("_aug" if view == "rephrased" else "")
    for key in (f"{ref}rollout_data_dir{aug}", f"{ref}rollout_data_dir", f"rollout_data_dir{aug}", "rollout_data_dir"):
        if folders.get(key):
            return folders[key]
    return None


def dump_step_rollouts(folders: Mapping[str, str | None], step: int, records: Iterable[Mapping[str, Any]]) -> None:
    """A step's rollout records, each into its `rollout_folder` (`<folder>/<step>.jsonl`)."""
    kept: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        folder = rollout_folder(folders, record["role"], record["view"])
        if folder:
            kept.setdefault(folder, []).append(record)
    for folder, chosen in kept.items():
        dump_rollouts(folder, step, chosen)


def dump_rollouts(out_dir: str | Path, step: int, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write `<out_dir>/<step>.jsonl`, one JSON object per rollout (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{int(step)}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps({k: _jsonable(v) for k, v in record.items()}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


@contextmanager
def progress_bar(tracker: Tracker, total: int, initial: int, shown: bool) -> Iterator[Callable[[], None]]:
    """A bar of the training steps on stderr when `shown`, under which the tracker prints its console
    lines; yields the function that advances it by one step."""
    if not shown:
        yield lambda: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True,
               leave=False)
    printer, tracker.printer = tracker.printer, lambda line: bar.write(line, file=sys.stdout)
    try:
        yield lambda: bar.update(1)
    finally:
        tracker.printer = printer
        bar.close()
