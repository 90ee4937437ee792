"""The decisive experiment of figs/decisive/PROTOCOL.md: its validation sets, its queue of runs
(resumable, one after another), their held-out evaluations and their records.

    python scripts/decisive.py sets                      # write (or check) figs/decisive/val_{1024,64}.jsonl
    python scripts/decisive.py run                       # the protocol's queue, in its order
    python scripts/decisive.py run --only majority_voting:0 --steps 2   # one run (a smoke test: --out elsewhere)
    python scripts/decisive.py status                    # which runs are finished, in flight, waiting
    python scripts/decisive.py remaining                 # METHOD:SEED of the runs without records yet
    python scripts/decisive.py run --plan exploratory    # EXPLORATORY.md's follow-up (RUNNING.md: at 1d3e1f5)

Every run trains through `corewarding.trainer.run.run_training` on the replication's settings
(`corewarding/experiments/builtin_runs.py`) at 48 steps, on its seed's own training problems (384,
drawn with `data_seed = seed`, none of them a validation problem in any wording), validating on the
replication's 64 questions (avg@4 at T=0.8) every 8 steps. It saves every 8 steps; after training,
`python -m corewarding.eval` grades the checkpoints of steps 16, 32 and 48 on the 1,024 held-out
questions (greedy, one sample each), then the checkpoints are deleted. The base model is graded
once (step 0, the same for every run). A queue started again (after a preemption: exit status 75,
or a killed session) skips the finished runs, resumes the run in flight from its last checkpoint
and does the evaluations still missing. Each finished run's records go to `--records`
(default figs/decisive/runs/seed<S>/<run>/, the exploratory runs' to figs/decisive/exploratory/; a
run is named by its method, or `<method>-<variant>`: `VARIANTS`): metrics.jsonl,
validation/<step>.jsonl, heldout/<step>.json (summary) and heldout/<step>.jsonl.gz (samples),
rollouts/<step>.jsonl.gz, and decisive_done.json (commit, run time). The queue refuses to start
from a worktree with uncommitted changes: every run of the experiment is trained at one commit, and
the marker names it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# this process, Ray's workers and the evaluation's subprocess import corewarding from this worktree,
# not from the editable install (which may be another checkout at another commit)
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from corewarding import checkpoint_layout  # noqa: E402
from corewarding.experiments.builtin_runs import add_run_args, run_overrides  # noqa: E402
from corewarding.experiments.decisive_protocol import (  # noqa: E402
    DONE, EVERY, HELDOUT_STEPS, PRIMARY, PRIMARY_SEEDS, STEPS,
)
from corewarding.experiments.decisive_runs import split_name  # noqa: E402
from corewarding.experiments.records import gzip_copy, keep_run_records  # noqa: E402
from corewarding.hardware import describe_machine  # noqa: E402

FIGS = REPO / "figs" / "decisive"
HELDOUT_COUNTS = {"+": 496, "-": 496, "*": 32}  # 1,024; "*" has only 121 (a, b): training keeps the rest
REFERENCES = (("gt", range(3)), ("entropy", range(3)), ("co_rewarding_iii", range(4)), ("co_rewarding_i", range(4)),
              ("majority_voting-float32", range(3)))
# after the protocol, outside its verdict (figs/decisive/EXPLORATORY.md): the seeds where III collapsed
EXPLORATORY = (("co_rewarding_iii-release_ema", range(1, 3)),)


@dataclass(frozen=True)
class Variant:
    """What a run named `<method>-<variant>` changes in the method's protocol run."""

    dtype: str = "bfloat16"
    overrides: tuple[str, ...] = ()  # hydra overrides applied after the run's own
    exploratory: bool = False  # outside the protocol: its records go to figs/decisive/exploratory/


VARIANTS = {
    "": Variant(),
    "float32": Variant(dtype="float32"),
    # the authors' release's EMA teacher (its weight 0.99 -> 0.99999) in place of the runs' 0.9 -> 0.99
    "release_ema": Variant(overrides=("actor_rollout_ref.ref.sliding_average.alpha_start=0.99",
                                      "actor_rollout_ref.ref.sliding_average.alpha_end=0.99999"), exploratory=True),
}


