"""scripts/answer_drift.py on a hand-made validation file: each statistic by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import answer_drift  # noqa: E402


def test_drift_statistics_by_hand(tmp_path):
    # two questions x 4 samples: q1 answers 54 (right) x2, the example's 68, and none; q2 answers 3 x3 and 68
    rows = [("q1", "54", "54"), ("q1", "54", "54"), ("q1", "68", "54"), ("q1", None, "54"),
            ("q2", "3", "12"), ("q2", "3", "12"), ("q2", "3", "12"), ("q2", "68", "12")]
    folder = tmp_path / "run"
    (folder / "validation").mkdir(parents=True)
    (folder / "validation" / "8.jsonl").write_text(
        "".join(json.dumps({"prompt": q, "answer": a, "ground_truth": g}) + "\n" for q, a, g in rows))
    assert answer_drift.EXAMPLE_ANSWER == "68"
    stats = answer_drift.read_run(folder)[8]
    assert stats == pytest.approx({"acc": 2 / 8, "top_answer": 3 / 8, "example_answer": 2 / 8, "single_digit": 3 / 8,
                                   "no_answer": 1 / 8, "agreement": (2 / 4 + 3 / 4) / 2})
    assert "| run | step | acc |" in answer_drift.table({"run": {8: stats}})
