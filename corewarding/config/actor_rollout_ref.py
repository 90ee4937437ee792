"""The `actor_rollout_ref` sections of the configuration: the model, the actor's update (its
optimizer, FSDP and policy loss), the reference / EMA teacher and the rollout engine's sampling, one
frozen dataclass per section of verl's key tree, each checking its own values when it is built
(`corewarding.config.schema` puts them under the root `Config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from corewarding.algos.losses import AGG_MODES, AGG_SCOPES, KL_KINDS
from corewarding.algos.policy_modes import POLICY_LOSS_MODES
from corewarding.config.sections import Section, check_real, ignored
from corewarding.rollout_engines import ENGINE_NAMES


# ----------------------------------------------------------------------------------- model and actor
@dataclass(frozen=True)
class ModelConfig(Section):
    PREFIX: ClassVar[str] = "actor_rollout_ref.model"
    path: str
    tokenizer_path: str | None
    dtype: str | None  # null: bfloat16 on GPU, float32 on CPU; auto: bfloat16 on CPUs with native bf16
    attn_implementation: str | None  # null: flash_attention_2 where the worker has it, else sdpa
    use_remove_padding: bool  # packed micro-batches
    logits_chunk_size: int
    share_prompt_prefix: Literal["auto", "true", "false"]  # shared-prefix layout (auto: CPU workers)
    enable_gradient_checkpointing: bool
    trust_remote_code: bool
    use_fused_kernels: bool = ignored("there are no fused kernels here; the output head is chunked (token_stats)")

    def __post_init__(self) -> None:
        self.positive("logits_chunk_size")


@dataclass(frozen=True)
class OptimConfig(Section):
    PREFIX: ClassVar[str] = "actor_rollout_ref.actor.optim"
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    lr_warmup_steps: int  # >= 0 overrides the ratio
    lr_warmup_steps_ratio: float
    warmup_style: Literal["cosine", "constant"]
    min_lr_ratio: float
    total_training_steps: int = ignored("the trainer computes the number of steps (trainer.total_training_steps)")

    def __post_init__(self) -> None:
        check_real(self.key("lr"), self.lr, 0.0, 1.0, open_low=True, open_high=True)
        for beta in self.betas:
            check_real(self.key("betas"), beta, 0.0, 1.0, open_high=True)
        check_real(self.key("eps"), self.eps, 0.0, open_low=True)
        check_real(self.key("weight_decay"), self.weight_decay, 0.0)
        check_real(self.key("lr_warmup_steps_ratio"), self.lr_warmup_steps_ratio, 0.0, 1.0)
        check_real(self.key("lr_warmup_steps"), self.lr_warmup_steps, -1)
        check_real(self.key("min_lr_ratio"), self.min_lr_ratio, 0.0, 1.0)


@dataclass(frozen=True)
class ActorFSDPConfig(Section):
    PREFIX: ClassVar[str] = "actor_rollout_ref.actor.fsdp_config"
    param_offload: bool
    optimizer_offload: bool  # either flag offloads parameters, gradients and optimizer state
    reshard_after_forward: bool


@dataclass(frozen=True)
class PolicyLossConfig(Section):
    """verl's policy-loss group: which surrogate the update minimises (algos/policy_modes.py)."""

    PREFIX: ClassVar[str] = "actor_rollout_ref.actor.policy_loss"
    loss_mode: Literal[POLICY_LOSS_MODES]  # type: ignore[valid-type]


@dataclass(frozen=True)
class ActorConfig(Section):
    PREFIX: ClassVar[str] = "actor_rollout_ref.actor"
    strategy: str = ignored("the workers always use FSDP2")
    ppo_mini_batch_size: int  # prompts per optimizer step
    ppo_micro_batch_size_per_gpu: int
    use_dynamic_bsz: bool
    ppo_max_token_len_per_gpu: int
    ppo_epochs: int
    on_policy_shortcut: bool
    shuffle: bool
    grad_clip: float | None
    clip_ratio: float
    clip_ratio_low: float | None
    clip_ratio_high: float | None
    clip_ratio_c: float | None
    policy_loss: PolicyLossConfig
    loss_agg_mode: Literal[AGG_MODES]  # type: ignore[valid-type]
    loss_scale_factor: int | None  # seq-mean-token-sum-norm's constant (null: data.max_response_length)
    mask_truncated_completions: bool  # responses that hit max_response_length get no loss weight (TRL's name)
    loss_agg_scope: Literal[AGG_SCOPES]  # type: ignore[valid-type]
    co_reward_loss: Literal["joint", "per_view"] | None  # None: the method's (per_view for Co-rewarding-III)
    entropy_coeff: float
    use_kl_loss: bool
    kl_loss_coef: float
    kl_loss_type: Literal[KL_KINDS]  # type: ignore[valid-type]
    use_torch_compile: bool  # the output head's per-chunk passes through torch.compile (each worker: where it can)
    optim: OptimConfig
    fsdp_config: ActorFSDPConfig

    def __post_init__(self) -> None:
        self.positive("ppo_mini_batch_size", "ppo_micro_batch_size_per_gpu", "ppo_max_token_len_per_gpu", "ppo_epochs",
                      "loss_scale_factor")
        check_real(self.key("clip_ratio"), self.clip_ratio, 0.0, 1.0, open_low=True, open_high=True)
        if self.clip_ratio_low is not None:  # CISPO clips a weight: >= 1 is no lower clip (verl's example: 10)
            high = None if self.policy_loss.loss_mode == "cispo" else 1.0
            check_real(self.key("clip_ratio_low"), self.clip_ratio_low, 0.0, high, open_low=True, open_high=True)
        if self.clip_ratio_high is not None:
            check_real(self.key("clip_ratio_high"), self.clip_ratio_high, 0.0, open_low=True)
        if self.clip_ratio_c is not None:
            check_real(self.key("clip_ratio_c"), self.clip_ratio_c, 1.0, open_low=True)  # the dual clip needs c > 1
        check_real(self.key("entropy_coeff"), self.entropy_coeff)
        check_real(self.key("kl_loss_coef"), self.kl_loss_coef, 0.0)
        check_real(self.key("grad_clip"), self.grad_clip or 0.0, 0.0)

    @property
    def clip_low(self) -> float:
        return self.clip_ratio if self.clip_ratio_low is None else self.clip_ratio_low

    @property
    def clip_high(self) -> float:
        return self.clip_ratio if self.clip_ratio_high is None else self.clip_ratio_high


