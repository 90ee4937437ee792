"""The layout of a run folder's checkpoints, and which checkpoint is a run's latest.

One owner for the folder and file names that the trainer (writing and resuming), the workers (their
files inside a checkpoint), export, eval and the scripts share (the driver's own `trainer_state.json`
is named by `trainer/checkpoint.py`, the one file only it reads)::

    <run>/                                  trainer.default_local_dir
      latest_checkpointed_iteration.txt     N of the newest complete checkpoint, written after its folder
      global_step_<N>.tmp/                  a save in progress: never a checkpoint
      global_step_<N>/                      one checkpoint
        trainer_state.json                  the driver's state, written last (trainer/checkpoint.py)
        actor/                              HF folder of the policy
          optim/                            state.json and rank_<r>.safetensors: optimizer and scheduler
        ref/                                the reference / EMA teacher, once it differs from the model folder
        rng/                                rank_<r>.json: each rank's RNG states

The latest checkpoint of a run folder (`latest_step_dir`) is the one rule that resume
(`trainer.resume_mode=auto`) and export / eval of a run folder both follow: the step that
`latest_checkpointed_iteration.txt` names. A run folder with `global_step_<N>/` folders but no latest
file is refused, not guessed at: a save writes that file last, so its absence means a save did not
finish publishing, or someone deleted or failed to copy the file; resuming or exporting the newest
folder could pick a checkpoint the run never published (and resume would then train on from it).
The error names the folder and the way out: name a `global_step_<N>/` folder itself, or write its
step into the latest file. A run folder with neither (a fresh run, or one whose first save crashed
and left only a `.tmp` folder) has no checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

from corewarding.storage import CheckpointError

LATEST_FILE = "latest_checkpointed_iteration.txt"
STEP_PREFIX = "global_step_"
STAGING_SUFFIX = ".tmp"
ACTOR_DIR = "actor"  # the policy, an HF folder
OPTIM_DIR = "optim"  # inside actor/
REF_DIR = "ref"
RNG_DIR = "rng"
OPTIM_STATE_FILE = "state.json"  # actor/optim/: param groups, scheduler, counters, what was saved

_STEP_NAME = re.compile(rf"^{STEP_PREFIX}(\d+)$")


# ----------------------------------------------------------------------------------- step folders
def step_name(step: int) -> str:
    """The folder name of the checkpoint of `step`: global_step_<step>."""
    return f"{STEP_PREFIX}{int(step)}"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / step_name(step)


def staging_dir(root: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` is written before its rename publishes it."""
    return Path(root) / (step_name(step) + STAGING_SUFFIX)


def parse_step(name: str) -> int | None:
    """The step of a checkpoint folder's name; None for any other name (a `.tmp` one included)."""
    match = _STEP_NAME.match(name)
    return int(match.group(1)) if match else None


def step_folders(root: str | Path, staging: bool = False) -> list[Path]:
    """The `global_step_<N>` folders under `root`, by ascending step; with `staging`, the `.tmp`
    folders of unfinished saves too (what deleting a run's checkpoints must remove)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        name = path.name.removesuffix(STAGING_SUFFIX) if staging else path.name
        if path.is_dir() and (step := parse_step(name)) is not None:
            found.append((step, path.name, path))
    return [path for _, _, path in sorted(found)]


def checkpoint_steps(root: str | Path) -> list[int]:
    """The steps of the `global_step_<N>` folders under `root`, ascending (`.tmp` ones excluded)."""
    return [step for path in step_folders(root) if (step := parse_step(path.name)) is not None]


def describe_steps(steps: list[int]) -> str:
    """'global_step_40' or 'global_step_40 .. global_step_50' for the ascending `steps`."""
    return step_name(steps[0]) + (f" .. {step_name(steps[-1])}" if len(steps) > 1 else "")


# ----------------------------------------------------------------------------------- inside a checkpoint
def actor_dir(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / ACTOR_DIR


def optim_dir(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / ACTOR_DIR / OPTIM_DIR


def ref_dir(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / REF_DIR


def rng_dir(checkpoint: str | Path) -> Path:
    return Path(checkpoint) / RNG_DIR


def optim_shard_file(checkpoint: str | Path, rank: int) -> Path:
    """Rank `rank`'s optimizer shard."""
    return optim_dir(checkpoint) / f"rank_{int(rank)}.safetensors"


def rng_file(checkpoint: str | Path, rank: int) -> Path:
    """Rank `rank`'s RNG states."""
    return rng_dir(checkpoint) / f"rank_{int(rank)}.json"


# ----------------------------------------------------------------------------------- the latest checkpoint
def latest_step_dir(root: str | Path) -> Path | None:
    """The checkpoint that `root`'s latest file names, or None when `root` holds no checkpoint at all.

    Raises `CheckpointError` when the latest file is missing but `global_step_<N>/` folders exist,
    is not a step number, or names a folder that does not exist (see the module docstring)."""
    root = Path(root)
    latest = root / LATEST_FILE
    if not latest.is_file():
        steps = checkpoint_steps(root)
        if not steps:
            return None
        raise CheckpointError(
            f"{root} holds checkpoints ({describe_steps(steps)}) but no {LATEST_FILE}, which a save writes "
            f"last (a save did not finish, or the file was deleted): name a checkpoint folder itself (e.g. "
            f"{step_dir(root, steps[-1])}), or write its step into {latest}"
        )
    text = latest.read_text(encoding="utf-8").strip()
    if not text.isdigit():
        raise CheckpointError(f"{latest}: expected a step number, found {text[:40]!r}; fix or delete it")
    path = step_dir(root, int(text))
    if not path.is_dir():
        raise CheckpointError(
            f"{latest} names step {int(text)}, i.e. {path.name}, which does not exist; write the step of a "
            "checkpoint that exists into it (or delete it when none is left)"
        )
    return path
