"""Who does what in a training step. Every method here answers three questions, and its answers are
its `Roles`, read once per run (`roles_of`, from the method and `data.use_aug`):

- whose rollouts vote: the policy's, the EMA teacher's, or none (ground truth, token statistics);
- on which view's rollouts: the question's own, or its twin's (the other view of the pair);
- which views the policy trains on: the original questions, both views of every pair, or one view
  of each pair (the rephrased one with probability `data.p`), the teacher answering the other.

| method | votes | on | policy trains on | teacher rolls out on |
| --- | --- | --- | --- | --- |
| GT, Self-Certainty, Entropy | none | - | original | - |
| Majority-Voting | policy | same question | original | - |
| Co-rewarding-I | policy | twin | both views | - |
| Co-rewarding-II | teacher | same question | original | original |
| Co-rewarding-II, `data.use_aug` | teacher | twin | one view (`data.p`) | the other view |
| Co-rewarding-III | teacher | twin | both views | both views |
| Random, Format, Incorrect (controls) | none | - | original | - |
| EMPO | policy | same question | original | - |

(Majority-Voting on the union of the views is Majority-Voting on a file that holds both.)

This module owns the view vocabulary and the rule that gives each prompt row of a batch its roles
(`row_roles`); the loader applies it once and the trainer selects rows by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

VIEWS = ("original", "rephrased")
Voters = Literal["policy", "teacher"] | None
PolicyViews = Literal["original", "both", "one"]


def twin(view: str) -> str:
    """The other view of a pair."""
    return VIEWS[1 - VIEWS.index(view)]


@dataclass(frozen=True)
class Roles:
    voters: Voters
    policy_views: PolicyViews

    def __post_init__(self) -> None:
        if self.policy_views == "one" and self.voters != "teacher":
            raise ValueError(f"{self}: one view per pair leaves the other to the teacher")

    @property
    def pairs(self) -> bool:
        """The data come as (original, rephrased) pairs."""
        return self.policy_views != "original"

    @property
    def label_view(self) -> Literal["same", "twin"]:
        """Where a question's vote is taken: on pairs always the twin (a vote on the same view of a
        pair is Majority-Voting on the union of the views, a data file of its own)."""
        return "twin" if self.pairs else "same"

    @property
    def teacher(self) -> bool:
        return self.voters == "teacher"

    @property
    def trained_views(self) -> int:
        """Prompt rows the policy trains on per question of the batch."""
        return 2 if self.policy_views == "both" else 1

    def row_roles(self, views: Sequence[str], swapped: Sequence[bool]) -> tuple[list[bool], list[bool]]:
        """(for the policy, for the teacher) per prompt row, from its view and its pair's swap draw:
        one view per pair gives the policy the original question, or the rephrased one where the
        pair is swapped, and the teacher the other; otherwise each side gets every row it uses."""
        if self.policy_views == "one":
            policy = [(view == "rephrased") == bool(swap) for view, swap in zip(views, swapped)]
            return policy, [not mine for mine in policy]
        return [True] * len(views), [self.teacher] * len(views)


def roles_of(votes: bool, paired: bool, teacher: bool, use_aug: bool) -> Roles:
    """The roles of a method that declares `votes` / `paired` / `teacher` (`corewarding.methods`),
    with `data.use_aug` (which only changes Co-rewarding-II: the teacher answers the other view)."""
    voters: Voters = "teacher" if teacher else ("policy" if votes else None)
    if paired:
        return Roles(voters, "both")
    if teacher and use_aug:
        return Roles(voters, "one")
    return Roles(voters, "original")
