"""The README's GPU walk-through, run top to bottom on CPU in a copy of the repository: every command
as the README writes it, shrunk by overrides (local copies of the data, a tiny model, one training
step, a few questions), so that the order of the steps and the file names they pass on stay true.
A command the README gains without a rule here fails the test."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROWS = 8  # questions kept of each data file
TRAIN_ON_CPU = [  # one step of each run script, on CPU, in the driver process
    "trainer.device=cpu", "actor_rollout_ref.rollout.name=hf", "trainer.single_process=True",
    "trainer.total_training_steps=1", "trainer.test_freq=-1", "trainer.logger=[console]",
    "data.train_batch_size=2", "data.val_batch_size=8", "data.max_prompt_length=512",
    "data.max_response_length=8", "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.rollout.teacher_n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.model.enable_gradient_checkpointing=False",
]
EVAL_ON_CPU = ["--backend", "hf", "--limit", "2", "--max_tokens", "8"]


def walkthrough_commands() -> list[str]:
    """The code lines of the README's GPU section, in order, continuation lines joined."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Training on GPUs"):readme.index("## Layout")]
    commands, current = [], ""
    for line in section.splitlines():
        if not line.startswith("    "):
            continue
        current += line.strip().removesuffix("\\").rstrip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def _words(command: str) -> list[str]:
    return shlex.split(command.split(" #", 1)[0])


def _replace(words: list[str], old: str, new: str) -> list[str]:
    return [new if w == old else w.replace(f"={old}", f"={new}") for w in words]


class Walkthrough:
    """Runs each README command in `root` (a copy of the repository) the way CPU allows."""

    def __init__(self, root: Path, shared: Path, tiny_model: Path) -> None:
        self.root, self.shared, self.model = root, shared, tiny_model
        self.env = {**os.environ, "PYTHON": sys.executable, "NUM_GPUS": "1", "PYTHONPATH": str(root)}
        self.env.pop("CUDA_VISIBLE_DEVICES", None)

    def run(self, words: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        if words[0] == "python":
            words = [sys.executable, *words[1:]]
        done = subprocess.run(words, cwd=cwd or self.root, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(words)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def command(self, command: str) -> None:
        words = _words(command)
        if words[:2] == ["bash", "scripts/install_env.sh"]:
            self.run(["bash", "-n", "scripts/install_env.sh"])  # installing needs CUDA wheels: syntax only
        elif words[:2] == ["python", "scripts/preprocess.py"]:
            self.preprocess(words)
        elif words[:2] == ["python", "rewrite_questions.py"]:
            self.rewrite(words)
        elif words[:3] == ["python", "-m", "corewarding.plan"]:
            self.run(_replace(words, "/models/Qwen3-8B-Base", str(REPO / "tests" / "model_configs" / "Qwen3-8B-Base")))
        elif command.startswith("(cd "):
            self.train(command)
        elif words[:2] == ["bash", "scripts/evaluate.sh"]:
            self.run(_replace(words, "/models/Qwen3-8B-Base", str(self.model)) + EVAL_ON_CPU)
        elif words[:2] == ["python", "scripts/compare_runs.py"]:
            assert "Co-rewarding-II" in self.run(words)
        else:
            raise AssertionError(f"the README's walk-through has a command this test does not know: {command}")

    LOCAL_COPIES = {  # dataset -> {split: the copy in ../shared/data}
        "math": {"train": "math/train.parquet", "test": "math/test.parquet"},
        "math_rephrased": {"train": "math/train_rewrite_Qwen3-32B.parquet"},
        "math500": {"test": "eval/math500_test.jsonl"},
        "gsm8k": {"train": "eval/gsm8k_train.jsonl", "test": "eval/gsm8k_test.jsonl"},
        "amc": {"test": "eval/amc_test.parquet"},
    }

    def preprocess(self, words: list[str]) -> None:
        for split, copy in self.LOCAL_COPIES[words[2]].items():
            self.run([*words, "--local_path", str(self.shared / copy), "--split", split, "--limit", str(ROWS)])

    def rewrite(self, words: list[str]) -> None:
        """The walk-through's rephrasing (your own, optional) into files of its own: the tiny model's
        rewrites do not parse, and the set of step 2 is the one the runs read."""
        words = [w.replace("train_rewrite_Qwen3-32B", "mine").replace("train_original", "mine_original") for w in words]
        words = _replace(words, "/models/Qwen3-32B", str(self.model))
        words[words.index("--tensor_parallel_size") + 1] = "1"
        self.run([*words, "--backend", "hf", "--limit", "2", "--max_new_tokens", "8", "--no_progress"])
        assert (self.root / "data" / "math" / "mine.jsonl").exists()

    def train(self, command: str) -> None:
        folder, rest = re.fullmatch(r"\(cd (\S+) +&& (.*)\)", command).groups()
        words = _words(rest)
        env = {}
        while "=" in words[0]:
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        assert env.pop("LLM_PATH") == "/models/Qwen3-8B-Base" and env.pop("NUM_GPUS") == "8"
        self.run([*words, *TRAIN_ON_CPU], cwd=self.root / folder, env={**env, "LLM_PATH": str(self.model)})


def copy_of_the_repository(to: Path) -> Path:
    """The files git would commit (tracked and new), without the figures' records."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if name.startswith("figs/") or not (REPO / name).is_file():
            continue
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, to / name)
    return to


def test_the_walkthrough_commands_are_the_ones_this_test_knows():
    commands = walkthrough_commands()
    kinds = ["install_env.sh", "preprocess.py math ", "preprocess.py math_rephrased", "rewrite_questions.py",
             "corewarding.plan", "run_corewarding-I.sh", "run_corewarding-II.sh", "run_corewarding-III.sh",
             "run_baseline.sh", "evaluate.sh", "compare_runs.py"]
    for kind in kinds:
        assert any(kind in c + " " for c in commands), kind


@pytest.mark.timeout(900)
def test_the_walkthrough_runs_top_to_bottom(shared_data, tiny_model_path, tmp_path):
    root = copy_of_the_repository(tmp_path / "repo")
    walk = Walkthrough(root, shared_data, tiny_model_path)
    for command in walkthrough_commands():
        walk.command(command)
    run = root / "Co-rewarding-II" / "checkpoints" / "co-rewarding" / "Co-rewarding-II"
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "1"  # saved at its last step
    for name in ("base", "co-rewarding-ii"):
        assert (root / "outputs" / "eval" / name / "summary.json").exists()
