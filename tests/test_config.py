"""Configuration, entry point and driver-side pieces that need no Ray: override parsing (the
release's exact lists), checks with one-line errors, checkpoint folders, metric files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from corewarding.data import DataError, write_builtin_dataset
from corewarding.config import ConfigError, compose_config, load_config
from corewarding.methods import BUILTIN, METHODS, resolve_method
from corewarding.trainer import CheckpointError
from corewarding.trainer import checkpoint as ckpt
from corewarding.trainer.ray_trainer import balanced_order
from corewarding.trainer.tracking import Tracker, dump_rollouts, format_console, read_metrics
from release_overrides import RELEASE_I, RELEASE_II, RELEASE_III, release

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


# ----------------------------------------------------------------------------- overrides
def test_release_I_overrides_verbatim(model, data):
    cfg = load_config(compose_config(release(RELEASE_I, train=data["train"], aug=data["train_rewrite"], val=data["val"], model=model) + CPU))
    assert cfg.method.name == "co_rewarding_i"
    assert cfg.trainer.logger == ("console", "wandb")
    assert cfg.data.truncation == "error" and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.005
    assert cfg.data.train_files == (str(data["train"].resolve()),)
    assert not cfg.actor_rollout_ref.ref.sliding_average.enable


def test_release_II_overrides_verbatim(model, data, caplog):
    """The release writes the EMA weight on the policy (0.01 -> 1e-5): read as such, with a warning."""
    overrides = release(RELEASE_II, train=data["train"], val=data["val"], model=model) + CPU
    cfg = load_config(compose_config(overrides))
    sa = cfg.actor_rollout_ref.ref.sliding_average
    assert sa.enable and sa.alpha_start == pytest.approx(0.99) and sa.alpha_end == pytest.approx(1 - 1e-5)
    assert sa.parametrisation == "paper"
    assert "read as the release's weight on the policy" in caplog.text
    assert cfg.trainer.rollout_data_dir.endswith("rollout_log/x/ref")  # the last of a repeated key wins
    assert cfg.actor_rollout_ref.rollout.teacher_n == 8
    assert cfg.method.name == "co_rewarding_ii" and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.001


def test_release_III_overrides_verbatim(model, data, caplog):
    """The release's III script: accepted key for key, read as Co-rewarding-III (both views, the
    teacher votes on the twin, losses summed), the EMA weight written on the policy read as such."""
    overrides = release(RELEASE_III, train=data["train"], aug=data["train_rewrite"], val=data["val"], model=model) + CPU
    cfg = load_config(compose_config(overrides))
    assert cfg.method.name == "co_rewarding_iii" and cfg.algorithm.adv_estimator == "co_rewarding_grpo"
    assert cfg.roles.voters == "teacher" and cfg.roles.label_view == "twin" and cfg.roles.policy_views == "both"
    sa = cfg.actor_rollout_ref.ref.sliding_average
    assert sa.enable and sa.alpha_start == pytest.approx(0.99) and sa.alpha_end == pytest.approx(1 - 1e-5)
    assert cfg.actor_rollout_ref.actor.co_reward_loss == "per_view" and cfg.actor_rollout_ref.rollout.teacher_n == 8
    dumps = {key: getattr(cfg.trainer, key) for key in ("rollout_data_dir", "rollout_data_dir_aug", "ref_rollout_data_dir",
                                                         "ref_rollout_data_dir_aug")}
    assert [d.split("rollout_log/")[1] for d in dumps.values()] == ["x_ori/policy", "x_aug/policy", "x_ori/ref", "x_aug/ref"]
    assert "only changes co_rewarding_II" not in caplog.text  # use_aug=True is what the release sets for III


def test_method_roles_table():
    """The built-in methods as rows of one table: whose rollouts vote, on which view, for which views."""
    rows = {name: METHODS[name].roles() for name in BUILTIN}  # not the methods other tests registered
    table = {name: (r.voters, r.label_view, r.policy_views) for name, r in rows.items()}
    assert table == {
        "gt": (None, "same", "original"), "self_certainty": (None, "same", "original"), "entropy": (None, "same", "original"),
        "majority_voting": ("policy", "same", "original"), "co_rewarding_i": ("policy", "twin", "both"),
        "co_rewarding_ii": ("teacher", "same", "original"), "co_rewarding_iii": ("teacher", "twin", "both"),
        "random": (None, "same", "original"), "format": (None, "same", "original"),
        "incorrect": (None, "same", "original"), "empo": ("policy", "same", "original"),
    }
    aug = resolve_method("co_rewarding_ii").roles(use_aug=True)
    assert (aug.voters, aug.label_view, aug.policy_views) == ("teacher", "twin", "one")
    assert aug.row_roles(["original", "original", "rephrased", "rephrased"], [False, True, False, True]) == (
        [True, False, False, True], [False, True, True, False])  # a swapped pair gives the policy its rephrased view
    assert resolve_method("co_rewarding_iii").roles(use_aug=True) == rows["co_rewarding_iii"]


@pytest.mark.parametrize(
    "parametrisation, alphas, teacher_weights",
    [("paper", (0.01, 1e-5), (0.01, 1e-5)), ("release", (0.01, 0.001), (0.99, 0.999)),
     ("auto", (0.99, 0.9999), (0.99, 0.9999)), ("auto", (0.2, 0.7), (0.2, 0.7))],
)
def test_ema_parametrisation(parametrisation, alphas, teacher_weights, model, data):
    cfg = load_config(compose_config(base(model, data, "co_rewarding_II") + [
        f"actor_rollout_ref.ref.sliding_average.parametrisation={parametrisation}",
        f"actor_rollout_ref.ref.sliding_average.alpha_start={alphas[0]}",
        f"actor_rollout_ref.ref.sliding_average.alpha_end={alphas[1]}"]))
    sa = cfg.actor_rollout_ref.ref.sliding_average
    assert (sa.alpha_start, sa.alpha_end) == pytest.approx(teacher_weights)


SCRIPTS = ["Co-rewarding-I/run_corewarding-I.sh", "Co-rewarding-II/run_corewarding-II.sh",
           "Co-rewarding-III/run_corewarding-III.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_run_scripts_parse(script, model, data):
    env = {**os.environ, "DRY_RUN": "1", "LLM_PATH": str(model), "NUM_GPUS": "8", "TRAIN_FILES": str(data["train"]),
           "TRAIN_AUG_FILES": str(data["train_rewrite"]), "VAL_FILES": str(data["val"])}
    lines = subprocess.run(["bash", str(REPO / script), "trainer.total_epochs=1"], env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert lines[-1] == "trainer.total_epochs=1"  # extra arguments come last and win
    assert lines[0].startswith("+method=co_rewarding_i")  # the paper's settings come from the method preset
    assert compose_config(lines[:-1]).trainer.total_epochs == 3  # the paper's 3 epochs
    assert len(lines) < 20  # the scripts set only what a user sets; the rest is the preset's
    cfg = load_config(compose_config(lines + ["trainer.device=cpu", "actor_rollout_ref.rollout.name=hf"]))
    assert cfg.data.train_batch_size == 128 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.actor_rollout_ref.actor.optim.lr == 3e-6 and cfg.trainer.total_epochs == 1
    assert cfg.data.max_prompt_length == 512 and cfg.data.max_response_length == 3072
    actor = cfg.actor_rollout_ref.actor
    assert actor.ppo_mini_batch_size == 128 and actor.ppo_micro_batch_size_per_gpu == (4 if "III" in script else 8)
    assert actor.optim.warmup_style == "cosine" and actor.optim.lr_warmup_steps_ratio == 0.1
    assert actor.use_kl_loss and actor.kl_loss_type == "low_var_kl" and actor.entropy_coeff == 0
    assert cfg.actor_rollout_ref.rollout.temperature == 1.0 and cfg.actor_rollout_ref.rollout.val_kwargs.temperature == 0.8
    assert cfg.trainer.n_gpus_per_node == 8
    if "III" in script:  # the release's III script: 0.01 -> 1e-5 on the policy, the two views' losses summed
        assert cfg.method.name == "co_rewarding_iii" and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.001
        sa = cfg.actor_rollout_ref.ref.sliding_average
        assert (sa.alpha_start, sa.alpha_end, sa.enable, sa.update_interval) == (0.99, 0.99999, True, 1)
        assert cfg.roles.policy_views == "both" and cfg.roles.voters == "teacher" and actor.co_reward_loss == "per_view"
        assert cfg.trainer.save_freq == 30 and cfg.actor_rollout_ref.rollout.teacher_n == 8
    elif "II" in script:
        assert cfg.method.name == "co_rewarding_ii" and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.001
        sa = cfg.actor_rollout_ref.ref.sliding_average
        assert (sa.alpha_start, sa.alpha_end, sa.enable) == (0.99, 0.9999, True)
    else:
        assert cfg.method.name == "co_rewarding_i" and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.005


def release_preset_values(cfg) -> tuple:
    val, actor = cfg.actor_rollout_ref.rollout.val_kwargs, cfg.actor_rollout_ref.actor
    return (cfg.data.p, cfg.reward_model.gt_scorer, cfg.reward_model.vote_equivalence, val.do_sample, val.n,
            actor.co_reward_loss, actor.loss_agg_scope)


OURS = (1.0, "math_verify", "string", True, 1, "joint", "mini_batch")
RELEASE = (1.0, "hendrycks", "string", False, 1, "per_view", "micro_batch")


def test_release_preset(model, data):
    """+preset=release selects every release behaviour at once; command-line overrides still win."""
    assert release_preset_values(load_config(compose_config(base(model, data)))) == OURS
    cfg = load_config(compose_config(base(model, data) + ["+preset=release"]))
    assert release_preset_values(cfg) == RELEASE and cfg.actor_rollout_ref.rollout.val_kwargs.temperature == 0
    cfg = load_config(compose_config(["+preset=release"] + base(model, data) + ["reward_model.gt_scorer=math_verify"]))
    assert cfg.reward_model.gt_scorer == "math_verify"


@pytest.mark.parametrize("script", SCRIPTS)
def test_run_scripts_release_exact(script, model, data):
    """RELEASE_EXACT=1: the scripts add +preset=release (and II the release's EMA end, 1e-5 on the policy)."""
    env = {**os.environ, "DRY_RUN": "1", "LLM_PATH": str(model), "NUM_GPUS": "8", "TRAIN_FILES": str(data["train"]),
           "TRAIN_AUG_FILES": str(data["train_rewrite"]), "VAL_FILES": str(data["val"]), "RELEASE_EXACT": "1"}
    lines = subprocess.run(["bash", str(REPO / script)], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert lines[0] == "+preset=release"
    cfg = load_config(compose_config(lines + CPU))
    assert release_preset_values(cfg) == RELEASE
    if "II" in script:  # II: the release's end (1e-5 on the policy); III has it anyway
        assert cfg.actor_rollout_ref.ref.sliding_average.alpha_end == 0.99999


def test_method_aliases():
    assert resolve_method("naive").name == "gt"
    assert resolve_method("co_reward").name == "co_rewarding_i" and resolve_method("co_reward").paired
    assert resolve_method("co_rewarding_II").teacher
    assert resolve_method("self_certainty").token_stats == ("self_certainty",)
    assert resolve_method("entropy").token_stats == ("entropy",) and resolve_method("co_rewarding_II").votes
    with pytest.raises(ConfigError, match="reward_model.reward_manager='foo' is unknown"):
        resolve_method("foo")


def test_teacher_defaults(model, data):
    cfg = load_config(compose_config(base(model, data, "co_rewarding_II")))
    assert cfg.actor_rollout_ref.ref.sliding_average.enable is True
    assert cfg.actor_rollout_ref.rollout.teacher_n == 2
    cfg = load_config(compose_config(base(model, data, "majority_voting")))
    assert cfg.actor_rollout_ref.ref.sliding_average.enable is False
    assert cfg.actor_rollout_ref.model.dtype == "float32"
    assert cfg.trainer.save_freq == 20  # a long run checkpoints by default (every 20 steps and at its last)


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_is_bfloat16_on_a_cpu_that_multiplies_it_natively(model, data, monkeypatch, native, expected):
    import corewarding.hardware

    monkeypatch.setattr(corewarding.hardware, "native_bf16_cpu", lambda: native)
    cfg = load_config(compose_config([*base(model, data, "majority_voting"), "actor_rollout_ref.model.dtype=auto"]))
    assert cfg.actor_rollout_ref.model.dtype == expected and cfg.actor_rollout_ref.rollout.dtype == expected
    plain = load_config(compose_config(base(model, data, "majority_voting")))
    assert plain.actor_rollout_ref.model.dtype == "float32"  # null stays the float32 reference on CPU


def test_torch_compile_is_used_where_the_machine_can_compile_and_said_off_elsewhere(monkeypatch, caplog):
    """actor.use_torch_compile (verl's key) stays as asked in the configuration; each worker decides on
    its own node (usable_torch_compile): on a CPU without a C++ compiler it runs uncompiled and its log
    says why and what is missing."""
    from corewarding.hardware import torch_compile_missing, usable_torch_compile

    overrides = NO_PATHS + ["actor_rollout_ref.actor.use_torch_compile=True"]
    assert load_config(compose_config(overrides), check_paths=False).actor_rollout_ref.actor.use_torch_compile is True
    assert load_config(compose_config(NO_PATHS), check_paths=False).actor_rollout_ref.actor.use_torch_compile is False
    assert usable_torch_compile(True, "cpu") is (torch_compile_missing("cpu") is None)
    assert usable_torch_compile(False, "cpu") is False
    monkeypatch.setenv("CXX", "no-such-compiler++")
    with caplog.at_level("WARNING"):
        assert usable_torch_compile(True, "cpu") is False
    assert "use_torch_compile=True: no C++ compiler (no-such-compiler++) on PATH, so the output head runs uncompiled" in caplog.text


def test_cpu_flags_say_which_processors_multiply_bfloat16(tmp_path):
    from corewarding.hardware import cpu_flags, native_bf16_cpu

    zen4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    icelake = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    sapphire = "flags\t\t: avx512f amx_bf16 amx_tile\n"
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert "avx512_bf16" in cpu_flags(zen4) and cpu_flags("no flags here") == frozenset()
    for text, native in ((zen4, True), (icelake, False), (sapphire, True), (graviton3, True)):
        path = tmp_path / f"cpuinfo-{native}-{len(text)}"
        path.write_text(text)
        assert native_bf16_cpu(str(path)) is native, text
    assert native_bf16_cpu(str(tmp_path / "absent")) is False


def test_the_machine_record_names_the_processor(tmp_path):
    from corewarding.hardware import cpu_model, describe_machine

    zen4 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14 96-Core Processor\nflags\t\t: fpu avx512_bf16\n"
    assert cpu_model(zen4) == "AMD EPYC 9R14 96-Core Processor" and cpu_model("no model here") == "unknown"
    path = tmp_path / "cpuinfo"
    path.write_text(zen4)
    assert describe_machine(str(path)) == {"cpu": "AMD EPYC 9R14 96-Core Processor", "cores": os.cpu_count(),
                                           "bfloat16": True}
    assert describe_machine(str(tmp_path / "absent"))["cpu"] == "unknown"


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.train_batch_size=3"], "does not divide by the 2 workers"),
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


NO_PATHS = CPU + ["trainer.n_gpus_per_node=2", "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                  "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "actor_rollout_ref.rollout.n=2"]


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


def test_corrupt_resume_dir(tiny_model_path, data, tmp_path):
    from corewarding.trainer.run import run_training

    root = tmp_path / "ckpt"
    (root / "global_step_2").mkdir(parents=True)
    (root / ckpt.LATEST_FILE).write_text("2")
    overrides = base(tiny_model_path, data, out=tmp_path) + ["trainer.resume_mode=auto"]
    with pytest.raises(CheckpointError, match="incomplete"):
        run_training(compose_config(overrides))
    (root / "global_step_2" / ckpt.STATE_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        run_training(compose_config(overrides))
    (root / ckpt.LATEST_FILE).write_text("7")
    with pytest.raises(CheckpointError, match="global_step_7, which does not exist"):
        run_training(compose_config(overrides))
    with pytest.raises(CheckpointError, match="does not exist"):
        run_training(compose_config(base(tiny_model_path, data, out=tmp_path) + [
            "trainer.resume_mode=resume_path", f"trainer.resume_from_path={tmp_path / 'nowhere'}"]))


# ----------------------------------------------------------------------------- driver pieces
def test_checkpoint_commit_and_latest(tmp_path):
    for step in (1, 2, 3):
        tmp = ckpt.begin(tmp_path, step)
        (tmp / "payload").write_text(str(step))
        ckpt.commit(tmp_path, step, tmp, {"dataloader": {"position": step}}, keep=2)
    assert ckpt.latest_dir(tmp_path) == tmp_path / "global_step_3"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["global_step_2", "global_step_3"]
    state = ckpt.read_state(tmp_path / "global_step_3")
    assert state["global_step"] == 3 and state["complete"] and state["dataloader"] == {"position": 3}
    assert (tmp_path / "global_step_3" / "payload").read_text() == "3"
    assert ckpt.latest_dir(tmp_path / "empty") is None
    tmp = ckpt.begin(tmp_path, 4)  # a crash inside a save leaves only global_step_4.tmp: not a checkpoint
    (tmp / "payload").write_text("half")
    assert ckpt.latest_dir(tmp_path) == tmp_path / "global_step_3"


def _save(root, step, keep=None):
    tmp = ckpt.begin(root, step)
    (tmp / "payload").write_text(str(step))
    return ckpt.commit(root, step, tmp, {"dataloader": {"position": step}}, keep=keep)


def test_retention_never_deletes_the_checkpoint_just_saved(tmp_path):
    """Saving step 40 (a run resumed from 30) while 50 and 60 exist, keep=2: 40 and 30 stay, the
    later ones are not touched, and `latest` names a checkpoint that exists."""
    for step in (30, 40, 50, 60):
        _save(tmp_path, step)
    _save(tmp_path, 40, keep=2)
    assert ckpt.latest_dir(tmp_path) == tmp_path / "global_step_40"
    assert ckpt.checkpoint_steps(tmp_path) == [30, 40, 50, 60]
    _save(tmp_path, 45, keep=2)  # older ones beyond keep go, the newer ones still stay
    assert ckpt.checkpoint_steps(tmp_path) == [40, 45, 50, 60]
    assert ckpt.latest_dir(tmp_path) == tmp_path / "global_step_45"


def test_commit_fsyncs_files_folders_and_latest(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    _save(tmp_path, 1)
    root = str(tmp_path)
    assert f"{root}/global_step_1.tmp/{ckpt.STATE_FILE}.tmp" in synced  # the state file, before its rename
    assert f"{root}/global_step_1.tmp" in synced  # the folder, before it is published
    assert f"{root}/{ckpt.LATEST_FILE}.tmp" in synced  # the latest file, before its rename
    assert synced.count(root) >= 2  # the root after each rename


def test_resume_before_later_checkpoints_is_refused(tiny_model_path, data, tmp_path):
    """Resuming from step 30 (or starting afresh) in a folder that holds later checkpoints fails
    before Ray starts, naming them and how to branch."""
    from corewarding.trainer.run import run_training

    root = tmp_path / "ckpt"
    for step in (30, 40, 50):
        _save(root, step)
    overrides = base(tiny_model_path, data, out=tmp_path) + ["trainer.save_freq=10"]
    with pytest.raises(CheckpointError, match=r"holds checkpoints after step 30 \(global_step_40 .. global_step_50\).*new folder"):
        run_training(compose_config(overrides + ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={root / 'global_step_30'}"]))
    with pytest.raises(CheckpointError, match=r"after step 0 .*resume it \(trainer.resume_mode=auto\)"):
        run_training(compose_config(overrides + ["trainer.resume_mode=disable"]))
    assert ckpt.checkpoint_steps(root) == [30, 40, 50]


def test_tracker_jsonl_and_resume_truncation(tmp_path):
    lines = []
    tracker = Tracker(tmp_path, ["console"], printer=lines.append)
    for step in range(1, 5):
        tracker.log({"reward/mean": step / 10, "timing/step": 1.0}, step)
    tracker.close()
    assert len(lines) == 4 and lines[0].startswith("step 1 | reward 0.100")
    tracker = Tracker(tmp_path, ["console"], resume_step=2, printer=lines.append)
    tracker.log({"reward/mean": 0.9}, 3)
    tracker.close()
    assert [m["step"] for m in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    Tracker(tmp_path, [], resume_step=None).close()  # a fresh start drops the old file
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_wandb_run_id_is_new_for_a_fresh_run(tmp_path, monkeypatch):
    """A fresh run must not reuse the id of an earlier run in the same folder (wandb would drop its
    first steps as already logged); a resumed run continues its own."""
    import types

    started = []
    fake = types.SimpleNamespace(init=lambda **kw: started.append(kw["id"]) or types.SimpleNamespace(finish=lambda: None))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    Tracker(tmp_path, ["wandb"]).close()
    Tracker(tmp_path, ["wandb"], resume_step=3).close()
    Tracker(tmp_path, ["wandb"], resume_step=None).close()
    assert started[1] == started[0] and started[2] != started[0]
    assert (tmp_path / "wandb_run_id.txt").read_text() == started[2]


def test_tensorboard_and_dump(tmp_path):
    tracker = Tracker(tmp_path, ["tensorboard"])
    tracker.log({"reward/mean": 0.5}, 1)
    tracker.close()
    assert list((tmp_path / "tensorboard").iterdir())
    path = dump_rollouts(tmp_path / "r", 7, [{"uid": "7-0", "reward": 1.0, "answer": None}])
    assert path.name == "7.jsonl" and json.loads(path.read_text()) == {"uid": "7-0", "reward": 1.0, "answer": None}
    assert "val_acc 0.250" in format_console(3, {"val/acc": 0.25})


@pytest.mark.parametrize(
    "device, address, auth_mode, node_ip",
    [("cpu", None, "disabled", "127.0.0.1"),  # a local CPU run: no token, loopback only
     ("cuda", None, None, "127.0.0.1"),  # a local GPU run: Ray's token authentication stays on, loopback
     ("cuda", "auto", None, None)],  # joining a cluster: whatever its nodes were started with
)
def test_init_ray_keeps_token_auth_off_cpu(device, address, auth_mode, node_ip, monkeypatch):
    import types

    from corewarding.trainer.run import init_ray

    calls = []
    fake = types.SimpleNamespace(is_initialized=lambda: False,
                                 init=lambda **kw: calls.append((kw, os.environ.get("RAY_AUTH_MODE"))))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    cfg = load_config(compose_config(NO_PATHS + [f"trainer.device={device}", f"ray_init.address={address or 'null'}"]),
                      check_paths=False)
    assert init_ray(cfg) is True
    (kwargs, mode), = calls
    assert mode == auth_mode and kwargs.get("_node_ip_address") == node_ip
    assert kwargs.get("runtime_env", {}).get("env_vars", {}).get("RAY_AUTH_MODE") == auth_mode


def test_worker_rendezvous_on_loopback_unless_a_cluster():
    from corewarding.workers.group import uses_loopback

    def config(*overrides: str):
        return load_config(compose_config(NO_PATHS + ["trainer.device=cuda", *overrides]), check_paths=False)

    assert uses_loopback(config())
    assert not uses_loopback(config("ray_init.address=auto"))
    assert not uses_loopback(config("trainer.nnodes=2", "ray_init.address=auto"))


def test_the_entry_point_does_not_switch_off_ray_auth():
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    code = "import os, corewarding.main; print(os.environ.get('RAY_AUTH_MODE'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "None"


def test_balanced_order():
    """Whole groups to each worker, equal group counts, similar token totals; with kinds, as many
    groups of each kind per worker; an unequal split keeps the order."""
    lengths = [100, 100, 1, 1, 90, 90, 2, 2, 80, 80, 3, 3, 70, 70, 4, 4]
    groups = [i // 2 for i in range(16)]  # 8 groups of 2 rows
    order = balanced_order(lengths, groups, 2)
    assert sorted(order) == list(range(16))
    assert all(order[i] // 2 == order[i + 1] // 2 for i in range(0, 16, 2))  # a group stays together
    halves = [sum(lengths[i] for i in order[:8]), sum(lengths[i] for i in order[8:])]
    assert abs(halves[0] - halves[1]) <= 60
    kinds = [0] * 8 + [1] * 8  # the first 4 groups of one kind, the last 4 of another
    order = balanced_order(lengths, groups, 2, kinds)
    for half in (order[:8], order[8:]):
        assert [kinds[i] for i in half] == [0] * 4 + [1] * 4
    assert balanced_order([1, 2, 3], ["a", "b", "c"], 2) == [0, 1, 2]
    assert balanced_order([5, 5, 1, 1], ["a", "a", "b", "b"], 1) == [0, 1, 2, 3]

def test_device_of_a_cluster_run_is_stated_and_checked_against_the_cluster(caplog):
    """A driver on a CPU-only head node cannot resolve trainer.device=auto for the cluster; a GPU run
    on a cluster without GPUs is refused at once, not after the placement timeout."""
    from corewarding.config import ConfigError
    from corewarding.trainer.run import check_cluster_devices

    with pytest.raises(ConfigError, match="trainer.device=auto cannot be decided by the driver of a cluster run"):
        load_config(compose_config(NO_PATHS + ["trainer.device=auto", "ray_init.address=auto"]), check_paths=False)
    gpu = load_config(compose_config(NO_PATHS + ["trainer.device=cuda", "ray_init.address=auto"]), check_paths=False)
    with pytest.raises(ConfigError, match="trainer.device=cuda but the Ray cluster has no GPUs"):
        check_cluster_devices(gpu, {"CPU": 64.0})
    check_cluster_devices(gpu, {"CPU": 64.0, "GPU": 8.0})
    cpu = load_config(compose_config(NO_PATHS + ["trainer.device=cpu", "ray_init.address=auto"]), check_paths=False)
    with caplog.at_level("WARNING"):
        check_cluster_devices(cpu, {"CPU": 64.0, "GPU": 8.0})
    assert "set trainer.device=cuda to use the GPUs" in caplog.text


def test_single_process_needs_one_worker():
    from corewarding.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.single_process=True runs one worker: set trainer.nnodes=1 and "
                                          "trainer.n_gpus_per_node=1 \\(have 1 x 2\\)"):
        load_config(compose_config(NO_PATHS + ["trainer.single_process=True"]), check_paths=False)
    one = load_config(compose_config(NO_PATHS + ["trainer.single_process=True", "trainer.n_gpus_per_node=1",
                                                 "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2"]),
                      check_paths=False)
    assert one.trainer.single_process and one.trainer.world_size == 1