def run_folder(root: Path, name: str, seed: int) -> Path:
    """Where run `name` of `seed` lives under `root` (its outputs, or its records)."""
    return root / f"seed{seed}" / name


def split_run(name: str) -> tuple[str, Variant]:
    """A run's method and variant from its name; an unknown variant is refused."""
    method, variant = split_name(name)
    if variant not in VARIANTS:
        raise SystemExit(f"error: run {name!r}: no variant {variant!r} (known: {', '.join(filter(None, VARIANTS))})")
    return method, VARIANTS[variant]


def queue(plan: str) -> list[tuple[str, int]]:
    """(run name, seed) in the protocol's order: the primary pairs seed by seed, then the references;
    or the exploratory runs (never part of "all")."""
    primary = [(method, seed) for seed in range(PRIMARY_SEEDS) for method in PRIMARY]
    references = [(method, seed) for method, seeds in REFERENCES for seed in seeds]
    exploratory = [(name, seed) for name, seeds in EXPLORATORY for seed in seeds]
    return {"primary": primary, "references": references, "all": primary + references, "exploratory": exploratory}[plan]


def records_root(records: str | None, name: str) -> Path:
    """Where run `name`'s records go: `--records`, else the protocol's or the exploratory runs' folder."""
    if records:
        return Path(records)
    return FIGS / ("exploratory" if split_run(name)[1].exploratory else "runs")


# ----------------------------------------------------------------------------- validation sets
def replication_val64() -> list[dict]:
    """The 64 validation questions of figs/replication.md (data seed 0, 128 training problems,
    arithmetic only), as `write_builtin_dataset` drew them."""
    from corewarding.data import builtin_problems

    train = builtin_problems(128, seed=0, word_fraction=0.0)
    return builtin_problems(64, seed=1_000_003, word_fraction=0.0, exclude={p["question"] for p in train})


def make_sets() -> dict[str, list[dict]]:
    """The 64 replication questions and 1,024 held-out ones with no (op, a, b) among them."""
    from corewarding.data.builtin import heldout_problems

    fields = ("question", "answer", "kind", "op", "a", "b")
    val64 = [{k: p[k] for k in fields} for p in replication_val64()]
    taken = {(p["op"], p["a"], p["b"]) for p in val64}
    val1024 = [{k: p[k] for k in fields} for p in heldout_problems(HELDOUT_COUNTS, seed=20261206, exclude_keys=taken)]
    return {"val_64": val64, "val_1024": val1024}


def read_sets(folder: Path = FIGS) -> dict[str, list[dict]]:
    """The committed sets; an error names the file to regenerate when one is missing or differs."""
    sets = make_sets()
    for name, problems in sets.items():
        path = folder / f"{name}.jsonl"
        if not path.exists():
            raise SystemExit(f"error: {path} is missing: run `python scripts/decisive.py sets` and commit it")
        if [json.loads(line) for line in path.read_text().splitlines()] != problems:
            raise SystemExit(f"error: {path} differs from what the code draws: the protocol's set is the committed one")
    return sets


def heldout_keys(sets: dict[str, list[dict]]) -> frozenset[tuple[str, int, int]]:
    return frozenset((p["op"], p["a"], p["b"]) for problems in sets.values() for p in problems)


def write_heldout_parquet(sets: dict[str, list[dict]], path: Path) -> Path:
    from corewarding.data import ONE_SHOT_SYSTEM_PROMPT
    from corewarding.data.schema import make_row, write_verl_parquet

    rows = [make_row(p["question"], p["answer"], index=i, split="test", data_source="builtin_arithmetic",
                     system_prompt=ONE_SHOT_SYSTEM_PROMPT, extra_info={"op": p["op"]})
            for i, p in enumerate(sets["val_1024"])]
    return write_verl_parquet(rows, path)


