"""From the command line to a checked, typed `Config`, before anything expensive starts.

`compose_config(overrides)` composes `ppo_trainer.yaml` with verl-style overrides exactly as `python -m
corewarding.main` does (unknown keys are an error, `+preset=release` selects a preset). `load_config`
turns that into a frozen `Config` (`schema.py`) and resolves what depends on the machine or on other
keys: the device, dtypes, the teacher's rollout count, CPU threads per worker, the EMA schedule in the
paper's terms, absolute paths. It raises `ConfigError`, one line naming the key to fix, for anything
that would fail later (a missing model, a data file that does not exist, batch sizes that do not
divide, an unknown method) or train silently wrong (values out of range, misspelled choices). Keys
kept for verl compatibility that nothing reads are warned about once when set to a non-default value.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from corewarding.config.schema import ROLLOUT_DIRS, Config, ConfigError, build, ignored_fields
from corewarding.methods import BUILTIN, Method, UnknownMethod, check_method, resolve_method, try_method
from corewarding.rollout_engines import ENGINE_NAMES, engine_spec, engines_that, missing_package

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WARNED_IGNORED: set[str] = set()


def _model_dtype(name: str | None, device: str) -> str:
    """`model.dtype`: null is bfloat16 on GPU and float32 on CPU (the reference); auto is bfloat16
    on GPU and on CPUs that multiply it natively (float32 master weights either way), else float32."""
    if name == "auto":
        from corewarding.hardware import auto_compute_dtype

        name = auto_compute_dtype(device)
        if device == "cpu":
            logger.info("actor_rollout_ref.model.dtype=auto: %s compute on this CPU (%s)", name,
                        "native bfloat16 matrix multiply" if name == "bfloat16" else "no native bfloat16")
        return name
    return name or ("bfloat16" if device == "cuda" else "float32")


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "ppo_trainer") -> DictConfig:
    """The hydra config with command-line style overrides, parsed as `python -m corewarding.main` parses them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


def load_config(cfg: DictConfig, check_paths: bool = True) -> Config:
    """The checked, resolved `Config` of a composed hydra config (see the module docstring)."""
    try:
        values = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001 - interpolation errors come in several kinds
        raise ConfigError(f"cannot resolve the configuration: {exc}".replace("\n", " ")) from exc
    _normalise(values)
    config = build(Config, values)
    method = config.method
    config = _resolve(config, method, check_paths)
    _check(config, method)
    _warn_ignored(values)
    return config


def replace_in(config: Any, section: str, /, **changes: Any) -> Any:
    """A copy of `config` with the fields of the section at dotted `section` changed."""
    if not section:
        return dataclasses.replace(config, **changes)
    head, _, rest = section.partition(".")
    return dataclasses.replace(config, **{head: replace_in(getattr(config, head), rest, **changes)})


# ----------------------------------------------------------------------------------- before building
def _normalise(values: dict[str, Any]) -> None:
    """Spellings the command line allows for lists: a path, `a,b` or a list for the data files; a
    logger written as a string ("[console,wandb]", "console")."""
    data, trainer = values["data"], values["trainer"]
    for key in ("train_files", "train_aug_files", "val_files"):
        value = data.get(key)
        data[key] = [] if value is None else [value] if isinstance(value, str) and "," not in value else value
    logger_value = trainer.get("logger")
    if logger_value is None:
        trainer["logger"] = ["console"]
    elif isinstance(logger_value, str):
        trainer["logger"] = [v.strip(" '\"") for v in logger_value.strip("[]").split(",") if v.strip(" '\"")]


