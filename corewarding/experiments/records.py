"""Keeping a finished run's records in the repository (the tables read them from there, and a
machine's outputs do not outlive it): its finished marker, `metrics.jsonl` (every logged step),
`validation/<step>.jsonl` (every validation sample) and, when asked, `rollouts/<step>.jsonl` (every
training rollout), as they are or gzipped. Checkpoints and logs stay behind.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Literal


def gzip_copy(src: Path, dest: Path) -> None:
    """`src` gzipped to `dest`, the same bytes every time (no time stamp): keeping a run's records
    again leaves git nothing to see."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as handle, open(dest, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9,
                                                                           mtime=0, filename="") as packed:
        shutil.copyfileobj(handle, packed)


def keep_run_records(run_dir: Path, dest: Path, marker: str, rollouts: Literal["copy", "gzip"] | None = None) -> None:
    """A finished run's records into `dest`: its `marker`, metrics.jsonl, validation/<step>.jsonl and,
    with `rollouts`, rollouts/<step>.jsonl (as they are, or gzipped to <step>.jsonl.gz)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (marker, "metrics.jsonl"):
        shutil.copy2(run_dir / name, dest / name)
    for path in sorted((run_dir / "validation").glob("*.jsonl")):
        (dest / "validation").mkdir(exist_ok=True)
        shutil.copy2(path, dest / "validation" / path.name)
    for path in sorted((run_dir / "rollouts").glob("*.jsonl")) if rollouts else []:
        if rollouts == "gzip":
            gzip_copy(path, dest / "rollouts" / f"{path.name}.gz")
        else:
            (dest / "rollouts").mkdir(exist_ok=True)
            shutil.copy2(path, dest / "rollouts" / path.name)
