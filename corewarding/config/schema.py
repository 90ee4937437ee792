"""The trainer's configuration as frozen, typed objects: one dataclass per section of verl's key tree
(`data`, `actor_rollout_ref.{model, actor, ref, rollout}`, `algorithm`, `reward_model`,
`custom_reward_function`, `trainer`, `ray_init`), so code reads `config.actor_rollout_ref.actor.clip_ratio` with its type known.
This file holds the root `Config` and the top-level sections; the `actor_rollout_ref` subtree is
`actor_rollout_ref.py`, the machinery under every section (`Section`, `build`, `ignored`) `sections.py`.

The default values live in one place, `ppo_trainer.yaml` beside this file (hydra reads it and applies
the command line); `build` turns the composed config into these objects and refuses any key it does
not know, any it misses and any value of the wrong type, with one line naming the key. Each section
checks its own values (ranges, choices) when it is built; `corewarding.config.loading` checks what
involves several sections and resolves what depends on the machine.

A field marked `ignored(...)` is a verl key that release command lines set but nothing here reads:
it is accepted, and setting it to another value than its default gets one warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from corewarding.algos.rollout_correction import IS_LEVELS
from corewarding.config.actor_rollout_ref import ActorRolloutRefConfig
from corewarding.config.sections import (
    Section, build, check_real, ignored, ignored_fields as _ignored_fields_of,
)
from corewarding.errors import ConfigError

__all__ = ["Config", "ConfigError", "build", "ignored_fields"]


# ----------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataConfig(Section):
    PREFIX: ClassVar[str] = "data"
    tokenizer: str | None = ignored("the tokenizer is actor_rollout_ref.model.tokenizer_path (or the model's)")
    train_files: tuple[str, ...]
    train_aug_files: tuple[str, ...]  # rephrased twins: Co-rewarding-I, or the teacher's view in II
    use_aug: bool  # Co-rewarding-II: the policy and the teacher get different views (see p)
    p: float  # with use_aug: probability that the policy gets the rephrased view
    val_files: tuple[str, ...]
    prompt_key: str
    reward_fn_key: str = ignored("rewards are chosen by reward_model.reward_manager, not per data source")
    max_prompt_length: int
    max_response_length: int
    train_batch_size: int  # prompts (Co-rewarding-I: pairs) per step
    gen_batch_size: int  # prompts (pairs) per generation batch (dynamic sampling)
    val_batch_size: int | None
    filter_overlong_prompts: bool
    truncation: Literal["error", "left", "right"]
    shuffle: bool
    seed: int
    resume_allow_sampling_change: bool  # resume a checkpoint written with another seed or p
    val_max_samples: int | None
    require_ground_truth: bool | None
    train_max_samples: int | None

    def __post_init__(self) -> None:
        check_real(self.key("p"), self.p, 0.0, 1.0)
        self.positive("max_prompt_length", "max_response_length", "train_batch_size", "gen_batch_size", "val_batch_size",
                      "val_max_samples", "train_max_samples")


# ----------------------------------------------------------------------------------- algorithm and rewards
@dataclass(frozen=True)
class FilterGroupsConfig(Section):
    """DAPO's dynamic sampling: train on groups whose `metric` varies (docs/method.md)."""

    PREFIX: ClassVar[str] = "algorithm.filter_groups"
    enable: bool
    metric: Literal["score", "acc", "seq_reward", "seq_final_reward"]  # seq_*: the score (no KL in the reward)
    max_num_gen_batches: int  # <= 0: no limit

    @property
    def limit(self) -> int | None:
        """The most generation batches a step may use (None: no limit, verl's non-positive values)."""
        return self.max_num_gen_batches if self.max_num_gen_batches > 0 else None


@dataclass(frozen=True)
class RolloutCorrectionConfig(Section):
    """Truncated importance sampling from the rollout engine's sampler to the trainer (verl's keys)."""

    PREFIX: ClassVar[str] = "algorithm.rollout_correction"
    rollout_is: Literal[IS_LEVELS] | None  # type: ignore[valid-type]  # null: off
    rollout_is_threshold: float  # the cap C on the weights

    def __post_init__(self) -> None:
        check_real(self.key("rollout_is_threshold"), self.rollout_is_threshold, 0.0, open_low=True)