# ----------------------------------------------------------------------------------- resolving
def _resolve(config: Config, method: Method, check_paths: bool) -> Config:
    trainer, arr = config.trainer, config.actor_rollout_ref
    device = trainer.device
    if device == "auto" and config.ray_init.address:
        raise ConfigError("trainer.device=auto cannot be decided by the driver of a cluster run (ray_init.address is "
                          "set; a CPU-only head node would train on CPU): set trainer.device=cuda (or cpu)")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cpus = trainer.cpus_per_worker
    if cpus is None:
        cores = config.ray_init.num_cpus or os.cpu_count() or 1
        cpus = max(1, cores // trainer.world_size) if device == "cpu" else 1
    paths = {key: _abs(getattr(trainer, key)) for key in ("default_local_dir", "resume_from_path", *ROLLOUT_DIRS,
                                                         "validation_data_dir")}
    config = replace_in(config, "trainer", device=device, cpus_per_worker=cpus, **paths)
    model_dtype = _model_dtype(arr.model.dtype, device)
    config = replace_in(config, "actor_rollout_ref.model", dtype=model_dtype)
    if config.ttrl.enable:  # TTRL's fork sets the draw from its own keys, whatever rollout.n says
        config = replace_in(config, "actor_rollout_ref.rollout", n=config.ttrl.n_votes_per_prompt)
    config = replace_in(config, "actor_rollout_ref.rollout", dtype=arr.rollout.dtype or model_dtype,
                        teacher_n=arr.rollout.teacher_n or arr.rollout.n)
    config = replace_in(config, "actor_rollout_ref.ref", sliding_average=_ema_schedule(arr.ref.sliding_average, method))
    # Co-rewarding-III sums its two views' losses, as the release does; Co-rewarding-I aggregates them jointly
    roles = method.roles(config.data.use_aug)
    loss = arr.actor.co_reward_loss or ("per_view" if roles.teacher and roles.trained_views == 2 else "joint")
    config = replace_in(config, "actor_rollout_ref.actor", co_reward_loss=loss)
    if config.ray_init.temp_dir:
        config = replace_in(config, "ray_init", temp_dir=_abs(config.ray_init.temp_dir))
    if config.custom_reward_function.path:
        config = replace_in(config, "custom_reward_function", path=_abs(config.custom_reward_function.path))
    if check_paths:
        config = _resolve_paths(config)
    return config


def _ema_schedule(sa: Any, method: Method) -> Any:
    """The teacher's EMA in the paper's terms: a_k is the weight on the teacher. The release writes
    the weight on the policy (0.01 -> 1e-5): `auto` reads both alphas below 0.5 that way."""
    enable = method.teacher if sa.enable is None else sa.enable
    if method.teacher and not enable:
        logger.warning("co_rewarding_II with actor_rollout_ref.ref.sliding_average.enable=False: the teacher stays the "
                       "initial model (a frozen-teacher ablation), not the paper's EMA teacher")
    a0, a1, form = sa.alpha_start, sa.alpha_end, sa.parametrisation
    if enable and form == "auto" and (a0 < 0.5) != (a1 < 0.5):  # one alpha in each form: either reading is wrong
        raise ConfigError(
            f"actor_rollout_ref.ref.sliding_average.alpha_start={a0} and alpha_end={a1} read in different forms "
            "(below 0.5: the release's weight on the policy; 0.5 or more: the paper's weight on the teacher): set both "
            "in one form (the release's 0.01 and 1e-5, or the paper's 0.99 and 0.99999), or say which with "
            "sliding_average.parametrisation=paper|release"
        )
    if form == "auto":  # a weight below 0.5 on the teacher would make it a copy of the policy
        form = "release" if a0 < 0.5 else "paper"
        if form == "release" and enable:
            logger.warning(
                "actor_rollout_ref.ref.sliding_average.alpha_start=%s, alpha_end=%s read as the release's weight on the "
                "policy: the teacher's weight goes %s -> %s (set parametrisation=paper to mean the teacher's weight)",
                a0, a1, 1.0 - a0, 1.0 - a1,
            )
    if form == "release":
        a0, a1 = 1.0 - a0, 1.0 - a1
    return dataclasses.replace(sa, enable=enable, alpha_start=a0, alpha_end=a1, parametrisation="paper")


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(os.path.expanduser(str(path))).resolve())


