"""scripts/ablation_table.py on hand-made run folders: the half means, the table's cells, the
figure, and two runs under one label refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import ablation_table  # noqa: E402


def write_run(folder: Path, val: dict[int, tuple[float, float]], pseudo: list[float]) -> Path:
    """A run of len(pseudo) training steps as replicate.py writes it, validated at the steps of `val`."""
    folder.mkdir(parents=True)
    history = []
    for step in range(len(pseudo) + 1):
        entry: dict = {"step": step}
        if step > 0:
            entry.update({"reward/mean": 0.5, "reward/pseudo_label_acc": pseudo[step - 1],
                          "monitor/majority_ratio": 0.1 * step, "reward/answer_present": 0.9})
        if step in val:
            entry["val/acc"], entry["val/acc_se"] = val[step]
        history.append(entry)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return folder


def test_half_means_split_the_training_steps():
    history = [{"step": 0, "x": 100.0}] + [{"step": s, "x": float(s)} for s in range(1, 6)]
    assert ablation_table.half_means(history, "x") == pytest.approx((1.5, 4.0))  # (1, 2) and (3, 4, 5)
    assert ablation_table.half_means(history, "missing") is None


def test_ablation_table_rows_and_figure(tmp_path):
    joint = write_run(tmp_path / "seed0" / "co_rewarding_i", {0: (0.1, 0.02), 2: (0.4, 0.05), 4: (0.3, 0.04)},
                      [0.2, 0.4, 0.6, 0.8])
    per_view = write_run(tmp_path / "perview" / "co_rewarding_i", {0: (0.1, 0.02), 2: (0.2, 0.03), 4: (0.25, 0.03)},
                         [0.5] * 4)
    figs = tmp_path / "figs"
    runs = ablation_table.main(["--runs", f"joint loss={joint}", f"per-view loss={per_view}", "--figs", str(figs)])
    assert [r["label"] for r in runs] == ["joint loss", "per-view loss"]
    rows = [line for line in (figs / "ablations.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert rows[0] == ("| joint loss | 0.100 ± 0.020 | 0.400 ± 0.050 (2) | 0.300 ± 0.040 | 0.30 / 0.70 | 0.15 / 0.35 | "
                       "0.90 / 0.90 | none |")
    assert rows[1].startswith("| per-view loss | 0.100 ± 0.020 | 0.250 ± 0.030 (4) | 0.250 ± 0.030 | 0.50 / 0.50 |")
    assert (figs / "ablations.png").stat().st_size > 10_000


def test_two_runs_under_one_label_are_refused(tmp_path):
    a = write_run(tmp_path / "a" / "co_rewarding_i", {0: (0.1, 0.02), 2: (0.2, 0.02)}, [0.5, 0.5])
    b = write_run(tmp_path / "b" / "co_rewarding_i", {0: (0.1, 0.02), 2: (0.2, 0.02)}, [0.5, 0.5])
    with pytest.raises(SystemExit, match="share a label"):
        ablation_table.main(["--runs", str(a), str(b), "--figs", str(tmp_path / "figs")])
