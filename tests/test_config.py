"""Configuration checks that end bad input with one-line errors before Ray starts (the entry
point with exit status 2), and the verl keys read into typed values, warned about or ignored."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from corewarding.data import DataError
from corewarding.config import ConfigError, compose_config, load_config
from config_overrides import CPU, NO_PATHS, base
from config_overrides import data, model  # fixture


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.train_batch_size=3"], "does not divide by the 2 workers"),
        (["reward_model.reward_manager=co_reward", "data.train_batch_size=3", "actor_rollout_ref.actor.ppo_mini_batch_size=3"],
         "data.train_batch_size=3 pairs (each worker trains both views of whole pairs) does not divide by the 2 workers"),
        (["reward_model.reward_manager=co_reward", "actor_rollout_ref.rollout.n=1", "actor_rollout_ref.actor.ppo_mini_batch_size=1"],
         "ppo_mini_batch_size x rollout.n = 1 rollouts of each view does not divide by the 2 workers"),
        (["actor_rollout_ref.rollout.n=1", "actor_rollout_ref.actor.ppo_mini_batch_size=1"],
         "ppo_mini_batch_size x rollout.n = 1 rollouts does not divide by the 2 workers"),
        (["data.train_batch_size=6", "actor_rollout_ref.actor.ppo_mini_batch_size=4"], "does not divide by actor_rollout_ref.actor.ppo_mini_batch_size=4"),
        (["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3"], "ppo_micro_batch_size_per_gpu=3"),
        (["actor_rollout_ref.actor.ppo_mini_batch_size=8"], "larger than data.train_batch_size"),
        (["reward_model.reward_manager=bogus"], "reward_model.reward_manager='bogus' is unknown"),
        (["actor_rollout_ref.model.path=/nonexistent/model"], "no such model folder"),
        (["data.train_files=/nonexistent/train.parquet"], "data.train_files: /nonexistent/train.parquet does not exist"),
        (["reward_model.reward_manager=co_reward", "data.train_aug_files=null"], "needs data.train_aug_files"),
        (["algorithm.adv_estimator=gae"], "algorithm.adv_estimator='gae' is not one of ['grpo', 'co_reward', 'co_rewarding_grpo']"),
        (["algorithm.use_kl_in_reward=True"], "use_kl_in_reward"),
        (["trainer.resume_mode=resume_path"], "needs trainer.resume_from_path"),
        (["actor_rollout_ref.model.path=Qwen/Qwen3-8B-Base"], "looks like a hub id: download it first"),
        (["actor_rollout_ref.rollout.tensor_model_parallel_size=2"], "needs rollout.name=vllm on GPUs"),
        (["actor_rollout_ref.rollout.tensor_model_parallel_size=0"], "must be a positive integer"),
        (["actor_rollout_ref.rollout.response_length=64"], "differs from data.max_response_length"),
        (["data.p=1.5"], "data.p=1.5 must be a number in [0, 1]"),
        (["data.p=often"], "data.p='often' is not a number"),
        (["reward_model.gt_scorer=exact"], "reward_model.gt_scorer='exact' is not one of ['math_verify', 'hendrycks']"),
        (["actor_rollout_ref.rollout.val_kwargs.n=0"], "actor_rollout_ref.rollout.val_kwargs.n=0 must be a positive integer"),
        (["actor_rollout_ref.rollout.val_kwargs.temperature=-1"], "val_kwargs.temperature=-1.0 must be a number in [0, inf)"),
        (["actor_rollout_ref.rollout.val_kwargs.temperature=hot"], "val_kwargs.temperature='hot' is not a number"),
        (["reward_model.overlong_buffer.enable=true", "reward_model.overlong_buffer.len=4096"],
         "reward_model.overlong_buffer.len=4096 is longer than data.max_response_length=3072"),
        (["reward_model.overlong_buffer.enable=true", "reward_model.overlong_buffer.len=0"],
         "reward_model.overlong_buffer.len=0 must be a positive integer"),
        (["algorithm.rollout_correction.rollout_is=token"], "rollout_is=token needs the sampler's log-probs: use actor_rollout_ref.rollout.name=vllm"),
        (["+algorithm.rollout_correction.rollout_rs=token_k1"], "algorithm.rollout_correction.rollout_rs is not a key"),  # not silently ignored
    ],
)
def test_config_errors(extra, message, model, data):
    with pytest.raises(ConfigError) as info:
        load_config(compose_config(base(model, data) + extra))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("actor_rollout_ref.actor.ppo_epochs=0", "actor_rollout_ref.actor.ppo_epochs"),  # no optimizer step, LR still moves
        ("actor_rollout_ref.actor.ppo_epochs=-1", "actor_rollout_ref.actor.ppo_epochs"),
        ("actor_rollout_ref.actor.clip_ratio=-0.2", "actor_rollout_ref.actor.clip_ratio"),
        ("actor_rollout_ref.actor.clip_ratio_low=-0.1", "actor_rollout_ref.actor.clip_ratio_low"),
        ("actor_rollout_ref.actor.clip_ratio_high=0", "actor_rollout_ref.actor.clip_ratio_high"),
        ("actor_rollout_ref.actor.entropy_coeff=nan", "actor_rollout_ref.actor.entropy_coeff"),
        ("actor_rollout_ref.rollout.teacher_n=0", "actor_rollout_ref.rollout.teacher_n"),  # was silently n
        ("actor_rollout_ref.actor.loss_agg_mode=token_mean", "actor_rollout_ref.actor.loss_agg_mode"),
        ("actor_rollout_ref.actor.kl_loss_type=low-var-kl", "actor_rollout_ref.actor.kl_loss_type"),
        ("reward_model.vote_equivalence=maths", "reward_model.vote_equivalence"),
        ("actor_rollout_ref.actor.clip_ratio_c=1.0", "actor_rollout_ref.actor.clip_ratio_c"),
        ("actor_rollout_ref.rollout.temperature=0", "actor_rollout_ref.rollout.temperature"),
        ("actor_rollout_ref.rollout.temperature=-1", "actor_rollout_ref.rollout.temperature"),
        ("actor_rollout_ref.rollout.top_p=1.5", "actor_rollout_ref.rollout.top_p"),
        ("actor_rollout_ref.rollout.top_k=-2", "actor_rollout_ref.rollout.top_k"),
        ("actor_rollout_ref.rollout.val_kwargs.n=0", "actor_rollout_ref.rollout.val_kwargs.n"),
        ("actor_rollout_ref.rollout.val_kwargs.top_p=0", "actor_rollout_ref.rollout.val_kwargs.top_p"),
        ("actor_rollout_ref.rollout.gpu_memory_utilization=1.5", "actor_rollout_ref.rollout.gpu_memory_utilization"),
        ("actor_rollout_ref.actor.optim.lr=abc", "actor_rollout_ref.actor.optim.lr"),  # was a ValueError traceback
        ("actor_rollout_ref.actor.optim.eps=0", "actor_rollout_ref.actor.optim.eps"),
        ("actor_rollout_ref.actor.optim.betas=[0.9]", "actor_rollout_ref.actor.optim.betas"),
        ("actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=1.5", "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio"),
        ("actor_rollout_ref.actor.kl_loss_coef=-0.1", "actor_rollout_ref.actor.kl_loss_coef"),
        ("actor_rollout_ref.actor.grad_clip=-1", "actor_rollout_ref.actor.grad_clip"),
        ("actor_rollout_ref.ref.sliding_average.alpha_start=x", "actor_rollout_ref.ref.sliding_average.alpha_start"),
        ("data.train_max_samples=0", "data.train_max_samples"),
        ("trainer.max_actor_ckpt_to_keep=0", "trainer.max_actor_ckpt_to_keep"),
        ("trainer.save_freq=1.5", "trainer.save_freq"),
        ("actor_rollout_ref.actor.loss_scale_factor=0", "actor_rollout_ref.actor.loss_scale_factor"),
        ("algorithm.rollout_correction.rollout_is=geometric", "algorithm.rollout_correction.rollout_is"),
        ("algorithm.rollout_correction.rollout_is_threshold=0", "algorithm.rollout_correction.rollout_is_threshold"),
        ("reward_model.overlong_buffer.penalty_factor=-1", "reward_model.overlong_buffer.penalty_factor"),
        ("actor_rollout_ref.actor.policy_loss.loss_mode=sapo", "actor_rollout_ref.actor.policy_loss.loss_mode"),
        ("actor_rollout_ref.actor.kl_loss_type=k4+", "actor_rollout_ref.actor.kl_loss_type"),
        ("actor_rollout_ref.actor.clip_ratio_low=10", "actor_rollout_ref.actor.clip_ratio_low"),  # >= 1: CISPO's only
    ],
)
def test_values_that_would_train_wrong_are_config_errors(override, key):
    """Found before Ray starts, as one line naming the key (not after the models load, or never)."""
    with pytest.raises(ConfigError) as info:
        load_config(compose_config(NO_PATHS + [override]), check_paths=False)
    message = str(info.value)
    assert message.startswith(key + "=") and "\n" not in message, message


def test_loss_toolbox_keys_read_as_verl_writes_them():
    """Off by default; verl's DAPO / rollout-correction / Dr. GRPO overrides read into typed values."""
    off = load_config(compose_config(NO_PATHS + ["reward_model.overlong_buffer.len=0"]), check_paths=False)  # verl's recipe default
    assert not off.reward_model.overlong_buffer.enable and off.algorithm.rollout_correction.rollout_is is None
    assert (off.actor_rollout_ref.actor.loss_agg_mode, off.actor_rollout_ref.actor.mask_truncated_completions) == ("token-mean", False)
    on = ["actor_rollout_ref.rollout.name=vllm", "reward_model.overlong_buffer.enable=True", "reward_model.overlong_buffer.len=512",
          "algorithm.rollout_correction.rollout_is=sequence", "algorithm.rollout_correction.rollout_is_threshold=5",
          "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm", "actor_rollout_ref.actor.loss_scale_factor=4096",
          "actor_rollout_ref.actor.mask_truncated_completions=true"]
    cfg = load_config(compose_config(NO_PATHS + on), check_paths=False)
    actor, correction = cfg.actor_rollout_ref.actor, cfg.algorithm.rollout_correction
    assert cfg.reward_model.overlong_buffer.len == 512 and (correction.rollout_is, correction.rollout_is_threshold) == ("sequence", 5.0)
    assert (actor.loss_agg_mode, actor.loss_scale_factor, actor.mask_truncated_completions) == ("seq-mean-token-sum-norm", 4096, True)