def _resolve_paths(config: Config) -> Config:
    """The model folder(s) and data files exist; all become absolute."""
    model = config.actor_rollout_ref.model
    tokenizer = _model_folder("actor_rollout_ref.model.tokenizer_path", model.tokenizer_path) if model.tokenizer_path else None
    config = replace_in(config, "actor_rollout_ref.model", path=_model_folder("actor_rollout_ref.model.path", model.path),
                        tokenizer_path=tokenizer)
    data = config.data
    files = {key: _data_files(f"data.{key}", getattr(data, key), required=key == "train_files")
             for key in ("train_files", "train_aug_files", "val_files")}
    return replace_in(config, "data", **files)


def _model_folder(key: str, path: str | None) -> str:
    """A local HF model folder (every worker loads from the same path, on every node)."""
    if path in (None, "", "null"):
        raise ConfigError(f"{key} is not set: give a Hugging Face model folder (the run scripts read LLM_PATH)")
    local = Path(os.path.expanduser(str(path)))
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"{key}={path}: {local} has no config.json (not a Hugging Face model folder)")
        return str(local.resolve())
    if _HUB_ID.match(str(path)) and not str(path).startswith((".", "~")):
        raise ConfigError(
            f"{key}={path} looks like a hub id: download it first (huggingface-cli download {path} --local-dir "
            f"/models/{path.split('/')[-1]}) on every node and set {key} to that folder"
        )
    raise ConfigError(f"{key}={path}: no such model folder (set LLM_PATH / {key} to a Hugging Face model folder)")


def _data_files(key: str, files: tuple[str, ...], required: bool) -> tuple[str, ...]:
    paths = tuple(_abs(f.strip()) for f in files if f.strip())
    if required and not paths:
        raise ConfigError(f"{key} is empty: give a verl-schema parquet file (see data/README.md)")
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"{key}: {path} does not exist (prepare it with scripts/preprocess.py or fix the path)")
    return paths


# ----------------------------------------------------------------------------------- checks across sections
def _check(config: Config, method: Method) -> None:
    _check_method(config, method)
    _check_devices(config)
    _check_lengths(config)
    _check_batches(config, method)
    _check_policy_loss(config)


def _check_method(config: Config, method: Method) -> None:
    rewards = config.reward_model
    check_method(method, rewards.reward_kwargs)
    if method.name not in BUILTIN:  # a user's method: one trial call now, not a failure after the first generation
        try_method(method, method.options(rewards.gt_scorer, rewards.vote_equivalence, rewards.reward_kwargs))
    try:
        val_method = resolve_method(config.reward_model.val_reward_manager)
    except UnknownMethod:
        val_method = None
    if val_method is None or val_method.name != "gt":
        raise ConfigError(f"reward_model.val_reward_manager={config.reward_model.val_reward_manager!r}: validation "
                          "measures accuracy against the ground truth; use naive")
    data, roles = config.data, config.roles
    if roles.pairs and not data.train_aug_files:
        what = "trains on both views of every question" if roles.trained_views == 2 else (
            "with data.use_aug=True gives the policy and the teacher different views")
        raise ConfigError(f"method {method.name} {what}: it needs data.train_aug_files, the rephrased questions, paired "
                          "with data.train_files on extra_info.index")
    if data.use_aug and not roles.teacher:  # Co-rewarding-III's release sets it too: both views, as always
        logger.warning("data.use_aug=True only changes co_rewarding_II (the policy and the teacher get different views)")
    if config.ttrl.enable:
        _check_ttrl(config, method)
    if method.teacher and not config.actor_rollout_ref.actor.use_kl_loss:
        logger.info("%s without the KL loss: the reference model is used only as the teacher", method.name)


