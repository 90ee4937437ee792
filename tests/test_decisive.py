"""scripts/decisive.py: the protocol's validation sets, its queue, and a run's resume and records
(training and grading replaced by fakes; the real path is `make replicate`'s, run by the queue)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import decisive  # noqa: E402


def _key(p: dict) -> tuple[str, int, int]:
    return p["op"], p["a"], p["b"]


def test_sets_are_the_replications_64_and_1024_held_out_questions():
    sets = decisive.make_sets()
    val64, val1024 = sets["val_64"], sets["val_1024"]
    recorded = [json.loads(line) for line in (REPO / "figs/runs/seed0/majority_voting/validation/0.jsonl").open()]
    assert [p["question"] for p in val64] == list(dict.fromkeys(r["prompt"] for r in recorded))
    assert len(val1024) == 1024 and len({_key(p) for p in val1024}) == 1024
    assert {op: sum(p["op"] == op for p in val1024) for op in "+-*"} == decisive.HELDOUT_COUNTS
    assert not {_key(p) for p in val1024} & {_key(p) for p in val64}
    assert decisive.read_sets() == sets  # the committed files are what the code draws


def test_read_sets_names_a_missing_or_changed_file(tmp_path):
    with pytest.raises(SystemExit, match=f"{tmp_path}/val_64.jsonl is missing"):
        decisive.read_sets(tmp_path)
    sets = decisive.make_sets()
    for name, problems in sets.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems[::-1]))
    with pytest.raises(SystemExit, match="val_64.jsonl differs from what the code draws"):
        decisive.read_sets(tmp_path)


def test_training_problems_never_meet_a_validation_problem(tmp_path):
    from corewarding.data import builtin_problems

    sets = decisive.make_sets()
    keys = decisive.heldout_keys(sets)
    train = builtin_problems(384, seed=3, word_fraction=0.0, exclude_keys=keys)
    assert not {_key(p) for p in train} & keys
    assert sum(p["op"] == "*" for p in train) > 80  # the products left to training still get drawn


def test_queue_pairs_the_primary_methods_seed_by_seed_then_the_references():
    primary = decisive.queue("primary")
    assert primary[:4] == [("majority_voting", 0), ("co_rewarding_ii", 0), ("majority_voting", 1), ("co_rewarding_ii", 1)]
    assert len(primary) == 16
    assert decisive.queue("all") == primary + decisive.queue("references")
    assert {m for m, _ in decisive.queue("references")} == {"gt", "entropy", "co_rewarding_iii", "co_rewarding_i",
                                                            "majority_voting-float32"}
    assert decisive.split_run("majority_voting-float32") == ("majority_voting", decisive.Variant(dtype="float32"))
    assert decisive.split_run("co_rewarding_ii") == ("co_rewarding_ii", decisive.Variant())
    assert not set(decisive.queue("exploratory")) & set(decisive.queue("all"))


def test_an_unknown_variant_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match="run 'co_rewarding_iii-release_emma': no variant 'release_emma'"):
        decisive.main(["run", "--only", "co_rewarding_iii-release_emma:1", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


@pytest.mark.parametrize("name, changed", [
    ("co_rewarding_iii-release_ema", {"actor_rollout_ref.ref.sliding_average.alpha_start": 0.99,
                                      "actor_rollout_ref.ref.sliding_average.alpha_end": 0.99999}),
    ("majority_voting-float32", {"actor_rollout_ref.model.dtype": "float32"}),
])
def test_a_variant_changes_only_its_settings(tmp_path, monkeypatch, name, changed):
    """A variant's composed config is its method's protocol run's, key for key, but for the variant's
    own settings and the run's folders (named after the run)."""
    from omegaconf import OmegaConf

    composed = []
    monkeypatch.setattr("corewarding.trainer.run.run_training", composed.append)
    sets = decisive.make_sets()
    decisive.train(name, 1, 48, tmp_path, sets)
    decisive.train(decisive.split_run(name)[0], 1, 48, tmp_path, sets)
    variant, protocol = (_flat(OmegaConf.to_container(c, resolve=True)) for c in composed)
    differing = {key for key in variant.keys() | protocol.keys() if variant.get(key) != protocol.get(key)}
    folders = {"trainer.default_local_dir", "trainer.validation_data_dir", "trainer.rollout_data_dir"}
    assert differing - folders == set(changed)
    assert {key: variant[key] for key in changed} == changed


def test_remaining_finds_the_exploratory_records_in_their_own_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(decisive, "FIGS", tmp_path)
    (tmp_path / "exploratory" / "seed1" / "co_rewarding_iii-release_ema").mkdir(parents=True)
    (tmp_path / "exploratory" / "seed1" / "co_rewarding_iii-release_ema" / decisive.DONE).write_text("{}")
    (tmp_path / "runs" / "seed2" / "co_rewarding_iii-release_ema").mkdir(parents=True)  # not where they belong
    (tmp_path / "runs" / "seed2" / "co_rewarding_iii-release_ema" / decisive.DONE).write_text("{}")
    decisive.main(["remaining", "--plan", "exploratory"])
    assert capsys.readouterr().out.split() == ["co_rewarding_iii-release_ema:2"]


def test_exploratory_runs_keep_their_records_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(decisive, "FIGS", tmp_path)
    assert decisive.records_root(None, "co_rewarding_iii-release_ema") == tmp_path / "exploratory"
    assert decisive.records_root(None, "co_rewarding_iii") == tmp_path / "runs"
    assert decisive.records_root(str(tmp_path / "x"), "co_rewarding_iii-release_ema") == tmp_path / "x"


