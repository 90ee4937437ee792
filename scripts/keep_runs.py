"""Keep the records of finished replication runs in the repository: the table scripts read them
from there, and a machine's outputs do not outlive it.

    python scripts/keep_runs.py --src outputs/seeds --dest figs/runs
    python scripts/keep_runs.py --src outputs/seeds --rollouts   # also the training rollout dumps

For every run under `--src` that replicate.py marked finished: `metrics.jsonl` (every logged step),
`validation/<step>.jsonl` (every validation sample), the finished marker (its run time) and, beside
the run, `data/args.json` (the data's settings, e.g. the unfaithful fraction), at the same relative
path under `--dest`; with `--rollouts` also `rollouts/<step>.jsonl` (every training rollout, about
0.7 MB a run, which `answer_drift.py --rollouts` reads). Checkpoints and logs stay behind; an
unfinished run is not copied.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from corewarding.experiments.records import keep_run_records
from corewarding.experiments.runs import REPLICATION_DONE


def keep_runs(src: Path, dest: Path, rollouts: bool = False) -> list[Path]:
    """Copy every finished run's records (and its data settings) from `src` to `dest`; the runs
    copied, relative to `src`."""
    kept = []
    for done in sorted(src.rglob(REPLICATION_DONE)):
        run = done.parent
        if not (run / "metrics.jsonl").exists():
            raise SystemExit(f"error: {run} is marked finished but has no metrics.jsonl: rerun it or remove {done}")
        keep_run_records(run, dest / run.relative_to(src), REPLICATION_DONE, "copy" if rollouts else None)
        args = run.parent / "data" / "args.json"
        if args.exists():
            (dest / args.parent.relative_to(src)).mkdir(parents=True, exist_ok=True)
            shutil.copy2(args, dest / args.relative_to(src))
        kept.append(run.relative_to(src))
    return kept


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="the runs folder (replicate.py's --out, or a folder of them)")
    p.add_argument("--dest", default=str(Path(__file__).resolve().parents[1] / "figs" / "runs"))
    p.add_argument("--rollouts", action="store_true", help="also keep the training rollout dumps")
    args = p.parse_args(argv)
    src = Path(args.src)
    if not src.is_dir():
        raise SystemExit(f"error: --src {src} is not a folder")
    kept = keep_runs(src, Path(args.dest), args.rollouts)
    print("\n".join(f"kept {run}" for run in kept) or f"no finished run under {src}")
    return kept


if __name__ == "__main__":
    main()
