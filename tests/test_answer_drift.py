"""scripts/answer_drift.py on a hand-made validation file: each statistic by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import answer_drift  # noqa: E402


def test_drift_statistics_by_hand(tmp_path):
    # two questions x 4 samples: q1 answers 54 and 54.0 (both right: the scorer's reward, not the string,
    # decides), the example's 68, and none; q2 answers 3 x3 and 68
    rows = [("q1", "54", "54", 1.0), ("q1", "54.0", "54", 1.0), ("q1", "68", "54", 0.0), ("q1", None, "54", 0.0),
            ("q2", "3", "12", 0.0), ("q2", "3", "12", 0.0), ("q2", "3", "12", 0.0), ("q2", "68", "12", 0.0)]
    folder = tmp_path / "run"
    (folder / "validation").mkdir(parents=True)
    (folder / "validation" / "8.jsonl").write_text(
        "".join(json.dumps({"prompt": q, "answer": a, "ground_truth": g, "reward": r}) + "\n" for q, a, g, r in rows))
    assert answer_drift.EXAMPLE_ANSWER == "68"
    stats = answer_drift.read_run(folder)[8]
    assert stats == pytest.approx({"acc": 2 / 8, "top_answer": 3 / 8, "example_answer": 2 / 8, "single_digit": 3 / 8,
                                   "no_answer": 1 / 8, "agreement": (1 / 4 + 3 / 4) / 2, "digit_shortcut": 0.0})
    assert "| run | step | acc |" in answer_drift.table({"run": {8: stats}})
    text = answer_drift.main(["--runs", f"per-view loss={folder}", "--out", str(tmp_path / "drift.md")])
    assert "| per-view loss | 8 | 0.250 | 0.375 |" in text and (tmp_path / "drift.md").read_text() == text + "\n"
    with pytest.raises(SystemExit, match="has no validation/ folder"):
        answer_drift.main(["--runs", f"x={tmp_path}"])
    with pytest.raises(SystemExit, match="give the runs"):
        answer_drift.main([])


def test_digit_shortcut_applies_the_operation_to_the_last_digits():
    assert answer_drift.digit_shortcut("What is 86 minus 32?", "54") == "4"
    assert answer_drift.digit_shortcut("How much is 32 less than 86?", "54") == "4"  # operands named in reverse
    assert answer_drift.digit_shortcut("What is 47 + 38?", "85") == "15"
    assert answer_drift.digit_shortcut("Tom has 12 bags with 11 apples in each bag. How many apples does Tom have?",
                                       "132") == "2"
    assert answer_drift.digit_shortcut("What is 4 * 9?", "36") is None  # one-digit operands: the shortcut is right
    assert answer_drift.digit_shortcut("What is 86 minus 32?", None) is None
    assert answer_drift.digit_shortcut("Solve x^2 = 1 for 3 values", "7") is None  # not one of these problems


def test_pair_statistics_by_hand(tmp_path):
    """Two pairs x 2 views x 2 rollouts. Pair 1 (86 - 32 = 54): both views labelled 4, the digit
    shortcut, so they agree on a wrong answer. Pair 2 (12 + 30 = 42): labels 42 and none; one rollout answers 2 (2 + 0, the shortcut)."""
    def rollout(pair, view, question, truth, label, answer):
        return {"role": "policy", "pair_id": pair, "view": view, "prompt": question, "ground_truth": truth,
                "pseudo_label": label, "answer": answer}

    step = [rollout(1, "original", "What is 86 minus 32?", "54", "4", "4"),
            rollout(1, "original", "What is 86 minus 32?", "54", "4", "54"),
            rollout(1, "rephrased", "How much is 32 less than 86?", "54", "4", "4"),
            rollout(1, "rephrased", "How much is 32 less than 86?", "54", "4", None),
            rollout(2, "original", "What is 12 + 30?", "42", "42", "42"),
            rollout(2, "original", "What is 12 + 30?", "42", "42", "2"),
            rollout(2, "rephrased", "What is the sum of 12 and 30?", "42", None, "42"),
            rollout(2, "rephrased", "What is the sum of 12 and 30?", "42", None, "42"),
            {"role": "teacher", "pair_id": None, "prompt": "What is 1 + 1?", "answer": "2"}]
    stats = answer_drift.pair_stats(step)
    assert stats == pytest.approx({"label_acc": 1 / 4, "views_agree": 1 / 2, "agree_wrong": 1 / 2,
                                   "label_shortcut": 2 / 4, "answer_shortcut": 3 / 8, "single_digit": 3 / 8})
    (tmp_path / "run" / "rollouts").mkdir(parents=True)
    for number, label in ((1, "4"), (2, "54")):  # step 2: every label right
        rows = [dict(r, pseudo_label=label if r.get("pair_id") == 1 else r.get("pseudo_label")) for r in step]
        (tmp_path / "run" / "rollouts" / f"{number}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    windows = answer_drift.read_rollouts(tmp_path / "run", window=2)
    assert list(windows) == ["1-2"]
    assert windows["1-2"]["label_acc"] == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert windows["1-2"]["agree_wrong"] == pytest.approx((1 / 2 + 0) / 2)