def _check_ttrl(config: Config, method: Method) -> None:
    """TTRL's split scores every drawn rollout before the log-prob passes, within its own prompt's group:
    a reward that reads the policy's token statistics, a teacher or a twin does not fit it."""
    roles = config.roles
    if method.token_stats or roles.teacher or roles.pairs or roles.trained_views != 1:
        raise ConfigError(f"ttrl.enable=True with method {method.name}: TTRL's split scores each prompt's rollouts from "
                          "their own answers alone; use majority_voting, empo or a control (or +method=ttrl)")
    if config.algorithm.filter_groups.enable:
        raise ConfigError("ttrl.enable=True with algorithm.filter_groups.enable=True: choose one of the two")


def _check_devices(config: Config) -> None:
    """What the rollout engine must be able to do (its entry in `rollout_engines`), on this device."""
    rollout, trainer = config.actor_rollout_ref.rollout, config.trainer
    engine = engine_spec(rollout.name)  # the schema admits registered names only
    problem = missing_package(engine)
    if problem is not None:
        others = " or ".join(name for name in ENGINE_NAMES if name != rollout.name)
        raise ConfigError(f"actor_rollout_ref.rollout.name={rollout.name}: {problem}; or set "
                          f"actor_rollout_ref.rollout.name={others}")
    correction = config.algorithm.rollout_correction.rollout_is
    if correction is not None and not engine.sampler_log_probs:
        raise ConfigError(f"algorithm.rollout_correction.rollout_is={correction} needs the sampler's log-probs: use "
                          f"actor_rollout_ref.rollout.name={' or '.join(engines_that('sampler_log_probs'))} "
                          f"(the {rollout.name} engine does not return them)")
    tp = rollout.tensor_model_parallel_size
    if tp > 1 and (not engine.tensor_parallel or trainer.device != "cuda"):
        raise ConfigError(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} needs rollout.name="
            f"{' or '.join(engines_that('tensor_parallel'))} on GPUs (the {rollout.name} engine on {trainer.device} "
            "runs one engine per worker: set it to 1)"
        )
    if trainer.n_gpus_per_node % tp:
        raise ConfigError(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} does not divide trainer.n_gpus_per_node="
            f"{trainer.n_gpus_per_node} (a tensor-parallel group lives on one node)"
        )


def _check_lengths(config: Config) -> None:
    """verl's rollout mirrors of the lengths must agree with data.*, and with dynamic micro-batches
    every row (prompt + response) must fit the token budget."""
    data, arr = config.data, config.actor_rollout_ref
    for leaf in ("prompt_length", "response_length"):
        mirror, value = getattr(arr.rollout, leaf), getattr(data, f"max_{leaf}")
        if mirror is not None and mirror != value:
            raise ConfigError(f"actor_rollout_ref.rollout.{leaf}={mirror} differs from data.max_{leaf}={value}: "
                              f"set data.max_{leaf} (the rollout key follows it)")
    overlong = config.reward_model.overlong_buffer
    if overlong.enable and overlong.len > data.max_response_length:
        raise ConfigError(f"reward_model.overlong_buffer.len={overlong.len} is longer than data.max_response_length="
                          f"{data.max_response_length}: the buffer is the last part of the response")
    longest = data.max_prompt_length + data.max_response_length
    budgets = [("actor", arr.actor.use_dynamic_bsz, "ppo_max_token_len_per_gpu", arr.actor.ppo_max_token_len_per_gpu),
               ("rollout", arr.rollout.log_prob_use_dynamic_bsz, "log_prob_max_token_len_per_gpu",
                arr.rollout.log_prob_max_token_len_per_gpu),
               ("ref", arr.ref.log_prob_use_dynamic_bsz, "log_prob_max_token_len_per_gpu", arr.ref.log_prob_max_token_len_per_gpu)]
    for section, dynamic, leaf, tokens in budgets:
        if dynamic and tokens < longest:
            raise ConfigError(
                f"actor_rollout_ref.{section}.{leaf}={tokens} is below the longest row (data.max_prompt_length + "
                f"data.max_response_length = {longest}): raise it to at least {longest}"
            )


