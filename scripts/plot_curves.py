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
from pathlib import Path

from corewarding.experiments.curves import plot_curves
from corewarding.experiments.runs import parse_run_arg
from corewarding.trainer.tracking import read_metrics


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
    runs = [(name, read_metrics(path, skip_bad_lines=True)) for name, path in specs]  # a run may still be writing
    out = plot_curves(runs, Path(args.out), args.smooth, args.title)
    print(out)
    return out


if __name__ == "__main__":
    main()
