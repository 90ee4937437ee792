"""DAPO's dynamic sampling (`algorithm.filter_groups`), the part without the workers: which groups a
generation batch keeps, how many of them a step still needs, and the rows kept so far (`Kept`;
docs/method.md).

A *group* is the rollouts of one prompt (one `uid`). It is kept when the filter's metric differs
between its rollouts, or when it has a single rollout (verl's rule: `np.std > 0 or len == 1`); a
group whose rollouts all score the same has advantage 0 everywhere and only dilutes the loss. The
trainer keeps *units*: a unit is a group, except for Co-rewarding-I, where it is a pair (the
original's and the rephrased question's groups, which its per-view loss pairs): a pair is kept
when either of its groups has a spread, and dropped with both groups otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch.nn.functional as F

from corewarding.batch import Batch

__all__ = ["Kept", "Tally", "concat_rollouts", "groups_with_spread", "kept_units", "rows_of"]

FULL_WIDTH = ("input_ids", "attention_mask", "position_ids")  # [rows, prompt width + R]: prompts left-padded


def groups_with_spread(values: Sequence[float], groups: Sequence[Hashable]) -> set[Hashable]:
    """The groups whose values are not all equal, or that have one value only."""
    seen: dict[Hashable, list[float]] = {}
    for group, value in zip(groups, values, strict=True):
        seen.setdefault(group, []).append(float(value))
    return {g for g, v in seen.items() if len(v) == 1 or max(v) > min(v)}


def kept_units(values: Sequence[float], groups: Sequence[Hashable], units: Sequence[Hashable]) -> tuple[list[Hashable], int]:
    """(the units that keep at least one group with a spread, in the order they first appear in
    the rows; how many units were dropped). `groups[i]` / `units[i]`: row i's group and unit."""
    spread = groups_with_spread(values, groups)
    order = list(dict.fromkeys(units))
    keep = {u for g, u in zip(groups, units) if g in spread}
    kept = [u for u in order if u in keep]
    return kept, len(order) - len(kept)


def rows_of(units: Sequence[Hashable], chosen: Sequence[Hashable]) -> list[int]:
    """The rows whose unit is one of `chosen`, in row order."""
    wanted = set(chosen)
    return [i for i, u in enumerate(units) if u in wanted]


def concat_rollouts(batches: Sequence[Batch], pad_token_id: int) -> Batch:
    """The rows of rollout batches of several generation batches, the full-width tensors left-padded
    to the widest batch's prompt width (each generation batch pads its prompts to its own longest)."""
    width = max(b.tensors["input_ids"].shape[1] for b in batches)
    padded = []
    for b in batches:
        extra = width - b.tensors["input_ids"].shape[1]
        tensors = dict(b.tensors)
        for key in FULL_WIDTH:
            tensors[key] = F.pad(tensors[key], (extra, 0), value=pad_token_id if key == "input_ids" else 0)
        padded.append(Batch(tensors, b.rows))
    return Batch.concat(padded)


@dataclass
class Tally:
    """What a step's dynamic sampling did, as metrics."""

    gen_batches: int = 0
    kept: int = 0  # units that passed the filter
    dropped: int = 0  # units without a spread
    trimmed: int = 0  # units that passed but were not needed (the step has train_batch_size already)

    def metrics(self) -> dict[str, float]:
        total = self.kept + self.dropped
        return {
            "train/num_gen_batches": float(self.gen_batches),  # verl's name
            "filter_groups/kept": float(self.kept),
            "filter_groups/dropped": float(self.dropped),
            "filter_groups/trimmed": float(self.trimmed),
            "filter_groups/kept_ratio": self.kept / total if total else 0.0,
        }


@dataclass
class Kept:
    """What a step's dynamic sampling has kept so far, generation batch after generation batch: up to
    `target` units in generation order (verl trims the step to exactly data.train_batch_size)."""

    target: int
    unit_key: str  # "pair_id" (a pair's views are kept or dropped together) or "uid"
    tally: Tally
    rollouts: list[Batch] = field(default_factory=list)
    teacher: list[Batch] = field(default_factory=list)  # the teacher's rollouts of the kept units, or
    teacher_prompts: list[Batch] = field(default_factory=list)  # the prompts it has still to answer
    have: int = 0

    def add(self, values: Sequence[float], rollouts: Batch, teacher: Batch | None, teacher_prompts: Batch | None) -> bool:
        """Keep the units of one generation batch whose `values` (per rollout) have a spread, as many
        as still fit; True once the step has `target` units."""
        units = rollouts.rows[self.unit_key]
        kept, dropped = kept_units(values, rollouts.rows["uid"], units)
        chosen = kept[:self.target - self.have]
        self.tally.kept += len(kept)
        self.tally.dropped += dropped
        self.tally.trimmed += len(kept) - len(chosen)
        self.have += len(chosen)
        self.rollouts.append(rollouts.select(rows_of(units, chosen)))
        if teacher is not None:
            self.teacher.append(teacher.select(rows_of(teacher.rows[self.unit_key], chosen)))
        elif teacher_prompts is not None:
            self.teacher_prompts.append(teacher_prompts.select(rows_of(teacher_prompts.rows[self.unit_key], chosen)))
        return self.have == self.target