def _check_batches(config: Config, method: Method) -> None:
    """Prompts, mini-batches and micro-batches must divide over the workers."""
    data, actor, ws = config.data, config.actor_rollout_ref.actor, config.world_size
    batch, n = data.train_batch_size, config.trained_per_prompt
    mini, micro = actor.ppo_mini_batch_size, actor.ppo_micro_batch_size_per_gpu
    views = config.roles.trained_views
    if batch % ws:  # two views: each worker trains both views of whole pairs (trainer `_balanced`)
        raise ConfigError(
            f"data.train_batch_size={batch} " + ("pairs (each worker trains both views of whole pairs)" if views == 2
                                                 else "prompts")
            + f" does not divide by the {ws} workers (trainer.nnodes x trainer.n_gpus_per_node)"
        )
    gen = data.gen_batch_size
    if gen != batch and not config.algorithm.filter_groups.enable:
        raise ConfigError(f"data.gen_batch_size={gen} differs from data.train_batch_size={batch}: it only applies with "
                          "algorithm.filter_groups.enable=true (dynamic sampling); leave it unset otherwise")
    if gen * views % ws:
        raise ConfigError(f"data.gen_batch_size={gen}" + (" pairs (x2 views)" if views == 2 else "")
                          + f" = {gen * views} prompts does not divide by the {ws} workers")
    if mini > batch:
        raise ConfigError(f"actor_rollout_ref.actor.ppo_mini_batch_size={mini} is larger than data.train_batch_size={batch}")
    if batch % mini:
        raise ConfigError(f"data.train_batch_size={batch} does not divide by actor_rollout_ref.actor.ppo_mini_batch_size={mini}")
    mini_rows = mini * views * n  # Co-rewarding-I and -III: a mini-batch holds both views of its pairs
    per_prompt = "ttrl.n_samples_per_prompt" if config.ttrl.enable else "rollout.n"
    what = f"ppo_mini_batch_size x 2 views x {per_prompt}" if views == 2 else f"ppo_mini_batch_size x {per_prompt}"
    if mini * n % ws:  # with two views, each view's share of a worker's mini-batch (`mini_batch_rows`)
        raise ConfigError(f"ppo_mini_batch_size x {per_prompt} = {mini * n} rollouts"
                          + (" of each view" if views == 2 else "") + f" does not divide by the {ws} workers"
                          + (": every worker's mini-batch holds as many of both views" if views == 2 else ""))
    if (mini_rows // ws) % micro:
        raise ConfigError(
            f"each worker gets {mini_rows // ws} rollouts per mini-batch ({what} / workers), which "
            f"does not divide by actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}"
        )


def _check_policy_loss(config: Config) -> None:
    """GSPO with a token-level clip range: its per-response ratio, a geometric mean, would hardly ever leave it."""
    actor = config.actor_rollout_ref.actor
    if actor.policy_loss.loss_mode == "gspo" and max(actor.clip_low, actor.clip_high) >= 0.01:
        logger.warning("actor_rollout_ref.actor.policy_loss.loss_mode=gspo with clip_ratio_low=%s, clip_ratio_high=%s: "
                       "GSPO's per-response ratio hardly ever leaves that range; verl's recipe uses 3e-4 and 4e-4 "
                       "(+preset=gspo)", actor.clip_low, actor.clip_high)


def _warn_ignored(values: dict[str, Any]) -> None:
    """A warning, once per key and process, for an ignored verl key set to something else than its default."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "ppo_trainer.yaml"), resolve=False)
    for key, why in ignored_fields().items():
        value, default = _select(values, key), _select(defaults, key)
        if value != default and key not in _WARNED_IGNORED:
            _WARNED_IGNORED.add(key)
            logger.warning("%s=%s is accepted for verl compatibility but ignored: %s", key, value, why)


def _select(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values