@dataclass(frozen=True)
class AlgorithmConfig(Section):
    PREFIX: ClassVar[str] = "algorithm"
    adv_estimator: Literal["grpo", "co_reward", "co_rewarding_grpo"]  # the release's names: GRPO within each view's group
    norm_adv_by_std_in_grpo: bool
    use_kl_in_reward: bool
    filter_groups: FilterGroupsConfig
    gamma: float = ignored("GRPO has no discounting")
    lam: float = ignored("GRPO has no GAE")
    rollout_correction: RolloutCorrectionConfig

    def __post_init__(self) -> None:
        if self.use_kl_in_reward:
            raise ConfigError("algorithm.use_kl_in_reward=True is not supported: use actor_rollout_ref.actor.use_kl_loss=True")


@dataclass(frozen=True)
class OverlongBufferConfig(Section):
    """DAPO's soft overlong penalty on every method's training score (verl's DAPO recipe keys)."""

    PREFIX: ClassVar[str] = "reward_model.overlong_buffer"
    enable: bool
    len: int  # tokens before data.max_response_length where the penalty grows
    penalty_factor: float  # the penalty at max_response_length
    log: bool = ignored("the penalty's metrics are always logged when enable=True")

    def __post_init__(self) -> None:
        if self.enable:  # verl's DAPO recipe leaves len=0 when the buffer is off
            self.positive("len")
        check_real(self.key("penalty_factor"), self.penalty_factor, 0.0)


@dataclass(frozen=True)
class TTRLConfig(Section):
    """TTRL's split (Zuo et al., arXiv:2504.16084, under its verl fork's keys): the policy draws and votes
    over `n_votes_per_prompt` rollouts of each prompt and trains on the first `n_samples_per_prompt`."""

    PREFIX: ClassVar[str] = "ttrl"
    enable: bool
    n_votes_per_prompt: int
    n_samples_per_prompt: int

    def __post_init__(self) -> None:
        self.positive("n_votes_per_prompt", "n_samples_per_prompt")
        if self.enable and self.n_samples_per_prompt > self.n_votes_per_prompt:
            raise ConfigError(f"ttrl.n_samples_per_prompt={self.n_samples_per_prompt} > ttrl.n_votes_per_prompt="
                              f"{self.n_votes_per_prompt}: the update takes its rollouts from those voted on")


@dataclass(frozen=True)
class RewardModelConfig(Section):
    PREFIX: ClassVar[str] = "reward_model"
    enable: bool
    reward_manager: str
    val_reward_manager: str
    vote_equivalence: Literal["string", "math"]
    gt_scorer: Literal["math_verify", "hendrycks"]
    reward_kwargs: dict
    overlong_buffer: OverlongBufferConfig

    def __post_init__(self) -> None:
        if self.enable:
            raise ConfigError("reward_model.enable=True (a learned reward model) is not supported: rewards are rule based")


@dataclass(frozen=True)
class CustomRewardFunctionConfig(Section):
    PREFIX: ClassVar[str] = "custom_reward_function"
    path: str | None  # a Python file with the reward function or `Method` record (docs/custom-method.md)
    name: str


# ----------------------------------------------------------------------------------- trainer
@dataclass(frozen=True)
class CollapseMonitorConfig(Section):
    PREFIX: ClassVar[str] = "trainer.collapse_monitor"
    window: int  # steps averaged before comparing
    drop: float  # fall in accuracy from its best window that counts
    relative_drop: float  # val/acc below this share of its best is a fall; the hacking signs: this share of a best window
    consensus: float  # majority ratio that counts as consensus
    truncation: float  # share of responses cut at the length limit that makes a fall "degenerate"
    entropy_fraction: float  # entropy below this share of the first step's: a warning, not a collapse

    def __post_init__(self) -> None:
        self.positive("window")
        for name in ("drop", "relative_drop", "consensus", "truncation", "entropy_fraction"):
            check_real(self.key(name), getattr(self, name), 0.0, 1.0)