def test_policy_loss_keys_read_as_verl_writes_them():
    """actor.policy_loss.loss_mode (vanilla by default), +preset=gspo's clip range, verl's CISPO clip_ratio_low=10
    (no lower clip) and the straight-through KL reach the update's settings; CPU workers reduce gradients once
    per mini-batch, GPU workers after every backward."""
    from types import SimpleNamespace

    import torch

    from corewarding.workers.fsdp_worker import ActorRolloutRefWorker

    def ppo_settings(*overrides: str, device: str = "cpu"):
        cfg = load_config(compose_config(NO_PATHS + list(overrides)), check_paths=False)
        worker = SimpleNamespace(config=cfg, _forward_settings=lambda: None, device=torch.device(device))
        return ActorRolloutRefWorker._ppo_settings(worker)

    plain = ppo_settings()
    assert (plain.loss_mode, plain.clip_low, plain.clip_high, plain.loss_agg_mode) == ("vanilla", 0.2, 0.2, "token-mean")
    assert plain.defer_grad_sync and not ppo_settings(device="cuda").defer_grad_sync
    gspo = ppo_settings("+preset=gspo", "actor_rollout_ref.actor.kl_loss_type=k3+")
    assert (gspo.loss_mode, gspo.clip_low, gspo.clip_high, gspo.loss_agg_mode) == ("gspo", 3e-4, 4e-4, "seq-mean-token-mean")
    assert gspo.kl_loss_type == "k3+"
    assert ppo_settings("+preset=gspo", "actor_rollout_ref.actor.clip_ratio_high=1e-3").clip_high == 1e-3  # overrides win
    cispo = ppo_settings("actor_rollout_ref.actor.policy_loss.loss_mode=cispo", "actor_rollout_ref.actor.clip_ratio_low=10")
    assert (cispo.loss_mode, cispo.clip_low, cispo.clip_high) == ("cispo", 10.0, 0.2)


