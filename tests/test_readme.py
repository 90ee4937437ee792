"""The README's commands stay true where a test can tell: the steps in order, the rephrased file the
rewrite step writes is the one the run script reads, the baselines' command runs their presets,
and every configuration key the user docs name exists. The README's longer sections live in docs/
(training.md, results.md, ...): their checks read them there."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from corewarding.config import compose_config, load_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
TRAINING = (REPO / "docs" / "training.md").read_text()  # the README's run-script details, moved
RESULTS = (REPO / "docs" / "results.md").read_text()  # the README's "Does it learn?", moved
sys.path.insert(0, str(REPO / "scripts"))
from config_reference import yaml_keys  # noqa: E402

KEYS = [key for key, _, _ in yaml_keys()]
SECTIONS = ("data", "actor_rollout_ref", "algorithm", "reward_model", "custom_reward_function", "trainer", "ray_init")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "data" / "README.md",
        REPO / "Co-rewarding-I" / "README.md", REPO / "Co-rewarding-II" / "README.md"]


def _gpu_section() -> str:
    return README.split("## Training on GPUs", 1)[1].split("\n## ", 1)[0]


def _command(text: str, program: str) -> list[str]:
    """The words of the (backslash-continued) command line in `text` that runs `program`."""
    joined = text.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if program in line)
    return shlex.split(line.split("#", 1)[0])


def _option(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def test_the_gpu_steps_come_in_order():
    """install, data, rephrase, run, evaluate: a reader going top to bottom has each input before its use."""
    section = _gpu_section()
    steps = ["install_env.sh", "preprocess.py math", "rewrite_questions.py", "run_corewarding-I.sh", "evaluate.sh"]
    positions = [section.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), dict(zip(steps, positions))


def test_the_rewrite_step_writes_what_the_run_script_reads():
    words = _command(_gpu_section(), "rewrite_questions.py")
    preprocess = _command(_gpu_section(), "preprocess.py math")
    data_dir = _option(preprocess, "--output_dir")
    assert _option(words, "--input_path") == f"{data_dir}/train.parquet"
    script = (REPO / "Co-rewarding-I" / "run_corewarding-I.sh").read_text()
    reads = {name: (REPO / "Co-rewarding-I" / re.search(rf"{name}=\${{{name}:-([^}}]+)}}", script)[1]).resolve()
             for name in ("TRAIN_FILES", "TRAIN_AUG_FILES")}
    assert reads["TRAIN_AUG_FILES"] == (REPO / _option(words, "--output_parquet")).resolve()
    assert reads["TRAIN_FILES"] == (REPO / _option(words, "--input_path")).resolve()
    import rewrite_questions  # the command line's own default names agree too

    defaults = rewrite_questions.parse_args(["--model_path", "m"])
    assert defaults.output_parquet == _option(words, "--output_parquet")
    assert defaults.output_original_parquet == _option(words, "--output_original_parquet")


@pytest.mark.parametrize("method, name", [("gt", "gt"), ("majority_voting", "majority_voting"),
                                          ("self_certainty", "self_certainty"), ("entropy", "entropy")])
def test_each_baseline_has_a_preset_and_a_command(method, name, tmp_path):
    from corewarding.data import write_builtin_dataset

    data = write_builtin_dataset(tmp_path, n_train=4, n_val=2, seed=0)
    env = {**os.environ, "DRY_RUN": "1", "METHOD": method, "LLM_PATH": "/models/m", "NUM_GPUS": "8",
           "TRAIN_FILES": str(data["train"]), "VAL_FILES": str(data["val"])}
    lines = subprocess.run(["bash", str(REPO / "baselines" / "run_baseline.sh")], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert lines[0] == f"+method={method}"
    cfg = load_config(compose_config(lines + ["trainer.device=cpu", "actor_rollout_ref.rollout.name=hf"]), check_paths=False)
    assert cfg.method.name == name and cfg.trainer.experiment_name == f"baseline-{method}"
    actor = cfg.actor_rollout_ref.actor
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.005 and actor.optim.lr == 3e-6
    assert cfg.data.train_batch_size == 128 and cfg.actor_rollout_ref.rollout.n == 8 and not cfg.data.train_aug_files
    bad = subprocess.run(["bash", str(REPO / "baselines" / "run_baseline.sh")], env={**env, "METHOD": "co_reward"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "choose gt, majority_voting, self_certainty or entropy" in bad.stderr


def _named_keys(text: str) -> set[str]:
    """Dotted configuration keys in backticks (`a.b.c` or `a.b.c=value`), of the trainer's sections."""
    found = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for word in span.split():
            key = word.split("=", 1)[0].lstrip("+")
            if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key) and key.split(".")[0] in SECTIONS:
                found.add(key)
    return found


def test_every_key_the_docs_name_exists():
    known = set(KEYS) | {".".join(key.split(".")[:i]) for key in KEYS for i in range(1, key.count(".") + 1)}
    free = tuple(f"{key}." for key, value, _ in yaml_keys() if value == "{}")  # dicts of the user's own keys
    missing = {str(page.relative_to(REPO)): sorted(k for k in _named_keys(page.read_text()) - known if not k.startswith(free))
               for page in DOCS}
    missing = {page: keys for page, keys in missing.items() if keys}
    assert not missing, missing
    assert len(_named_keys(TRAINING)) > 10  # the scan finds the keys (the README's moved to docs/training.md)


def test_the_replication_tables_are_the_committed_ones():
    """Every table row of "Does it learn?" (docs/results.md) is a row of figs/replication.md, so redrawing
    that table (scripts/seed_table.py) without the page fails here instead of leaving old numbers behind."""
    section = RESULTS
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    committed = set((REPO / "figs" / "replication.md").read_text().splitlines())
    assert len(rows) >= 8 and [row for row in rows if row not in committed] == []


def test_the_controls_numbers_are_the_committed_runs():
    """docs/results.md's validation accuracies of the two controls are those of their records."""
    for label, run in (("Random reward", "random"), ("Format reward", "format")):
        line = next(line for line in RESULTS.splitlines() if line.startswith(f"- {label}: "))
        stated = [float(v) for v in re.findall(r"\d\.\d{3}", line.split(". ", 1)[0])]
        metrics = [json.loads(row) for row in (REPO / "figs" / "runs" / "controls" / run / "metrics.jsonl").open()]
        recorded = [round(m["val/acc"], 3) for m in metrics if "val/acc" in m]
        assert stated == recorded, (label, stated, recorded)