@dataclass(frozen=True)
class TrainerConfig(Section):
    PREFIX: ClassVar[str] = "trainer"
    device: Literal["auto", "cuda", "cpu"]
    cpus_per_worker: int | None
    cpu_preload: bool  # CPU workers start with the system's tcmalloc in LD_PRELOAD (workers/preload.py)
    nnodes: int
    n_gpus_per_node: int
    single_process: bool  # one worker inside the driver process, without Ray (debuggers, profilers)
    skip_memory_check: bool  # GPU: start even when the start-up memory estimate does not fit
    total_epochs: int | None
    total_training_steps: int | None
    project_name: str
    experiment_name: str
    logger: tuple[Literal["console", "wandb", "tensorboard", "jsonl"], ...]
    log_val_generations: int
    rollout_data_dir: str | None
    rollout_data_dir_aug: str | None
    ref_rollout_data_dir: str | None
    ref_rollout_data_dir_aug: str | None
    validation_data_dir: str | None
    save_freq: int | None
    test_freq: int | None
    val_before_train: bool
    val_only: bool
    critic_warmup: int = ignored("GRPO has no critic")
    resume_mode: Literal["auto", "disable", "resume_path"]
    resume_from_path: str | None
    default_local_dir: str
    max_actor_ckpt_to_keep: int | None
    default_hdfs_dir: str | None = ignored("checkpoints are written to trainer.default_local_dir only")
    console_every: int
    verbose: bool
    collapse_monitor: CollapseMonitorConfig
    max_steps_this_run: int | None
    preemption_signals: tuple[Literal["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP"], ...]
    force_unlock: bool  # take over a run folder locked on another host (corewarding/trainer/run_lock.py)

    def __post_init__(self) -> None:
        self.positive("cpus_per_worker", "nnodes", "n_gpus_per_node", "total_epochs", "total_training_steps",
                      "max_actor_ckpt_to_keep", "console_every", "max_steps_this_run")
        if self.resume_mode == "resume_path" and not self.resume_from_path:
            raise ConfigError("trainer.resume_mode=resume_path needs trainer.resume_from_path (a global_step_N folder)")
        if self.single_process and self.nnodes * self.n_gpus_per_node != 1:
            raise ConfigError(f"trainer.single_process=True runs one worker: set trainer.nnodes=1 and "
                              f"trainer.n_gpus_per_node=1 (have {self.nnodes} x {self.n_gpus_per_node})")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.n_gpus_per_node


@dataclass(frozen=True)
class RayInitConfig(Section):
    PREFIX: ClassVar[str] = "ray_init"
    num_cpus: int | None
    address: str | None  # null: a local Ray; `auto` or host:port: a cluster started with `ray start`
    temp_dir: str | None

    def __post_init__(self) -> None:
        self.positive("num_cpus")


# the rollout-dump folders: everything, the policy's on rephrased questions, the teacher's, the
# teacher's on rephrased questions (corewarding.trainer.tracking.rollout_folder)
ROLLOUT_DIRS = ("rollout_data_dir", "rollout_data_dir_aug", "ref_rollout_data_dir", "ref_rollout_data_dir_aug")


@dataclass(frozen=True)
class Config:
    data: DataConfig
    actor_rollout_ref: ActorRolloutRefConfig
    algorithm: AlgorithmConfig
    reward_model: RewardModelConfig
    custom_reward_function: CustomRewardFunctionConfig
    ttrl: TTRLConfig
    trainer: TrainerConfig
    ray_init: RayInitConfig

    @property
    def world_size(self) -> int:
        return self.trainer.world_size

    @property
    def trained_per_prompt(self) -> int:
        """Rollouts of each prompt the update trains on: rollout.n, or TTRL's n_samples_per_prompt."""
        return self.ttrl.n_samples_per_prompt if self.ttrl.enable else self.actor_rollout_ref.rollout.n

    @property
    def method(self) -> Any:
        """The `corewarding.methods.Method` of the run: the one `custom_reward_function` loads from a
        user's file when its path is set, else the one `reward_model.reward_manager` names."""
        from corewarding.methods import load_method, resolve_method  # methods import the reward library (torch)

        custom = self.custom_reward_function
        if custom.path:
            return load_method(custom.path, custom.name)
        return resolve_method(self.reward_model.reward_manager)

    @property
    def roles(self) -> Any:
        """The run's `corewarding.roles.Roles`: its method's, with `data.use_aug`."""
        return self.method.roles(self.data.use_aug)


def ignored_fields(cls: type = Config, prefix: str = "") -> dict[str, str]:
    """Every ignored key of the tree under `cls` (the whole configuration by default): key -> why."""
    return _ignored_fields_of(cls, prefix)