def test_gspo_with_a_token_level_clip_range_warns(caplog):
    load_config(compose_config(NO_PATHS + ["+preset=gspo"]), check_paths=False)
    assert "loss_mode=gspo" not in caplog.text
    load_config(compose_config(NO_PATHS + ["actor_rollout_ref.actor.policy_loss.loss_mode=gspo"]), check_paths=False)
    assert "loss_mode=gspo with clip_ratio_low=0.2, clip_ratio_high=0.2" in caplog.text and "+preset=gspo" in caplog.text


def test_greedy_validation_and_defaults_pass():
    cfg = load_config(compose_config(NO_PATHS + ["actor_rollout_ref.rollout.val_kwargs.temperature=0"]), check_paths=False)
    assert cfg.actor_rollout_ref.rollout.teacher_n == 2  # null: rollout.n


def test_ignored_verl_keys_warn_once(monkeypatch, caplog):
    from corewarding.config import loading as config_module

    monkeypatch.setattr(config_module, "_WARNED_IGNORED", set())
    overrides = NO_PATHS + ["actor_rollout_ref.model.use_fused_kernels=True", "actor_rollout_ref.hybrid_engine=False"]
    for _ in range(2):
        load_config(compose_config(overrides), check_paths=False)
    warned = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warned) == 2
    assert any(m.startswith("actor_rollout_ref.model.use_fused_kernels=True is accepted for verl compatibility but ignored") for m in warned)
    assert any(m.startswith("actor_rollout_ref.hybrid_engine=False") for m in warned)
    caplog.clear()
    load_config(compose_config(NO_PATHS + ["actor_rollout_ref.model.use_fused_kernels=False"]), check_paths=False)
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]  # the default value: silent


def test_missing_model_path_cli(tmp_path, data):
    """The entry point ends bad input with one `error:` line and exit status 2 (no Ray started)."""
    proc = subprocess.run(
        [sys.executable, "-m", "corewarding.main", "actor_rollout_ref.model.path=/nonexistent/model",
         f"data.train_files={data['train']}", f"data.val_files={data['val']}", *CPU,
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "actor_rollout_ref.model.path=/nonexistent/model" in errors[0]


def test_parquet_without_columns(tiny_model_path, data, tmp_path):
    from corewarding.trainer.run import run_training

    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"question": ["1+1?"] * 8, "answer": ["2"] * 8}).to_parquet(bad)
    with pytest.raises(DataError, match=r"missing column\(s\) \['prompt'"):
        run_training(compose_config(base(tiny_model_path, data, out=tmp_path) + [f"data.train_files={bad}"]))
