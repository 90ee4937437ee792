"""Reward library: answer extraction, math equivalence, majority vote, one function per method (the registry of
methods is `corewarding.methods`)."""

from corewarding.rewards.answers import answers_equivalent, normalize_answer
from corewarding.rewards.common import GT_SCORERS, RewardOutput, ground_truth_verifier
from corewarding.rewards.controls import empo, format_reward, incorrect, random_reward, wrong_label
from corewarding.rewards.extraction import extract_boxed_answer
from corewarding.rewards.functions import (
    co_rewarding_i,
    co_rewarding_ii,
    co_rewarding_iii,
    entropy,
    gt,
    majority_voting,
    self_certainty,
)
from corewarding.rewards.hendrycks import hendrycks_equivalent
from corewarding.rewards.verl_score import ComputeScoreError, VerlScore
from corewarding.rewards.voting import Vote, majority_vote

__all__ = [
    "GT_SCORERS",
    "ComputeScoreError",
    "RewardOutput",
    "Vote",
    "VerlScore",
    "answers_equivalent",
    "co_rewarding_i",
    "co_rewarding_ii",
    "co_rewarding_iii",
    "empo",
    "entropy",
    "extract_boxed_answer",
    "format_reward",
    "ground_truth_verifier",
    "gt",
    "hendrycks_equivalent",
    "incorrect",
    "majority_vote",
    "majority_voting",
    "normalize_answer",
    "random_reward",
    "self_certainty",
    "wrong_label",
]
