"""scripts/seed_table.py on hand-made runs: the means and standard errors over seeds, the paired
difference over seed x question cells, the metrics file and the figure."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import seed_table  # noqa: E402


def write_run(folder: Path, per_step: dict[int, list[float]], rollouts: dict[str, float] | None = None,
              seconds: float | None = None) -> None:
    """A run whose validation at each step of `per_step` gives question q the accuracy
    per_step[step][q] (2 samples each: 1/1, 1/0 or 0/0), training steps 1 .. its last validation
    step whose rollouts log `rollouts` (what the monitor reads: majority ratio, truncated share), and
    its run time in `replication_done.json` when `seconds` is given."""
    (folder / "validation").mkdir(parents=True)
    history = []
    for step in range(max(per_step) + 1):
        entry: dict = {"step": step}
        if step > 0:
            entry.update({"reward/mean": 0.1 * step, **(rollouts or {})})
        if step in per_step:
            accs = per_step[step]
            records = []
            for q, acc in enumerate(accs):
                rewards = {1.0: [1.0, 1.0], 0.5: [1.0, 0.0], 0.0: [0.0, 0.0]}[acc]
                records += [{"step": step, "prompt": f"q{q}", "reward": r} for r in rewards]
            (folder / "validation" / f"{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            entry["val/acc"] = sum(accs) / len(accs)
        history.append(entry)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    if seconds is not None:
        (folder / "replication_done.json").write_text(json.dumps({"seconds": seconds, "steps": max(per_step)}))


def test_seed_table_means_and_paired_differences(tmp_path):
    root = tmp_path / "seeds"
    # Co-rewarding-II: finals 0.5 and 0.75 over four questions; Entropy: finals 0.25 and 0.25
    write_run(root / "seed0" / "co_rewarding_ii", {0: [0, 0, 0, 0], 4: [1, 1, 0, 0], 8: [1, 1, 0, 0]}, seconds=750)
    write_run(root / "seed1" / "co_rewarding_ii", {0: [0, 0, 0, 0], 4: [1, 0.5, 0, 0], 8: [1, 1, 1, 0]}, seconds=93)
    write_run(root / "seed0" / "entropy", {0: [0, 0, 0, 0], 4: [1, 1, 0, 0], 8: [1, 0, 0, 0]})
    write_run(root / "seed1" / "entropy", {0: [0, 0, 0, 0], 4: [0.5, 0, 0, 0], 8: [0, 1, 0, 0]})
    figs = tmp_path / "figs"
    runs = seed_table.main(["--root", str(root), "--seeds", "0", "1", "--methods", "co_rewarding_ii", "entropy",
                            "--figs", str(figs)])
    table = (figs / "replication.md").read_text()
    # finals 0.5, 0.75: mean 0.625, s.e. = stdev / sqrt(2) = 0.125; bests: seed 0 step 4 (0.5, ties go early), seed 1
    # step 8
    se = math.sqrt(((0.5 - 0.625) ** 2 + (0.75 - 0.625) ** 2) / 1) / math.sqrt(2)
    assert se == pytest.approx(0.125)
    assert ("| Co-rewarding-II | 2 | 0.000 ± 0.000 | 0.625 ± 0.125 | 0.625 ± 0.125 | s0: 0.500, s1: 0.750 "
            "| s0: none, s1: none | s0: 12.5, s1: 1.6 |") in table
    assert ("| Entropy | 2 | 0.000 ± 0.000 | 0.375 ± 0.125 | 0.250 ± 0.000 | s0: 0.250, s1: 0.250 "  # bests 0.5, 0.25
            "| s0: none, s1: none | s0: -, s1: - |") in table
    # final differences by question: seed 0 (0, 1, 0, 0) -> 0.25, seed 1 (1, 0, 1, 0) -> 0.5; over seeds
    # mean 0.375, s.e. = stdev(0.25, 0.5) / sqrt(2) = 0.125 (a seed's questions share its training run)
    final = seed_table.paired_difference(runs["co_rewarding_ii"], runs["entropy"], "final")
    assert final["mean"] == pytest.approx(0.375) and final["se"] == pytest.approx(0.125) and final["se_over"] == "seeds"
    assert final["per_seed"] == {0: pytest.approx(0.25), 1: pytest.approx(0.5)}
    assert "| Co-rewarding-II - Entropy | +0.375 ± 0.125 |" in table and "s0: +0.250, s1: +0.500 | seeds |" in table
    # one seed: the standard error over its questions, said so
    one = seed_table.paired_difference({0: runs["co_rewarding_ii"][0]}, {0: runs["entropy"][0]}, "final")
    cells = [0, 1, 0, 0]
    assert one["se_over"] == "questions" and one["se"] == pytest.approx(
        math.sqrt(sum((c - 0.25) ** 2 for c in cells) / 3) / 2)
    rows = [json.loads(line) for line in (figs / "replication_metrics.jsonl").read_text().splitlines()]
    assert {(r["method"], r["seed"]) for r in rows} == {(m, s) for m in ("co_rewarding_ii", "entropy") for s in (0, 1)}
    assert (figs / "replication.png").stat().st_size > 10_000


def test_seed_mean_gives_a_band_over_seeds():
    mean = seed_table.seed_mean([[{"step": 4, "val/acc": 0.2, "val/acc_se": 0.9}], [{"step": 4, "val/acc": 0.4}]])
    assert mean == [{"step": 4, "val/acc": pytest.approx(0.3), "val/acc_se": pytest.approx(0.1)}]  # over seeds


def test_the_monitor_column_says_collapse_degenerate_or_fell(tmp_path):
    """Three runs whose validation falls from 0.5 to 0.125 at step 8, below half of the best: under
    consensus a collapse, with the responses cut at the length limit degenerate, else a fall."""
    val = {0: [0, 0, 0, 0], 4: [1, 1, 0, 0], 8: [0.5, 0, 0, 0]}
    write_run(tmp_path / "seed0" / "majority_voting", val, {"monitor/majority_ratio": 0.95, "response_length/clip_ratio": 0.0})
    write_run(tmp_path / "seed0" / "self_certainty", val, {"monitor/majority_ratio": 0.2, "response_length/clip_ratio": 0.9})
    write_run(tmp_path / "seed0" / "entropy", val, {"monitor/majority_ratio": 0.6, "response_length/clip_ratio": 0.0})
    seed_table.main(["--root", str(tmp_path), "--seeds", "0", "--methods", "majority_voting", "self_certainty", "entropy",
                     "--figs", str(tmp_path / "figs")])
    table = (tmp_path / "figs" / "replication.md").read_text()
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in table.splitlines() if line.startswith("| ")}
    for label, reading in (("Majority-Voting", "collapse"), ("Self-Certainty", "degenerate"), ("Entropy", "fell")):
        assert f"| s0: {reading} (step 8) |" in rows[label]
