"""scripts/replicate.py end to end at smoke size: all six methods train one step on the tiny model,
the table, figure and metrics file are written, and a second call with the same folder resumes
(skips every finished method) instead of training again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import replicate  # noqa: E402

pytestmark = pytest.mark.slow


def test_replicate_smoke(ray_session, boxing_model, tmp_path, capsys):
    argv = ["--smoke", "--model", str(boxing_model), "--rollout", "hf", "--workers", "1",
            "--out", str(tmp_path / "runs"), "--figs", str(tmp_path / "figs")]
    rows = replicate.main(argv)

    assert [r["method"] for r in rows] == list(replicate.METHODS)
    for row in rows:
        assert row["base"]["step"] == 0 and row["final"]["step"] == 1, row
        assert 0.0 <= row["signal"] <= 1.0, row
    table = (tmp_path / "figs" / "replication.md").read_text()
    for label in replicate.LABELS.values():
        assert f"| {label} |" in table
    assert (tmp_path / "figs" / "replication.png").stat().st_size > 10_000
    logged = [json.loads(line) for line in (tmp_path / "figs" / "replication_metrics.jsonl").read_text().splitlines()]
    assert {entry["method"] for entry in logged} == set(replicate.METHODS)

    capsys.readouterr()
    again = replicate.main(argv)
    skipped = capsys.readouterr().out
    assert all(f"{method}: finished before, skipped" in skipped for method in replicate.METHODS)
    assert again == rows
