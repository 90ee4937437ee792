"""scripts/robustness_table.py on hand-made run folders: the table's numbers, the recorded unfaithful
fraction checked against the one given, and the figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import robustness_table  # noqa: E402

PSEUDO = robustness_table.PSEUDO
SPLIT = ("reward/pseudo_label_acc_faithful", "reward/pseudo_label_acc_unfaithful", "reward/pseudo_label_twin_acc_unfaithful")


def write_run(folder: Path, val: dict[int, tuple], pseudo: list[float], split: list[tuple] | None = None,
              majority: float = 0.5, recorded_f: float | None = None) -> Path:
    """A run of len(pseudo) training steps as replicate.py writes it: validation at the steps of `val`
    ((acc, se) or (acc,)), the pseudo-label accuracy and (`split`) its three split metrics per step,
    the rollouts' majority ratio `majority`; `recorded_f` goes to <out>/data/args.json."""
    folder.mkdir(parents=True)
    history = []
    for step in range(len(pseudo) + 1):
        entry: dict = {"step": step}
        if step > 0:
            entry.update({"reward/mean": 0.5, PSEUDO: pseudo[step - 1], "monitor/majority_ratio": majority})
            if split is not None:
                entry.update(dict(zip(SPLIT, split[step - 1])))
        if step in val:
            entry["val/acc"] = val[step][0]
            if len(val[step]) > 1:
                entry["val/acc_se"] = val[step][1]
        history.append(entry)
    if recorded_f is not None:
        (folder.parent / "data").mkdir()
        (folder.parent / "data" / "args.json").write_text(json.dumps({"data_seed": 0, "unfaithful_fraction": recorded_f}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return folder


def test_robustness_table_numbers_and_figure(tmp_path):
    f0 = write_run(tmp_path / "seed0" / "co_rewarding_i", {0: (0.1, 0.02), 4: (0.4, 0.05), 8: (0.3, 0.05)}, [0.5] * 8,
                   recorded_f=0.0)
    with open(f0 / "metrics.jsonl") as handle:  # killed after step 4 and resumed before it: step 4 logged twice
        lines = handle.read().splitlines()
    stale = json.dumps({"step": 4, PSEUDO: 0.9, "val/acc": 0.9, "val/acc_se": 0.01})
    (f0 / "metrics.jsonl").write_text("\n".join(lines[:4] + [stale] + lines[4:]) + "\n")
    f025 = write_run(tmp_path / "f025" / "co_rewarding_i", {0: (0.1, 0.02), 4: (0.3, 0.04), 8: (0.3, 0.04)},
                     [0.4] * 4 + [0.6] * 4, split=[(0.6, 0.2, 0.5)] * 4 + [(0.6, 0.4, 0.5)] * 4)
    f05 = write_run(tmp_path / "f050" / "co_rewarding_i", {0: (0.1, 0.02), 4: (0.2, 0.03), 8: (0.05, 0.02)}, [0.3] * 8,
                    split=[(0.4, 0.1, 0.7)] * 8, majority=0.95, recorded_f=0.5)
    union = write_run(tmp_path / "union" / "majority_voting_union", {0: (0.1,), 4: (0.25,), 8: (0.2,)}, [0.45] * 8,
                      recorded_f=0.0)
    figs = tmp_path / "figs"
    runs = robustness_table.main(["--runs", f"0.5={f05}", f"0={f0}", f"0.25={f025}", "--union", str(union),
                                  "--figs", str(figs)])
    assert [(r["method"], r["f"]) for r in runs] == [("co_rewarding_i", 0.0), ("co_rewarding_i", 0.25),
                                                     ("co_rewarding_i", 0.5), ("majority_voting_union", 0.0)]
    table = (figs / "robustness.md").read_text()
    # f=0: the resumed run's later step 4 counts (0.4, pseudo-label 0.5), not the stale one (0.9)
    assert "| Co-rewarding-I | 0 | 0.100 ± 0.020 | 0.400 ± 0.050 (4) | 0.300 ± 0.050 | 0.500 | - | - | - | none |" in table
    # best: a tie goes to the earlier step; split means over the 8 steps: (4 x 0.2 + 4 x 0.4) / 8 = 0.3
    assert "| Co-rewarding-I | 0.25 | 0.100 ± 0.020 | 0.300 ± 0.040 (4) | 0.300 ± 0.040 | 0.500 | 0.600 | 0.300 | 0.500 | none |" in table
    # the validation falls to 0.05 < half of 0.2 at step 8 while the groups agree (0.95): a collapse
    assert ("| Co-rewarding-I | 0.5 | 0.100 ± 0.020 | 0.200 ± 0.030 (4) | 0.050 ± 0.020 | 0.300 | 0.400 | 0.100 | 0.700 "
            "| collapse (step 8) |") in table
    # the union: f from its recorded data, no standard error logged
    assert "| Majority-Voting, both views | 0 | 0.100 | 0.250 (4) | 0.200 | 0.450 | - | - | - | none |" in table
    assert (figs / "robustness.png").stat().st_size > 10_000


def test_robustness_table_checks_the_fraction(tmp_path):
    f05 = write_run(tmp_path / "f050" / "co_rewarding_i", {0: (0.1,), 1: (0.2,)}, [0.3], recorded_f=0.5)
    bare = write_run(tmp_path / "bare" / "co_rewarding_i", {0: (0.1,), 1: (0.2,)}, [0.3])
    figs = tmp_path / "figs"
    with pytest.raises(SystemExit, match=r"trained at f=0\.5"):  # a run filed under the wrong f
        robustness_table.main(["--runs", f"0.25={f05}", "--figs", str(figs)])
    with pytest.raises(SystemExit, match="give the run as f=<folder>"):  # no f given, none recorded
        robustness_table.main(["--runs", str(bare), "--figs", str(figs)])
    assert robustness_table.main(["--runs", str(f05), "--figs", str(figs)])[0]["f"] == 0.5  # the recorded one
