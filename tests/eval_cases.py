"""What several eval test files share: the repository root and four hand-graded questions (k = 4)
with the metrics they score."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Four questions, k = 4, correctness known by hand.
HAND = [
    # ground truth, responses, correct flags
    ("42", ["so \\boxed{42}", "\\boxed{42.0}", "\\boxed{41}", "no box here"], [1, 1, 0, 0]),
    ("\\frac{1}{2}", ["\\boxed{0.5}", "\\boxed{3}", "it is \\boxed{3}.", "\\boxed{}"], [1, 0, 0, 0]),
    ("7", ["\\boxed{8}", "\\boxed{9}", "none", "none"], [0, 0, 0, 0]),
    ("\\sqrt{2}", ["\\boxed{\\sqrt{2}}"] * 4, [1, 1, 1, 1]),
]
# by hand: per-question means 2/4, 1/4, 0, 1 -> pass@1 = 1.75 / 4; majorities 42 (right),
# 3 (wrong), 8 (tie, first seen: wrong), sqrt2 (right) -> maj@4 = 2/4; any correct: 3/4;
# answers present: 3 + 3 + 2 + 4 = 12 of 16.
HAND_METRICS = {"pass@1": 0.4375, "avg@4": 0.4375, "maj@4": 0.5, "pass@4": 0.75, "answer_present": 0.75}
