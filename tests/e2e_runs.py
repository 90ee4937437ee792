"""What the end-to-end runs share (test_e2e.py, test_e2e_resume.py, test_multinode.py): the data
with ground truths in {1, 2, 3}, the CPU overrides, a run in this process or as `python -m
corewarding.main`, the hand check of the rollout dumps, the export check and a tmpfs to fill up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import torch

from corewarding.rewards import answers_equivalent, extract_boxed_answer
from corewarding.config import compose_config
from corewarding.trainer.tracking import read_metrics


def _small_truths(path: Path) -> None:
    frame = pd.read_parquet(path)
    frame["reward_model"] = [{"ground_truth": str(1 + int(info["index"]) % 3), "style": "rule"} for info in frame["extra_info"]]
    frame.to_parquet(path, index=False)


@pytest.fixture(scope="session")
def data_files(tmp_path_factory):
    from corewarding.data import write_builtin_dataset

    paths = write_builtin_dataset(tmp_path_factory.mktemp("data"), n_train=32, n_val=8, seed=0)
    for path in paths.values():
        _small_truths(path)
    return paths


def cpu_overrides(model: Path, data: dict, out: Path, method: str = "naive") -> list[str]:
    return [
        f"reward_model.reward_manager={method}",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data['train']}",
        f"data.train_aug_files={data['train_rewrite']}",
        f"data.val_files={data['val']}",
        "data.train_batch_size=4",
        "data.max_prompt_length=192",
        "data.max_response_length=16",
        "data.seed=3",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        "trainer.device=cpu",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=2",
        "trainer.total_training_steps=2",
        "trainer.logger=[console]",
        f"trainer.default_local_dir={out / 'ckpt'}",
        f"trainer.rollout_data_dir={out / 'rollouts'}",
        "trainer.resume_mode=disable",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=2",  # a checkpoint at the last of two steps; a test that needs step 1's says so
        "data.val_max_samples=4",
    ]


def run(overrides: list[str]) -> dict:
    from corewarding.trainer.run import run_training

    return run_training(compose_config(overrides), progress=False)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def read_dump(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def release_label(voters: list[dict]) -> str | None:
    """The release's pseudo-label: Counter.most_common over the voters' answers in generation
    order (sample_index), so a tie goes to the answer generated first."""
    in_order = sorted(voters, key=lambda r: r["sample_index"])
    answers = [r["answer"].strip() for r in in_order if r["answer"] is not None and r["answer"].strip()]
    return Counter(answers).most_common(1)[0][0] if answers else None


def check_dump(method: str, records: list[dict]) -> None:
    policy = [r for r in records if r["role"] == "policy"]
    teacher = [r for r in records if r["role"] == "teacher"]
    assert policy
    for r in policy:
        assert r["answer"] == extract_boxed_answer(r["response"])
    if method in ("self_certainty", "entropy"):
        assert all(isinstance(r["reward"], float) for r in policy)
        assert len({round(r["reward"], 6) for r in policy}) > 1  # continuous scores
        return
    if method == "naive":
        for r in policy:
            assert r["reward"] == float(answers_equivalent(r["answer"], r["ground_truth"]))
        return
    if method == "majority_voting":
        voters_of = lambda r: [q for q in policy if q["uid"] == r["uid"]]  # noqa: E731
    elif method == "co_reward":
        other = {"original": "rephrased", "rephrased": "original"}
        voters_of = lambda r: [q for q in policy if q["pair_id"] == r["pair_id"] and q["view"] == other[r["view"]]]  # noqa: E731
        assert {r["view"] for r in policy} == {"original", "rephrased"}
    elif method == "co_rewarding_III":  # the teacher's rollouts on the twin vote
        other = {"original": "rephrased", "rephrased": "original"}
        assert teacher and {(r["pair_id"], r["view"]) for r in teacher} == {(r["pair_id"], r["view"]) for r in policy}
        voters_of = lambda r: [t for t in teacher if t["pair_id"] == r["pair_id"] and t["view"] == other[r["view"]]]  # noqa: E731
        assert {r["view"] for r in policy} == {"original", "rephrased"}
    else:  # co_rewarding_II: the teacher's rollouts with the same uid vote
        assert teacher and {r["uid"] for r in teacher} == {r["uid"] for r in policy}
        voters_of = lambda r: [t for t in teacher if t["uid"] == r["uid"]]  # noqa: E731
    for r in policy:
        voters = voters_of(r)
        assert sorted(v["sample_index"] for v in voters) == list(range(len(voters)))  # one group, generation order
        label = release_label(voters)
        assert r["pseudo_label"] == label
        assert r["reward"] == float(label is not None and r["answer"] is not None and r["answer"].strip() == label)


def check_export_of_real_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    """The trainer's own checkpoint (not a hand-made layout): both the policy and the EMA teacher
    export to HF folders that transformers loads with exactly the saved weights."""
    from transformers import AutoModelForCausalLM

    from corewarding.export import export_checkpoint, resolve_model_path

    assert resolve_model_path(run_dir) == run_dir / "global_step_2" / "actor"  # what corewarding.eval loads
    for which in ("actor", "ref"):
        out = export_checkpoint(run_dir, tmp_path / f"hf_{which}", which=which)
        loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
        saved = load_weights(run_dir / "global_step_2" / which)
        for key, value in saved.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def comparable(entries: list[dict]) -> list[dict]:
    skip = ("timing/", "perf/tokens_per_s", "checkpoint/")  # when and what a run saved, not what it trained
    return [{k: v for k, v in e.items() if not k.startswith(skip)} for e in entries if e["step"] > 0]


@contextlib.contextmanager
def main_process(overrides: list[str], out: Path) -> Iterator[subprocess.Popen]:
    """`python -m corewarding.main` in its own session (stderr in out/stderr.txt); SIGKILLed with its
    Ray processes at the end of the block if it still runs."""
    out.mkdir(parents=True, exist_ok=True)
    ray_dir = tempfile.mkdtemp(prefix="cw_ray_", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    proc = subprocess.Popen([sys.executable, "-m", "corewarding.main", *overrides, f"hydra.run.dir={out / 'hydra'}",
                             f"ray_init.temp_dir={ray_dir}"], cwd=out, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(out / "stderr.txt", "w"))
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(ray_dir, ignore_errors=True)


def wait_for_step(proc: subprocess.Popen, out: Path, step: int) -> None:
    """Until metrics.jsonl has `step` (600 s at most); fails if the run ends first."""
    metrics = out / "ckpt" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and any(m["step"] == step for m in read_metrics(metrics))):
        assert proc.poll() is None, f"the run ended early: {(out / 'stderr.txt').read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the run did not reach step {step} in 600 s"
        time.sleep(0.2)


def run_until_killed(overrides: list[str], out: Path, killed_after_step: int) -> None:
    """SIGKILL the run (with its Ray processes) as soon as metrics.jsonl has `killed_after_step`:
    a crash between two checkpoints."""
    with main_process(overrides, out) as proc:
        wait_for_step(proc, out, killed_after_step)


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` at `path` (root only: a real full disk, not a simulated error)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up ({mounted.stderr.strip()}): this test needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize_disk(path: Path, size: int | str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def disk_pages(folder: Path) -> int:
    """Bytes the files directly in `folder` take on a tmpfs (whole 4 KiB pages)."""
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in folder.iterdir() if f.is_file())
