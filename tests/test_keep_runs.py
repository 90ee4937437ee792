"""scripts/keep_runs.py: a finished run's records are copied, and nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corewarding.experiments.runs import REPLICATION_DONE as DONE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import keep_runs  # noqa: E402


def make_run(root: Path, rel: str, finished: bool) -> Path:
    run = root / rel
    (run / "validation").mkdir(parents=True)
    (run / "rollouts").mkdir()
    (run / "global_step_4").mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    (run / "validation" / "0.jsonl").write_text('{"step": 0}\n')
    (run / "rollouts" / "1.jsonl").write_text('{"step": 1}\n')
    (run / "global_step_4" / "model.safetensors").write_bytes(b"weights")
    if finished:
        (run / DONE).write_text('{"seconds": 60}')
    return run


def test_only_the_records_of_finished_runs_are_kept(tmp_path):
    src, dest = tmp_path / "runs", tmp_path / "kept"
    make_run(src, "seed0/co_rewarding_i", finished=True)
    make_run(src, "seed0/entropy", finished=False)
    (src / "seed0" / "data").mkdir()
    (src / "seed0" / "data" / "args.json").write_text('{"unfaithful_fraction": 0.0}')
    (src / "seed0" / "data" / "train.parquet").write_bytes(b"rows")

    assert keep_runs.main(["--src", str(src), "--dest", str(dest)]) == [Path("seed0/co_rewarding_i")]
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert kept == ["seed0/co_rewarding_i/metrics.jsonl", f"seed0/co_rewarding_i/{DONE}",
                    "seed0/co_rewarding_i/validation/0.jsonl", "seed0/data/args.json"]


def test_rollouts_are_kept_when_asked(tmp_path):
    src, dest = tmp_path / "runs", tmp_path / "kept"
    make_run(src, "seed1/co_rewarding_i", finished=True)
    keep_runs.main(["--src", str(src), "--dest", str(dest), "--rollouts"])
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert kept == ["seed1/co_rewarding_i/metrics.jsonl", f"seed1/co_rewarding_i/{DONE}",
                    "seed1/co_rewarding_i/rollouts/1.jsonl", "seed1/co_rewarding_i/validation/0.jsonl"]


def test_a_finished_run_without_metrics_is_refused(tmp_path):
    run = make_run(tmp_path / "runs", "seed1/gt", finished=True)
    (run / "metrics.jsonl").unlink()
    with pytest.raises(SystemExit, match="seed1/gt is marked finished but has no metrics.jsonl"):
        keep_runs.main(["--src", str(tmp_path / "runs"), "--dest", str(tmp_path / "kept")])
