"""The CPU scripts end to end at smoke size on the tiny model: `make demo` (scripts/demo.py) and
`make replicate` (scripts/replicate.py: all six methods one step each, the table, figure and metrics
file, and a second call with the same folder that skips every finished method), and Co-rewarding-I on
unfaithful twins with the union baseline (the split pseudo-label accuracy, scripts/robustness_table.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from corewarding.trainer.tracking import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import demo  # noqa: E402
import replicate  # noqa: E402
import robustness_table  # noqa: E402

pytestmark = pytest.mark.slow
# The one worker inside the test's process, without Ray: these tests are about the scripts, and a Ray
# worker would add its start-up to each run (about 5 s). test_e2e holds a run of one Ray worker equal
# to it (test_single_process_run_equals_a_ray_run_of_one_worker).
ONE_PROCESS = "trainer.single_process=True"


@pytest.mark.parametrize("method", ["co_rewarding_ii", "co_rewarding_iii"])  # make demo, make demo-iii
def test_demo_smoke(method, boxing_model, tmp_path):
    history = demo.main(["--method", method, "--model", str(boxing_model), "--steps", "1", "--batch", "2", "--n", "2",
                         "--max-new-tokens", "8", "--val-size", "2", "--test-freq", "1", "--workers", "1",
                         "--rollout", "hf", "--out", str(tmp_path), ONE_PROCESS])

    out = tmp_path / method
    assert [h["step"] for h in history if "val/acc" in h] == [0, 1]
    assert "reward/pseudo_label_acc" in history[-1]
    if method == "co_rewarding_iii":
        assert "coreward/ori_pseudo_acc" in history[-1] and "actor/pg_loss_aug" in history[-1]
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "run" / "global_step_1").is_dir()
    assert (out / "rollouts" / "1.jsonl").read_text().strip()


def test_replicate_smoke(boxing_model, tmp_path, capsys):
    argv = ["--smoke", "--model", str(boxing_model), "--rollout", "hf", "--workers", "1",
            "--out", str(tmp_path / "runs"), "--figs", str(tmp_path / "figs"), ONE_PROCESS]
    rows = replicate.main(argv)

    assert [r["method"] for r in rows] == list(replicate.REPLICATED)
    for row in rows:
        assert row["base"]["step"] == 0 and row["final"]["step"] == 1, row
        assert 0.0 <= row["signal"] <= 1.0, row
    table = (tmp_path / "figs" / "replication.md").read_text()
    for method in replicate.REPLICATED:
        assert f"| {replicate.LABELS[method]} |" in table
    assert (tmp_path / "figs" / "replication.png").stat().st_size > 10_000
    logged = [json.loads(line) for line in (tmp_path / "figs" / "replication_metrics.jsonl").read_text().splitlines()]
    assert {entry["method"] for entry in logged} == set(replicate.REPLICATED)
    for method in replicate.REPLICATED:  # what a reading of the runs needs: every training rollout and validation sample
        run = tmp_path / "runs" / method
        assert (run / "rollouts" / "1.jsonl").stat().st_size > 0 and (run / "validation" / "0.jsonl").exists(), method

    capsys.readouterr()
    again = replicate.main(argv)
    skipped = capsys.readouterr().out
    assert all(f"{method}: finished before, skipped" in skipped for method in replicate.REPLICATED)
    assert again == rows


def test_replicate_smoke_with_unfaithful_twins_and_the_union_baseline(boxing_model, tmp_path):
    """One step of Co-rewarding-I on data whose twins are half unfaithful, and of Majority-Voting on
    both views as independent prompts (twice the prompts of a plain Majority-Voting step)."""
    import pandas as pd

    argv = ["--smoke", "--model", str(boxing_model), "--rollout", "hf", "--workers", "1", "--unfaithful-fraction", "0.5",
            "--methods", "co_rewarding_i", "majority_voting_union", "--out", str(tmp_path / "runs"),
            "--figs", str(tmp_path / "figs"), ONE_PROCESS]
    rows = replicate.main(argv)
    assert [r["method"] for r in rows] == ["co_rewarding_i", "majority_voting_union"]
    twins = pd.read_parquet(tmp_path / "runs" / "data" / "train_rewrite.parquet")
    assert sum(not info["faithful"] for info in twins["extra_info"]) == len(twins) // 2
    union = pd.read_parquet(tmp_path / "runs" / "data" / "train_union.parquet")
    assert len(union) == 2 * len(twins) and len({info["index"] for info in union["extra_info"]}) == len(union)
    overrides = replicate.method_overrides(replicate.parse_args(argv), "majority_voting_union",
                                           {"train": tmp_path / "runs" / "data" / "train.parquet",
                                            "train_rewrite": tmp_path / "runs" / "data" / "train_rewrite.parquet",
                                            "val": tmp_path / "runs" / "data" / "val.parquet"}, tmp_path / "x")
    assert overrides.index("data.train_batch_size=4") > overrides.index("data.train_batch_size=2")  # the later wins
    for row in rows:
        assert row["final"]["step"] == 1, row
    # the pseudo-label accuracy split by faithful / unfaithful pairs reaches the logged metrics (one pair of each)
    split = ["reward/pseudo_label_acc_faithful", "reward/pseudo_label_acc_unfaithful",
             "reward/pseudo_label_twin_acc_unfaithful"]
    logged = read_metrics(tmp_path / "runs" / "co_rewarding_i" / "metrics.jsonl")
    step = next(h for h in logged if h["step"] == 1 and "reward/mean" in h)
    assert all(0.0 <= step[key] <= 1.0 for key in split), step
    assert not any(key in h for h in read_metrics(tmp_path / "runs" / "majority_voting_union" / "metrics.jsonl")
                   for key in split)
    runs = robustness_table.main(["--runs", f"0.5={tmp_path / 'runs' / 'co_rewarding_i'}",
                                  "--union", str(tmp_path / "runs" / "majority_voting_union"), "--figs", str(tmp_path / "r")])
    assert [r["f"] for r in runs] == [0.5, 0.5] and runs[0]["split"][split[0]] == step[split[0]]
    with pytest.raises(SystemExit, match="were trained on other data"):  # finished runs would be mixed in
        replicate.main([a if a != "0.5" else "0.25" for a in argv])
