"""The release's override lists and run scripts read key for key, `+preset=release`, and the
built-in methods they select: roles, aliases, teacher defaults and the EMA's parametrisations."""

from __future__ import annotations

import os
import subprocess

import pytest

from corewarding.config import ConfigError, compose_config, load_config
from corewarding.methods import BUILTIN, METHODS, resolve_method
from config_overrides import CPU, REPO, base
from config_overrides import data, model  # fixture
from release_overrides import RELEASE_I, RELEASE_II, RELEASE_III, release


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
     ("auto", (0.99, 0.9999), (0.99, 0.9999)), ("paper", (0.2, 0.7), (0.2, 0.7))],
)
def test_ema_parametrisation(parametrisation, alphas, teacher_weights, model, data):
    cfg = load_config(compose_config(base(model, data, "co_rewarding_II") + [
        f"actor_rollout_ref.ref.sliding_average.parametrisation={parametrisation}",
        f"actor_rollout_ref.ref.sliding_average.alpha_start={alphas[0]}",
        f"actor_rollout_ref.ref.sliding_average.alpha_end={alphas[1]}"]))
    sa = cfg.actor_rollout_ref.ref.sliding_average
    assert (sa.alpha_start, sa.alpha_end) == pytest.approx(teacher_weights)


@pytest.mark.parametrize("alphas", [(0.01, 0.9999), (0.99, 1e-5)])
def test_alphas_in_two_forms_are_refused(alphas, model, data):
    """auto with one alpha below 0.5 (the release's form) and one above (the paper's): either reading
    makes the teacher a copy of the policy at one end, so the run is refused, naming both keys."""
    overrides = base(model, data, "co_rewarding_II") + [f"actor_rollout_ref.ref.sliding_average.alpha_start={alphas[0]}",
                                                         f"actor_rollout_ref.ref.sliding_average.alpha_end={alphas[1]}"]
    with pytest.raises(ConfigError, match="alpha_start=.* and alpha_end=.* read in different forms"):
        load_config(compose_config(overrides))
    load_config(compose_config(overrides + ["actor_rollout_ref.ref.sliding_average.parametrisation=paper"]))


@pytest.mark.parametrize("method", ["co_rewarding_ii", "co_rewarding_iii"])
def test_the_presets_teacher_samples_as_many_as_the_policy(method, model, data):
    """The method presets leave teacher_n to rollout.n (8), so an override of n moves both, as the
    release's teacher samples rollout.n."""
    cfg = load_config(compose_config([f"+method={method}"] + base(model, data, method)
                                     + ["actor_rollout_ref.rollout.n=16"]))
    assert cfg.actor_rollout_ref.rollout.teacher_n == 16


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
    """+preset=release selects every release behaviour at once (but the EMA's end weight and vLLM's
    share); command-line overrides still win."""
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
