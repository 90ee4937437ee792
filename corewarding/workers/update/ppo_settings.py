"""The settings of the PPO update (`actor.ppo_update`), read once from the actor's config by the worker."""

from __future__ import annotations

from dataclasses import dataclass

from corewarding.workers.model.forward import ForwardSettings


@dataclass(frozen=True)
class PPOSettings:
    forward: ForwardSettings
    ppo_epochs: int = 1
    mini_batch_size: int = 1  # prompts per optimizer step (all ranks)
    micro_batch_rows: int = 1  # rows per micro-batch (fixed micro-batches)
    max_tokens: int | None = None  # token budget per micro-batch (use_dynamic_bsz)
    shuffle: bool = False
    loss_mode: str = "vanilla"  # actor.policy_loss.loss_mode: vanilla | gspo | cispo
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float | None = 3.0
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: float | None = None  # seq-mean-token-sum-norm's constant (None: the response width)
    loss_scope: str = "mini_batch"
    mask_truncated: bool = False  # responses that hit the length limit get no loss weight
    rollout_is: str | None = None  # rollout correction: token | sequence truncated IS weights (None: off)
    rollout_is_threshold: float = 2.0  # their cap C
    per_view_loss: bool = False  # Co-rewarding-I: each view aggregated on its own, the two summed
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.0
    kl_loss_type: str = "low_var_kl"
    grad_clip: float = 1.0
    # Reduce the gradients over ranks once per mini-batch, after its last micro-batch, instead of after
    # every backward, and keep the gathered parameters from the first micro-batch's forward to the
    # last one's backward (they do not change before the optimizer step): on CPU (gloo) a collective
    # is not overlapped with compute (a 135M-parameter float32 reduce-scatter takes ~0.8 s on two
    # cores), each all-gather also casts the shards to the compute dtype, and the unsharded gradients
    # and parameters live in host memory; on GPUs the per-backward collectives hide behind compute and
    # the unsharded tensors would cost GPU memory.
    defer_grad_sync: bool = False
    reshard_after_forward: bool = True  # the actor's FSDP setting, restored after each mini-batch