def test_remaining_lists_the_runs_without_records_in_queue_order(tmp_path, capsys):
    for name, seed in [("majority_voting", 0), ("co_rewarding_ii", 0), ("majority_voting", 1)]:
        (tmp_path / f"seed{seed}" / name).mkdir(parents=True)
        (tmp_path / f"seed{seed}" / name / decisive.DONE).write_text("{}")
    (tmp_path / "seed1" / "co_rewarding_ii").mkdir(parents=True)  # records of a run that did not finish
    decisive.main(["remaining", "--plan", "primary", "--records", str(tmp_path)])
    printed = capsys.readouterr().out.split()
    assert printed[:2] == ["co_rewarding_ii:1", "majority_voting:2"]
    assert len(printed) == len(decisive.queue("primary")) - 3


class _Stop(Exception):
    pass


def _fake_run(monkeypatch, run_dir: Path, stop_training_at: int | None, fail_eval_at: int | None, calls: list):
    def train(method, seed, steps, out, sets):
        start = max([int(p.name.split("_")[-1]) for p in run_dir.glob("global_step_*")], default=0)
        for step in range(start + 1, steps + 1):
            if step % 8 == 0 or step == steps:
                (run_dir / f"global_step_{step}").mkdir(parents=True)
            if step == stop_training_at:
                (run_dir / f"global_step_{step}").mkdir(parents=True, exist_ok=True)
                raise _Stop
        calls.append(("train", start))

    def evaluate(model, out_dir, heldout):
        step = int(Path(model).name.split("_")[-1])
        if step == fail_eval_at:
            raise _Stop
        out_dir.mkdir(parents=True)
        (out_dir / "samples.jsonl").write_text(json.dumps({"step": step}) + "\n")
        (out_dir / "summary.json").write_text(json.dumps({"step": step}))
        calls.append(("eval", step))
        return 1.0

    monkeypatch.setattr(decisive, "train", train)
    monkeypatch.setattr(decisive, "evaluate_heldout", evaluate)


def test_a_run_resumes_training_and_grades_each_step_once(tmp_path, monkeypatch):
    run_dir = tmp_path / "seed1" / "co_rewarding_ii"
    run_dir.mkdir(parents=True)
    calls: list = []
    args = ("co_rewarding_ii", 1, 48, tmp_path, {}, tmp_path / "heldout.parquet")
    _fake_run(monkeypatch, run_dir, stop_training_at=21, fail_eval_at=None, calls=calls)
    with pytest.raises(_Stop):  # preempted in step 21, after its save
        decisive.finish_run(*args)
    assert json.loads((run_dir / "progress.json").read_text())["train_seconds"] > 0  # a preempted part counts
    _fake_run(monkeypatch, run_dir, stop_training_at=None, fail_eval_at=32, calls=calls)
    with pytest.raises(_Stop):  # the session ends during the grading of step 32
        decisive.finish_run(*args)
    assert calls == [("train", 21), ("eval", 16)]
    _fake_run(monkeypatch, run_dir, stop_training_at=None, fail_eval_at=None, calls=calls)
    decisive.finish_run(*args)
    assert calls == [("train", 21), ("eval", 16), ("eval", 32), ("eval", 48)]  # training not repeated
    assert not list(run_dir.glob("global_step_*"))
    done = json.loads((run_dir / decisive.DONE).read_text())
    assert done["commit"] == decisive.commit_of() and done["steps"] == 48 and set(done["eval_seconds"]) == {"16", "32", "48"}
    decisive.finish_run(*args)
    assert len(calls) == 4  # a finished run is left alone


def test_records_keep_the_tables_inputs_and_gzip_the_large_files(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    for relative, text in {decisive.DONE: "{}", "metrics.jsonl": '{"step": 0}\n', "validation/0.jsonl": "v\n",
                           "rollouts/1.jsonl": "r\n", "heldout/16/samples.jsonl": "s\n",
                           "heldout/16/summary.json": "{}", "global_step_8/model.pt": "w", "logs/x.log": "l"}.items():
        (run_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / relative).write_text(text)
    decisive.keep_records(run_dir, tmp_path / "kept")
    kept = sorted(str(p.relative_to(tmp_path / "kept")) for p in (tmp_path / "kept").rglob("*") if p.is_file())
    assert kept == [decisive.DONE, "heldout/16.json", "heldout/16.jsonl.gz", "metrics.jsonl", "rollouts/1.jsonl.gz",
                    "validation/0.jsonl"]
    assert gzip.decompress((tmp_path / "kept/heldout/16.jsonl.gz").read_bytes()) == b"s\n"
    first = (tmp_path / "kept/rollouts/1.jsonl.gz").read_bytes()
    os.utime(run_dir / "rollouts/1.jsonl", (1, 1))
    monkeypatch.setattr(gzip.time, "time", lambda: 1e9)  # a later start of the queue
    decisive.keep_records(run_dir, tmp_path / "kept")  # kept again: the same bytes
    assert (tmp_path / "kept/rollouts/1.jsonl.gz").read_bytes() == first
    assert (tmp_path / "kept/validation/0.jsonl").read_text() == "v\n"


def test_heldout_steps():
    assert decisive.heldout_steps(48) == [16, 32, 48]
    assert decisive.heldout_steps(2) == [2]