# ----------------------------------------------------------------------------- one run
def run_args(seed: int, steps: int, dtype: str) -> argparse.Namespace:
    """The replication's knobs (builtin_runs.py) at the protocol's steps and validation cadence, in
    `dtype` on every processor (the replication's `auto` would train in float32 on one without
    native bfloat16, and the runs of one experiment compute alike)."""
    parser = argparse.ArgumentParser()
    add_run_args(parser, steps=steps, test_freq=EVERY, seed=seed, dtype=dtype)
    args = parser.parse_args([])
    from corewarding.model_zoo import prepare_smollm2

    args.model = str(prepare_smollm2())
    return args


def train(name: str, seed: int, steps: int, out: Path, sets: dict[str, list[dict]]) -> None:
    """Train (or resume) one run."""
    from corewarding.config import compose_config
    from corewarding.data import write_builtin_dataset
    from corewarding.trainer.run import run_training

    method, variant = split_run(name)
    args = run_args(seed, steps, variant.dtype)
    data = write_builtin_dataset(out / "data" / f"seed{seed}", n_train=args.batch * steps, seed=seed, word_fraction=0.0,
                                 heldout_keys=heldout_keys(sets), val_problems=sets["val_64"])
    run_dir = run_folder(out, name, seed)
    overrides = [*run_overrides(args, method, data, run_dir), "trainer.project_name=decisive", "trainer.resume_mode=auto",
                 f"trainer.save_freq={EVERY}", "trainer.max_actor_ckpt_to_keep=null", *variant.overrides]
    run_training(compose_config(overrides))


def evaluate_heldout(model: Path | str, out_dir: Path, heldout: Path) -> float:
    """Greedy accuracy of `model` on the held-out parquet (corewarding.eval in a subprocess, its
    output in `out_dir`/eval.log); seconds."""
    started = time.time()
    print(f"grading {model} on the held-out questions ...", flush=True)
    command = [sys.executable, "-m", "corewarding.eval", "--model", str(model), "--benchmarks", str(heldout),
               "--k", "1", "--temperature", "0", "--max_tokens", "40", "--batch_size", "1024", "--dtype", "bfloat16",
               "--output_dir", str(out_dir)]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "eval.log", "w") as log:
        if subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise RuntimeError(f"grading {model} failed: see {out_dir / 'eval.log'}")
    result = json.loads((out_dir / "summary.json").read_text())["benchmarks"][heldout.stem]
    print(f"  accuracy {result['pass@1']:.3f}, boxed {result['answer_present']:.3f}, truncated {result['truncated']:.3f} "
          f"({time.time() - started:.0f} s)", flush=True)
    return time.time() - started


def commit_of(repo: Path = REPO) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def heldout_steps(steps: int) -> list[int]:
    """The steps graded on the held-out set: 16, 32, 48 (and a shorter run's last)."""
    return [s for s in HELDOUT_STEPS if s < steps] + [steps]


def finish_run(name: str, seed: int, steps: int, out: Path, sets: dict[str, list[dict]], heldout: Path) -> Path:
    """Train, grade the held-out steps, delete the checkpoints, mark the run finished."""
    run_dir = run_folder(out, name, seed)
    if (run_dir / DONE).exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = run_dir / "progress.json"
    record = json.loads(progress.read_text()) if progress.exists() else {"train_seconds": 0.0, "eval_seconds": {}}
    if not checkpoint_layout.step_dir(run_dir, steps).exists():
        started = time.time()
        try:
            train(name, seed, steps, out, sets)
        finally:  # a preempted part counts too
            record["train_seconds"] += time.time() - started
            progress.write_text(json.dumps(record))
    for step in heldout_steps(steps):
        if str(step) not in record["eval_seconds"]:
            record["eval_seconds"][str(step)] = evaluate_heldout(checkpoint_layout.step_dir(run_dir, step),
                                                                 run_dir / "heldout" / str(step), heldout)
            progress.write_text(json.dumps(record))
    for checkpoint in checkpoint_layout.step_folders(run_dir, staging=True):
        shutil.rmtree(checkpoint)
    method, variant = split_run(name)
    (run_dir / DONE).write_text(json.dumps({**record, "commit": commit_of(), "steps": steps, "method": method,
                                            "dtype": variant.dtype, "overrides": list(variant.overrides), "seed": seed,
                                            "machine": describe_machine()}, indent=1))
    return run_dir


