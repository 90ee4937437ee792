"""The worker that holds, on one device, the FSDP2-sharded policy (AdamW + LR schedule), the
FSDP2-sharded reference model (the EMA teacher of Co-rewarding-II) and a rollout engine.

`RayWorkerGroup` (group.py) starts one per device, wrapped with `ray.remote`, and sets
MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK; `init_model` forms the
torch.distributed group (gloo on CPU, NCCL on GPU). Every method is called on all ranks at once
(FSDP2 all-gathers are collectives); each method's `@register` declares what every rank gets (the
same arguments, or an equal share of the rows) and how the driver combines the ranks' results. The
methods are `worker_api.WorkerApi`'s, which the trainer calls on a group as on one worker.

This class only wires the rooms together:
- `model/sharding.py`: loading and FSDP2 sharding, full weights in and out; `model/forward.py`: the
  forward pass (padded, packed or shared-prefix; chunked output head);
- `rollout_runner.py`: the engine, the weights it holds, the rollout RNG stream, TP gathering;
- `update/actor.py`: the PPO update;
- `checkpoint/worker_checkpoint.py`: saving and restoring this worker, into the files of
  `checkpoint/worker_state.py` (named by `checkpoint_layout.py`); `rng_state.py`: its RNG states.

Master weights are float32 everywhere; on GPU FSDP2 computes in `model.dtype` (bf16) with float32
gradient reduction. The reference model keeps float32 shards too, so that a 1e-4 EMA step is not
lost to bf16 rounding.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from corewarding.algos import build_lr_scheduler
from corewarding.algos.schedules import ema_update_  # from its module: a static reader follows the call into it
from corewarding.batch import Batch
from corewarding.config import Config
from corewarding.data import load_tokenizer, pad_token_id
from corewarding.errors import ConfigError
from corewarding.hardware import usable_torch_compile
from corewarding.logs import quiet_worker
from corewarding.rollout_engines import engine_spec
from corewarding.startup import gc_paused, in_ray_worker, skip_unused_imports
from corewarding.workers import memory_plan, rng_state
from corewarding.workers.checkpoint import worker_checkpoint
from corewarding.workers.dispatch import Dispatch, concat_rows, first_rank, register
from corewarding.workers.model import sharding
from corewarding.workers.model.forward import ForwardSettings, compute_token_stats
from corewarding.workers.rollout import EngineSettings, eos_token_ids, make_engine, resolve_dtype
from corewarding.workers.rollout_runner import Generated, RolloutRunner, rollout_seed
from corewarding.workers.update.actor import ActorUpdate, ppo_update
from corewarding.workers.update.ppo_settings import PPOSettings
from corewarding.workers.worker_api import WorkerApi


def process_group_options(device: torch.device, timeout_s: float) -> dict[str, Any]:
    """init_process_group's backend and timeout. On GPU the group is `cpu:gloo,cuda:nccl`: with CPU
    offload the gradients are CPU tensors and clipping reduces their norm over the group, which NCCL
    alone cannot. The timeout is `actor_rollout_ref.nccl_timeout`: ranks wait in a collective while
    rank 0 writes a checkpoint, which at 8B parameters can take longer than NCCL's 10-minute default."""
    backend = "gloo" if device.type == "cpu" else "cpu:gloo,cuda:nccl"
    options: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        options["device_id"] = device
    return options