# ----------------------------------------------------------------------------------- reference / teacher
@dataclass(frozen=True)
class RefFSDPConfig(Section):
    PREFIX: ClassVar[str] = "actor_rollout_ref.ref.fsdp_config"
    param_offload: bool


@dataclass(frozen=True)
class SlidingAverageConfig(Section):
    """Co-rewarding-II's EMA teacher; once loaded, alphas are the paper's a_k (weight on the teacher)."""

    PREFIX: ClassVar[str] = "actor_rollout_ref.ref.sliding_average"
    enable: bool | None  # null: on for co_rewarding_II
    update_interval: int
    alpha_start: float
    alpha_end: float
    parametrisation: Literal["auto", "paper", "release"]

    def __post_init__(self) -> None:
        self.positive("update_interval")
        check_real(self.key("alpha_start"), self.alpha_start, 0.0, 1.0)
        check_real(self.key("alpha_end"), self.alpha_end, 0.0, 1.0)


@dataclass(frozen=True)
class RefConfig(Section):
    PREFIX: ClassVar[str] = "actor_rollout_ref.ref"
    log_prob_micro_batch_size_per_gpu: int
    log_prob_use_dynamic_bsz: bool
    log_prob_max_token_len_per_gpu: int
    fsdp_config: RefFSDPConfig
    sliding_average: SlidingAverageConfig

    def __post_init__(self) -> None:
        self.positive("log_prob_micro_batch_size_per_gpu", "log_prob_max_token_len_per_gpu")


# ----------------------------------------------------------------------------------- rollout
@dataclass(frozen=True)
class ValKwargs(Section):
    """Validation sampling, read as verl reads it: do_sample=False is greedy (the rest ignored)."""

    PREFIX: ClassVar[str] = "actor_rollout_ref.rollout.val_kwargs"
    n: int
    temperature: float
    top_p: float
    top_k: int
    do_sample: bool

    def __post_init__(self) -> None:
        self.positive("n")
        check_real(self.key("temperature"), self.temperature, 0.0)
        check_real(self.key("top_p"), self.top_p, 0.0, 1.0, open_low=True)
        check_real(self.key("top_k"), self.top_k, -1)


@dataclass(frozen=True)
class RolloutConfig(Section):
    PREFIX: ClassVar[str] = "actor_rollout_ref.rollout"
    name: Literal[ENGINE_NAMES]  # type: ignore[valid-type]  # the registered rollout engines
    n: int
    teacher_n: int | None  # G~ (null: n)
    temperature: float
    top_p: float
    top_k: int
    prompt_length: int | None  # verl's mirror of data.max_prompt_length
    response_length: int | None  # verl's mirror of data.max_response_length
    dtype: str | None
    gpu_memory_utilization: float
    tensor_model_parallel_size: int
    enforce_eager: bool
    free_cache_engine: bool
    max_num_seqs: int
    max_num_batched_tokens: int
    log_prob_micro_batch_size_per_gpu: int
    log_prob_use_dynamic_bsz: bool
    log_prob_max_token_len_per_gpu: int
    micro_batch_size: int  # hf engine: sequences per generate call
    seed: int
    val_kwargs: ValKwargs

    def __post_init__(self) -> None:
        self.positive("n", "teacher_n", "tensor_model_parallel_size", "max_num_seqs", "max_num_batched_tokens",
                      "log_prob_micro_batch_size_per_gpu", "log_prob_max_token_len_per_gpu", "micro_batch_size")
        check_real(self.key("temperature"), self.temperature, 0.0, open_low=True)
        check_real(self.key("top_p"), self.top_p, 0.0, 1.0, open_low=True)
        check_real(self.key("top_k"), self.top_k, -1)
        check_real(self.key("gpu_memory_utilization"), self.gpu_memory_utilization, 0.0, 1.0, open_low=True)


@dataclass(frozen=True)
class ActorRolloutRefConfig(Section):
    PREFIX: ClassVar[str] = "actor_rollout_ref"
    hybrid_engine: bool = ignored("actor and rollout always share each worker")
    record_entropy: bool = ignored("per-token entropy is always computed and logged (actor/entropy)")
    nccl_timeout: int  # seconds a collective may wait (the workers' process group, NCCL and gloo)
    model: ModelConfig
    actor: ActorConfig
    ref: RefConfig
    rollout: RolloutConfig

    def __post_init__(self) -> None:
        self.positive("nccl_timeout")
