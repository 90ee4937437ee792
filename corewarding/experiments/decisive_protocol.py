"""The decisive experiment's numbers, as figs/decisive/PROTOCOL.md fixes them: what `scripts/decisive.py`
trains, grades and marks, and what `scripts/decisive_results.py` reads and judges by."""

from __future__ import annotations

DONE = "decisive_done.json"  # a finished run's marker (its commit and run time), beside its records
STEPS, EVERY = 48, 8  # training steps of a run; it validates and saves a checkpoint every EVERY steps
HELDOUT_STEPS = (16, 32, 48)  # the checkpoints graded on the held-out set (the base model is step 0)
PRIMARY = ("majority_voting", "co_rewarding_ii")  # the primary pair, compared seed by seed
PRIMARY_SEEDS = 8  # seed pairs of the primary runs: the verdict is taken once they are all finished
TRUNCATED = 0.5  # share of late rollouts cut at the cap from which a fall reads as truncation, not a collapse
LATE_STEPS = range(45, 49)  # the steps whose majority ratio and truncated share say what a fall is