def gpu_worker_threads(configured: int, actor_offload: bool, node_cpus: int, gpus_per_node: int) -> int:
    """CPU threads of a GPU worker: `trainer.cpus_per_worker` (1 unless set); one whose actor is
    offloaded runs AdamW over its shards on the CPU, so it takes its share of the node's cores."""
    return max(configured, node_cpus // gpus_per_node) if actor_offload else configured


def worker_gpu(visible: int, local_rank: int, engine_takes_first_gpu: bool) -> int:
    """This worker's CUDA device: 0 when it sees one GPU (Ray narrows CUDA_VISIBLE_DEVICES to it),
    else its LOCAL_RANK. vLLM at tensor parallel size 1 runs in its uni-process executor on the first
    visible GPU whatever the worker's device (`engine_takes_first_gpu`): such a worker off GPU 0 is
    refused rather than left to put every engine on GPU 0."""
    if visible <= 1:
        return 0
    if engine_takes_first_gpu and local_rank != 0:
        raise ConfigError(
            f"this worker sees {visible} GPUs and trains on GPU {local_rank} (LOCAL_RANK), but its rollout engine at "
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1 would start on GPU 0: let Ray give each worker its "
            "own GPU (unset RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES)")
    return local_rank


class ActorRolloutRefWorker(WorkerApi):
    def __init__(self, config: Config, rank: int, world_size: int) -> None:
        quiet_worker()  # a Ray worker of a quiet run: its output to the run folder (corewarding/logs.py)
        if in_ray_worker():  # a process of ours: transformers without scikit-learn (corewarding/startup.py)
            skip_unused_imports()
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.policy_version = 0
        self.teacher_version = 0
        self.skipped_steps = 0
        self.rollout_share = config.actor_rollout_ref.rollout.gpu_memory_utilization  # the memory check may lower it
        tp = config.actor_rollout_ref.rollout.tensor_model_parallel_size
        if world_size % tp:
            raise ValueError(f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp} does not divide the "
                             f"{world_size} workers (trainer.nnodes x trainer.n_gpus_per_node)")
        self.device = torch.device("cpu")  # until init_model
        # decided here, on the worker's own node (the driver's may lack its GPU or compiler)
        self.compiled_head = usable_torch_compile(config.actor_rollout_ref.actor.use_torch_compile, config.trainer.device)

    # ------------------------------------------------------------------ setup
    @register(Dispatch.SAME_ARGS, first_rank)
    def ignore_signals(self, names: list[str]) -> None:
        """Ignore the driver's preemption signals (`trainer.preemption_signals`) in this worker
        process: a cluster may signal every process of the job, and the driver decides when the
        workers stop (after the step and its checkpoint). Ray runs an actor's calls on its main thread."""
        if threading.current_thread() is threading.main_thread():
            for name in names:
                signal.signal(signal.Signals[name], signal.SIG_IGN)

    @register(Dispatch.SAME_ARGS, first_rank)
    def init_model(self, total_steps: int) -> str | None:
        """Process group, tokenizer, the sharded policy with its optimizer and LR schedule over
        `total_steps` steps, the sharded reference model, the rollout engine. On a GPU, returns the
        start-up memory estimate (one line), checked before any model loads."""
        # CPU only (7.9 -> 6.6 s with vLLM on this project's 2-core machine): on a GPU a cycle made
        # during the loads could hold device memory until the next collection, for a second of minutes
        with gc_paused() if self.config.trainer.device == "cpu" else contextlib.nullcontext():
            return self._init_model(total_steps)

    def _init_model(self, total_steps: int) -> str | None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # Ray forwards every worker's per-load bars to the driver
        arr = self.config.actor_rollout_ref
        model = arr.model
        if not (Path(model.path) / "config.json").exists():
            raise FileNotFoundError(f"actor_rollout_ref.model.path={model.path!r} is not a HF model folder (no "
                                    "config.json) on this node: every node needs the model at the same path")
        tp_group = self._init_distributed()
        memory_line = self._check_memory() if self.device.type == "cuda" else None
        self.tokenizer = load_tokenizer(model.tokenizer_path or model.path, model.trust_remote_code)
        self.attn_impl = sharding.attention_implementation(model.attn_implementation, self.device)
        compute_dtype = resolve_dtype(model.dtype, self.device)
        actor_fsdp, on_gpu = arr.actor.fsdp_config, self.device.type == "cuda"
        self.actor = self._load_and_shard(train=True, compute_dtype=compute_dtype, reshard=actor_fsdp.reshard_after_forward,
                                          offload=on_gpu and (actor_fsdp.param_offload or actor_fsdp.optimizer_offload))
        optim = arr.actor.optim
        # fused: one kernel over all shards (HF Trainer's default, adamw_torch_fused); on CPU the
        # default is a Python loop over the parameters, ~6x slower (docs/speed.md)
        self.optimizer = torch.optim.AdamW(self.actor.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps,
                                           weight_decay=optim.weight_decay, fused=True)
        self.lr_scheduler = build_lr_scheduler(
            self.optimizer, total_steps=total_steps, warmup_steps_ratio=optim.lr_warmup_steps_ratio,
            warmup_steps=optim.lr_warmup_steps, style=optim.warmup_style, min_lr_ratio=optim.min_lr_ratio,
        )
        self.ref = self._load_reference()
        self.rollout = self._build_rollout(tp_group)
        return memory_line

    def _init_distributed(self) -> dist.ProcessGroup | None:
        """The device, the torch.distributed group (gloo on CPU, NCCL on GPU), the FSDP mesh and,
        with tp > 1, this rank's TP group of consecutive ranks (the layout vLLM's external_launcher
        uses; every rank creates every group, in the same order)."""
        from torch.distributed.device_mesh import init_device_mesh

        if self.config.trainer.device == "cpu":
            torch.set_num_threads(self.config.trainer.cpus_per_worker)
            self.device = torch.device("cpu")
        else:
            if not torch.cuda.is_available():
                raise RuntimeError("trainer.device=cuda but no GPU is visible: set trainer.device=cpu for a CPU run")
            rollout = self.config.actor_rollout_ref.rollout
            takes_first = engine_spec(rollout.name).first_gpu_at_tp1 and rollout.tensor_model_parallel_size == 1
            local = worker_gpu(torch.cuda.device_count(), int(os.environ.get("LOCAL_RANK", 0)), takes_first)
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
            fsdp = self.config.actor_rollout_ref.actor.fsdp_config
            torch.set_num_threads(gpu_worker_threads(self.config.trainer.cpus_per_worker,
                                                     fsdp.param_offload or fsdp.optimizer_offload,
                                                     os.cpu_count() or 1, self.config.trainer.n_gpus_per_node))
        if not dist.is_initialized():
            os.environ.setdefault("RANK", str(self.rank))
            os.environ.setdefault("WORLD_SIZE", str(self.world_size))
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            options = process_group_options(self.device, self.config.actor_rollout_ref.nccl_timeout)
            dist.init_process_group(rank=self.rank, world_size=self.world_size, **options)
        self.mesh = init_device_mesh(self.device.type, (self.world_size,), mesh_dim_names=("fsdp",))
        tp = self.config.actor_rollout_ref.rollout.tensor_model_parallel_size
        return dist.new_subgroups(group_size=tp)[0] if tp > 1 else None

    def _check_memory(self) -> str:
        """This GPU's memory at rollout and update, estimated before any model loads (`memory_plan`):
        one line (after a note when vLLM's share was lowered to fit), or a ConfigError naming the keys
        to change when it does not fit."""
        from transformers import AutoConfig

        model = self.config.actor_rollout_ref.model
        shape = memory_plan.ModelShape.from_hf_config(AutoConfig.from_pretrained(model.path, trust_remote_code=model.trust_remote_code))
        total_gb = torch.cuda.get_device_properties(self.device).total_memory / memory_plan.GIB
        settings = memory_plan.settings_of(self.config, self.world_size, total_gb)
        note = None
        if not self.config.trainer.skip_memory_check:
            settings, note = memory_plan.fit_rollout_share(shape, settings)
            if note:
                self.rollout_share = settings.vllm_share
        try:
            line = memory_plan.check(shape, settings)
            return f"note: {note}\n{line}" if note else line
        except ValueError as exc:
            if not self.config.trainer.skip_memory_check:
                raise ConfigError(str(exc)) from None
            return f"WARNING (trainer.skip_memory_check=True: starting anyway) {exc}"

    def _load_reference(self) -> torch.nn.Module:
        """The reference model (the EMA teacher's start) from the model folder, sharded."""
        arr, on_gpu = self.config.actor_rollout_ref, self.device.type == "cuda"
        return self._load_and_shard(train=False, compute_dtype=resolve_dtype(arr.model.dtype, self.device), reshard=True,
                                    offload=on_gpu and arr.ref.fsdp_config.param_offload)

    def _load_and_shard(self, train: bool, compute_dtype: torch.dtype, reshard: bool, offload: bool) -> torch.nn.Module:
        model_cfg = self.config.actor_rollout_ref.model
        model = sharding.load_model(model_cfg.path, self.attn_impl, model_cfg.trust_remote_code, self.rank, train,
                                    gradient_checkpointing=model_cfg.enable_gradient_checkpointing)
        sharding.shard_model(model, self.mesh, compute_dtype, offload, reshard, self.rank, self.device)
        return model

    def _build_rollout(self, tp_group: dist.ProcessGroup | None) -> RolloutRunner:
        """The rollout engine on the model folder, then the trainer's RNGs seeded (after the engine:
        in-process vLLM resets random / numpy / torch to its own seed)."""
        config, model = self.config, self.config.actor_rollout_ref.model
        rollout = config.actor_rollout_ref.rollout
        settings = EngineSettings(
            name=rollout.name, max_model_len=config.data.max_prompt_length + config.data.max_response_length,
            dtype=rollout.dtype, seed=rollout_seed(rollout, self.rank), attn_implementation=self.attn_impl,
            trust_remote_code=model.trust_remote_code, hf_micro_batch_size=rollout.micro_batch_size,
            gpu_memory_utilization=self.rollout_share, tensor_parallel_size=rollout.tensor_model_parallel_size,
            enforce_eager=rollout.enforce_eager, sleep_mode=rollout.free_cache_engine, max_num_seqs=rollout.max_num_seqs,
            max_num_batched_tokens=rollout.max_num_batched_tokens,
        )
        engine = make_engine(settings, model.path, self.tokenizer, self.device)
        rng_state.seed_process(rollout.seed + self.rank)
        return RolloutRunner(engine, rollout, config.data.max_response_length, self.tokenizer, pad_token_id(self.tokenizer),
                             eos_token_ids(self.tokenizer, model.path), self.device, self.rank, tp_group)

    def _model(self, which: str) -> torch.nn.Module:
        if which in ("actor", "policy"):
            return self.actor
        if which in ("ref", "teacher"):
            return self.ref
        raise ValueError(f"unknown model {which!r}: use 'actor' or 'ref'")

    # ------------------------------------------------------------------ rollouts
    @register(Dispatch.SPLIT_ROWS, Generated.gather)
    def generate_sequences(self, prompts: Batch, role: str, prompt_width: int) -> Generated:
        """Each prompt's rollouts (row `prompt_ids`), sampled as `role` (policy, teacher or
        validation) wants, as a rollout `Batch` (`RolloutRunner.generate`); prompts are left-padded
        to `prompt_width`, the longest prompt of the whole batch, so that every rank's rows align."""
        which = "ref" if role == "teacher" else "actor"
        version = self.teacher_version if role == "teacher" else self.policy_version
        engine_dtype = resolve_dtype(self.config.actor_rollout_ref.rollout.dtype, self.device)  # what vLLM holds
        return self.rollout.generate(prompts, role, prompt_width, version,
                                     lambda: sharding.full_params(self._model(which), self.device, engine_dtype))

    # ------------------------------------------------------------------ log-probs
    def _forward_settings(self) -> ForwardSettings:
        model = self.config.actor_rollout_ref.model
        return ForwardSettings(temperature=self.config.actor_rollout_ref.rollout.temperature, layout=self._forward_layout(),
                               chunk_size=model.logits_chunk_size,
                               compiled=self.compiled_head)

    def _forward_layout(self) -> str:
        model = self.config.actor_rollout_ref.model
        return sharding.forward_layout(model.use_remove_padding, model.share_prompt_prefix, self.device, self.attn_impl)

    @register(Dispatch.SPLIT_ROWS, concat_rows)
    def compute_log_prob(self, batch: Batch, model: str = "actor", with_entropy: bool = False,
                         with_self_certainty: bool = False) -> Batch:
        """`old_log_probs` (model="actor") or `ref_log_probs` (model="ref") of the response tokens
        [N, R], plus `entropy` / `self_certainty` [N, R] when asked (0 on padding). Logits are
        divided by rollout.temperature."""
        net = self._model(model)
        arr = self.config.actor_rollout_ref
        section = arr.rollout if net is self.actor else arr.ref
        budget = section.log_prob_max_token_len_per_gpu if section.log_prob_use_dynamic_bsz else None
        stats = compute_token_stats(net, batch.to(self.device), self._forward_settings(),
                                    section.log_prob_micro_batch_size_per_gpu, budget, self.world_size)
        tensors = {"old_log_probs" if net is self.actor else "ref_log_probs": stats.log_probs}
        if with_entropy:
            tensors["entropy"] = stats.entropy
        if with_self_certainty:
            tensors["self_certainty"] = stats.self_certainty
        return Batch(tensors=tensors)

    # ------------------------------------------------------------------ update
    def _ppo_settings(self) -> PPOSettings:
        a = self.config.actor_rollout_ref.actor
        correction = self.config.algorithm.rollout_correction
        return PPOSettings(
            forward=self._forward_settings(), ppo_epochs=a.ppo_epochs, mini_batch_size=a.ppo_mini_batch_size,
            micro_batch_rows=a.ppo_micro_batch_size_per_gpu, max_tokens=a.ppo_max_token_len_per_gpu if a.use_dynamic_bsz else None,
            shuffle=a.shuffle, loss_mode=a.policy_loss.loss_mode, clip_low=a.clip_low, clip_high=a.clip_high,
            clip_c=a.clip_ratio_c,
            loss_agg_mode=a.loss_agg_mode, loss_scope=a.loss_agg_scope, per_view_loss=a.co_reward_loss == "per_view",
            entropy_coeff=a.entropy_coeff, use_kl_loss=a.use_kl_loss, kl_loss_coef=a.kl_loss_coef,
            kl_loss_type=a.kl_loss_type, grad_clip=a.grad_clip or 0.0,
            loss_scale_factor=a.loss_scale_factor or self.config.data.max_response_length,
            mask_truncated=a.mask_truncated_completions, rollout_is=correction.rollout_is,
            rollout_is_threshold=correction.rollout_is_threshold, defer_grad_sync=self.device.type == "cpu",
            reshard_after_forward=a.fsdp_config.reshard_after_forward,
        )

    @register(Dispatch.SPLIT_ROWS, ActorUpdate.gather)
    def update_actor(self, batch: Batch, rollouts_per_prompt: int) -> ActorUpdate:
        """PPO/GRPO update on this rank's rows (`actor.ppo_update`); a mini-batch counts prompts, each
        with `rollouts_per_prompt` rows (Co-rewarding-I trains both views of a pair together: 2 x n).
        The LR scheduler steps once per call. Without `old_log_probs` in the batch the update is
        on-policy and returns the log-probs and entropies of its own forward."""
        lr = float(self.lr_scheduler.get_last_lr()[0])
        result = ppo_update(self.actor, self.optimizer, batch, self._ppo_settings(), rollouts_per_prompt,
                            self.world_size, self.device)
        self.lr_scheduler.step()
        self.policy_version += 1
        self.skipped_steps += int(result.metrics["actor/skipped_steps"])
        result.metrics["actor/lr"] = lr
        if self.device.type == "cuda":  # the peak since the last update: one whole step (verl's names)
            result.metrics["perf/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            result.metrics["perf/max_memory_reserved_gb"] = torch.cuda.max_memory_reserved(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        return result

    @register(Dispatch.SAME_ARGS, first_rank)
    def update_teacher(self, weight: float) -> None:
        """In place on the local shards: ref = weight * ref + (1 - weight) * policy."""
        sharding.reshard(self.ref)
        sharding.reshard(self.actor)
        with torch.no_grad():
            teacher = {name: sharding.local(t) for name, t in self.ref.named_parameters()}
            policy = {name: sharding.local(p) for name, p in self.actor.named_parameters()}
            ema_update_(teacher, policy, float(weight))
        self.teacher_version += 1

    # ------------------------------------------------------------------ checkpoints and export
    @register(Dispatch.SAME_ARGS, first_rank)
    def export_hf(self, out_dir: str, which: str = "actor") -> None:
        """A plain HF folder (model.safetensors in float32, config, generation config, tokenizer)
        of the policy (`actor`) or the reference / teacher (`ref`). Call on all ranks."""
        worker_checkpoint.export(self, self._model(which), Path(out_dir))

    @register(Dispatch.SAME_ARGS, first_rank)
    def save_checkpoint(self, step_dir: str) -> None:
        """This worker's part of the checkpoint (`checkpoint/worker_checkpoint` writes it, `checkpoint_layout` names
        what and where). Call on all ranks; a write that fails on any rank (a full disk) makes every
        rank raise the same one-line `WorkerCheckpointError` at once."""
        worker_checkpoint.save(self, Path(step_dir))

    @register(Dispatch.SAME_ARGS, first_rank)
    def load_checkpoint(self, step_dir: str) -> None:
        """Restore what `save_checkpoint` wrote (policy, optimizer, scheduler, reference model, this
        rank's RNG states). Call on all ranks; a missing or unreadable file fails on every rank together.
        A checkpoint of another worker count loads too: the full policy and reference are sharded
        anew, the optimizer re-sliced from every rank's shard, the RNG streams re-derived."""
        root = Path(step_dir)
        saved = worker_checkpoint.load_models(self, root)
        if not saved.get("ref_saved", True) and self.teacher_version > 0:
            self.ref = self._load_reference()  # not saved: the model folder, which this teacher has moved away from
        worker_checkpoint.load_training_state(self, root, saved)

    # ------------------------------------------------------------------ helpers
    @register(Dispatch.SAME_ARGS, first_rank)
    def get_versions(self) -> dict[str, int]:
        return {"policy": self.policy_version, "teacher": self.teacher_version, "skipped_steps": self.skipped_steps}

    @register(Dispatch.SAME_ARGS, first_rank)
    def get_full_state_dict(self, which: str = "actor") -> dict[str, torch.Tensor]:
        """Full CPU state dict on rank 0 (empty elsewhere); for tests and small models only."""
        return sharding.gather_full_state(self._model(which))

    @register(Dispatch.SAME_ARGS, first_rank)
    def leave_process_group(self) -> None:
        runner = getattr(self, "rollout", None)  # None: init_model did not get that far
        if runner is not None:
            runner.engine.close()  # an engine's groups live under this process group: it leaves them first
        if dist.is_initialized():
            dist.destroy_process_group()
