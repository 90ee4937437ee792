"""DAPO's dynamic sampling, the pure part (corewarding/trainer/dynamic_sampling.py) and its keys;
the trainer's use of it is tested in test_trainer_step_sampling.py and test_e2e_resume.py."""

from __future__ import annotations

import pytest
import torch

from corewarding.batch import Batch
from corewarding.config import ConfigError, compose_config, load_config
from corewarding.trainer.dynamic_sampling import concat_rollouts, groups_with_spread, kept_units, rows_of


def test_groups_with_spread_follow_verl():
    """verl keeps a group when np.std > 0 or it has one rollout: a, d kept; b (all 1), c (all 0) not."""
    values = [1, 0, 1, 1, 0, 0, 0.5, 0.25]
    groups = ["a", "a", "b", "b", "c", "c", "a", "d"]
    assert groups_with_spread(values, groups) == {"a", "d"}


def test_a_unit_is_kept_when_any_of_its_groups_varies():
    """Co-rewarding-I's unit is the pair: p1's original varies (kept, both groups), p2 is constant
    on both views (dropped), p3's rephrased varies (kept); first-seen order."""
    values = [0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 1, 1]
    groups = ["p3o", "p3o", "p1o", "p1o", "p2o", "p2o", "p2r", "p2r", "p1r", "p1r", "p3r", "p3o"]
    units = [g[:2] for g in groups]
    assert kept_units(values, groups, units) == (["p3", "p1"], 1)
    assert rows_of(units, ["p1"]) == [2, 3, 8, 9]


def test_concat_rollouts_left_pads_the_prompt_side():
    r = 2  # response width
    narrow = Batch({"input_ids": torch.tensor([[7, 8, 9]]), "attention_mask": torch.tensor([[1, 1, 1]]),
                    "position_ids": torch.tensor([[0, 1, 2]]), "responses": torch.tensor([[8, 9]])}, {"uid": ["a"]})
    wide = Batch({"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.tensor([[1, 1, 1, 1]]),
                  "position_ids": torch.tensor([[0, 1, 2, 3]]), "responses": torch.tensor([[7, 8]])}, {"uid": ["b"]})
    both = concat_rollouts([narrow, wide], pad_token_id=0)
    assert both.tensors["input_ids"].tolist() == [[0, 7, 8, 9], [5, 6, 7, 8]]
    assert both.tensors["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert both.tensors["position_ids"].tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]
    assert both.tensors["responses"].shape == (2, r) and both.rows["uid"] == ["a", "b"]


def test_gen_batch_size_needs_filter_groups(tmp_path):
    common = ["actor_rollout_ref.rollout.name=hf", "trainer.device=cpu", "trainer.n_gpus_per_node=2",
              "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4"]
    with pytest.raises(ConfigError, match=r"data.gen_batch_size=8 differs .*algorithm.filter_groups.enable=true"):
        load_config(compose_config(common + ["data.gen_batch_size=8"]), check_paths=False)
    with pytest.raises(ConfigError, match=r"data.gen_batch_size=3 = 3 prompts does not divide by the 2 workers"):
        load_config(compose_config(common + ["data.gen_batch_size=3", "algorithm.filter_groups.enable=true"]),
                    check_paths=False)
    config = load_config(compose_config(common + ["data.gen_batch_size=8", "algorithm.filter_groups.enable=true",
                                                  "algorithm.filter_groups.max_num_gen_batches=-1"]), check_paths=False)
    assert config.data.gen_batch_size == 8 and config.algorithm.filter_groups.limit is None
    assert load_config(compose_config(common), check_paths=False).data.gen_batch_size == 4  # follows train_batch_size