# ----------------------------------------------------------------------------- records
def keep_records(run_dir: Path, dest: Path) -> None:
    """A finished run's records into `dest` (the large ones gzipped); checkpoints and logs stay behind."""
    keep_run_records(run_dir, dest, DONE, rollouts="gzip")
    for step_dir in sorted((run_dir / "heldout").glob("*")):
        gzip_copy(step_dir / "samples.jsonl", dest / "heldout" / f"{step_dir.name}.jsonl.gz")
        shutil.copy2(step_dir / "summary.json", dest / "heldout" / f"{step_dir.name}.json")


def base_model(out: Path, heldout: Path, records: Path) -> None:
    """Step 0 of every run: the base model on the held-out set, graded once."""
    folder = out / "base" / "heldout"
    if not (folder / "0" / "summary.json").exists():
        from corewarding.model_zoo import prepare_smollm2

        evaluate_heldout(prepare_smollm2(), folder / "0", heldout)
    gzip_copy(folder / "0" / "samples.jsonl", records / "base" / "heldout" / "0.jsonl.gz")
    shutil.copy2(folder / "0" / "summary.json", records / "base" / "heldout" / "0.json")


def unrecorded(runs: list[tuple[str, int]], records: str | None) -> list[tuple[str, int]]:
    """The runs whose finished records are not kept yet (`records_root`), in the queue's order."""
    return [(name, seed) for name, seed in runs
            if not (run_folder(records_root(records, name), name, seed) / DONE).exists()]


def state_of(out: Path, name: str, seed: int) -> str:
    run_dir = run_folder(out, name, seed)
    if (run_dir / DONE).exists():
        return "finished"
    return "in flight" if (run_dir / "metrics.jsonl").exists() else "waiting"


# ----------------------------------------------------------------------------- entry point
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["sets", "run", "status", "remaining"])
    p.add_argument("--plan", default="all", choices=["primary", "references", "all", "exploratory"])
    p.add_argument("--only", nargs="+", default=None, metavar="METHOD:SEED", help="these runs instead of the plan's")
    p.add_argument("--steps", type=int, default=STEPS, help="the protocol's 48; fewer only for a smoke test")
    p.add_argument("--out", default=str(REPO / "outputs" / "decisive"), help="runs, checkpoints and data")
    p.add_argument("--records", default=None, help="where finished runs' records go (default: figs/decisive/runs, "
                   "or figs/decisive/exploratory for the exploratory runs)")
    p.add_argument("--allow-dirty", action="store_true", help="train from uncommitted code (smoke tests only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if args.command == "sets":
        for name, problems in make_sets().items():
            (FIGS / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
            print(f"wrote {FIGS / f'{name}.jsonl'} ({len(problems)} questions)")
        return
    runs = [(m, int(s)) for m, s in (item.split(":") for item in args.only)] if args.only else queue(args.plan)
    for name, _ in runs:
        split_run(name)  # an unknown variant stops here, before anything trains
    if args.command == "status":
        for name, seed in runs:
            print(f"seed {seed} {name}: {state_of(out, name, seed)}")
        return
    if args.command == "remaining":  # for `run --only` on a machine whose outputs/ are gone
        print(" ".join(f"{name}:{seed}" for name, seed in unrecorded(runs, args.records)))
        return
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    if dirty and not args.allow_dirty:
        raise SystemExit(f"error: {REPO} has uncommitted changes; the experiment trains at one commit:\n{dirty}")
    sets = read_sets()
    heldout = write_heldout_parquet(sets, out / "data" / "heldout.parquet")
    from corewarding.trainer.run import exit_status

    with exit_status():  # preempted (status 75): run the same command again
        for records in sorted({records_root(args.records, name) for name, _ in runs}):
            base_model(out, heldout, records)
        for name, seed in runs:
            print(f"== seed {seed} {name} ({state_of(out, name, seed)})", flush=True)
            run_dir = finish_run(name, seed, args.steps, out, sets, heldout)
            keep_records(run_dir, run_folder(records_root(args.records, name), name, seed))


if __name__ == "__main__":
    main()
