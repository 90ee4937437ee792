"""What the configuration tests compose their overrides from: CPU settings, a folder that looks like
a HF model, the built-in data, and `base`, a small run that loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from corewarding.data import write_builtin_dataset


REPO = Path(__file__).resolve().parents[1]


CPU = ["trainer.device=cpu", "actor_rollout_ref.rollout.name=hf"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_builtin_dataset(tmp_path_factory.mktemp("data"), n_train=16, n_val=4)


@pytest.fixture
def model(tmp_path):
    """A folder that looks like a HF model (config checks only look for config.json)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def base(model, data, method="naive", out=None) -> list[str]:
    out = out or model.parent
    return CPU + [
        f"reward_model.reward_manager={method}", f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data['train']}", f"data.train_aug_files={data['train_rewrite']}", f"data.val_files={data['val']}",
        "data.train_batch_size=4", "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "trainer.n_gpus_per_node=2",
        f"trainer.default_local_dir={out / 'ckpt'}",
    ]


NO_PATHS = CPU + ["trainer.n_gpus_per_node=2", "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                  "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.n=2"]
