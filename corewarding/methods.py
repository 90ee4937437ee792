"""The methods this trainer runs, in one registry: what each one rewards with and what it needs.

`reward_model.reward_manager` names a method, by its name or one of its aliases (the release's
names among them). Adding a method is one reward function in `corewarding.rewards` and one entry
here; the trainer reads everything else from the record:

- `votes`: the reward takes a majority vote (`reward_model.vote_equivalence` applies);
- `paired`: every question comes with its rephrased twin, both views are rolled out and trained on;
- `teacher`: the reference model is an EMA teacher whose rollouts give the pseudo-label;
- `token_stats`: per-token statistics of the policy the reward reads, computed before the update;
- `ground_truth`: the reward reads the data's ground truth (rows without one are refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from corewarding.errors import ConfigError
from corewarding.rewards import functions as rewards
from corewarding.rewards.functions import RewardFn

__all__ = ["METHODS", "Method", "UnknownMethod", "resolve_method"]


class UnknownMethod(ConfigError):
    """A name that is no method's name or alias."""


@dataclass(frozen=True)
class Method:
    name: str
    reward: RewardFn
    votes: bool = False
    paired: bool = False
    teacher: bool = False
    token_stats: tuple[str, ...] = ()  # "entropy" and / or "self_certainty"
    ground_truth: bool = False
    aliases: tuple[str, ...] = ()

    def reward_fn(self, **options: Any) -> RewardFn:
        """The reward function with `options` bound (e.g. equivalence="math", gt_scorer=...)."""
        return partial(self.reward, **options) if options else self.reward


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("gt", rewards.gt, ground_truth=True, aliases=("naive", "ground_truth")),
    Method("majority_voting", rewards.majority_voting, votes=True, aliases=("majority", "ttrl")),
    Method("self_certainty", rewards.self_certainty, token_stats=("self_certainty",), aliases=("intuitor",)),
    Method("entropy", rewards.entropy, token_stats=("entropy",)),
    Method("co_rewarding_i", rewards.co_rewarding_i, votes=True, paired=True, aliases=("co_reward", "corewarding_i")),
    Method("co_rewarding_ii", rewards.co_rewarding_ii, votes=True, teacher=True, aliases=("corewarding_ii",)),
)}

_BY_NAME = {alias: method for method in METHODS.values() for alias in (method.name, *method.aliases)}


def resolve_method(name: str) -> Method:
    """The method called `name` (case and `-` / `_` do not matter; release names accepted)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in _BY_NAME:
        raise UnknownMethod(
            f"reward_model.reward_manager={name!r} is unknown; choose one of "
            "naive (gt) | majority_voting | self_certainty | entropy | co_reward (co_rewarding_I) | co_rewarding_II"
        )
    return _BY_NAME[key]
