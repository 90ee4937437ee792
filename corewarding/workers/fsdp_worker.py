"""The worker that holds, on one device, the FSDP2-sharded policy (AdamW + LR schedule), the
FSDP2-sharded reference model (the EMA teacher of Co-rewarding-II) and a rollout engine.

`RayWorkerGroup` (group.py) starts one per device, wrapped with `ray.remote`, and sets
MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE / LOCAL_RANK; `init_model` forms the
torch.distributed group (gloo on CPU, NCCL on GPU). Every method is called on all ranks at once
(FSDP2 all-gathers are collectives), each rank with its own equal share of the rows.

Rollout with `rollout.tensor_model_parallel_size` = tp > 1 (vLLM on GPU nodes): the ranks form
world / tp TP groups of consecutive ranks; in `generate_sequences` every rank of a group generates
the union of the group's prompts (the same requests, in lock step) and keeps its own slice. Sampling
draws from a rollout RNG stream seeded `rollout.seed + rank // tp` (shared by a TP group), swapped in
around `generate`, apart from the trainer's per-rank RNGs (seeded `rollout.seed + rank`).

Numerics, as verl:
- logits are divided by `rollout.temperature` before log-probs / entropy / self-certainty, in
  `compute_log_prob` and in `update_actor`;
- gradient accumulation scales each micro-batch's loss by micro_rows / mini_rows, so with
  `token-mean` the mini-batch loss is the row-weighted mean of the micro-batches' token means
  (not the token mean over the whole mini-batch), and FSDP averages the gradients over ranks;
- master weights are float32 everywhere; on GPU FSDP2 computes in `model.dtype` (bf16) with
  float32 gradient reduction. The reference model keeps float32 shards too, so that a 1e-4 EMA
  step is not lost to bf16 rounding.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from corewarding.algos import ema_update_
from corewarding.batch import Batch
from corewarding.workers.actor import (
    ActorUpdate,
    ForwardSettings,
    PPOSettings,
    compute_token_stats,
    install_token_stats,
    ppo_update,
)
from corewarding.workers.dispatch import collect, concat_rows
from corewarding.trainer.checkpoint import WorkerCheckpointError, describe_error, fsync_dir, fsync_file, fsync_tree
from corewarding.workers.rollout import (
    RolloutOutput,
    SamplingSettings,
    build_rollout_engine,
    eos_token_ids,
    resolve_dtype,
    rollout_seed,
    validation_sampling,
)

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"  # actor/optim/: param groups, scheduler, counters
CHECKPOINT_FORMAT = 2  # 2: safetensors + JSON (1: torch.save pickles + torch.distributed.checkpoint)


class ActorRolloutRefWorker:
    def __init__(self, config: dict, rank: int, world_size: int) -> None:
        self.config = config
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.arr = config["actor_rollout_ref"]
        self.actor_cfg = self.arr["actor"]
        self.rollout_cfg = self.arr["rollout"]
        self.ref_cfg = self.arr["ref"]
        self.model_cfg = self.arr["model"]
        self.policy_version = 0
        self.teacher_version = 0
        self.skipped_steps = 0
        # Which weights the rollout engine holds now: a set of equivalent (which, version) labels.
        self._engine_holds: set[tuple[str, int]] = set()
        self.tp = int(self.rollout_cfg.get("tensor_model_parallel_size") or 1)
        if self.tp < 1 or self.world_size % self.tp:
            raise ValueError(
                f"actor_rollout_ref.rollout.tensor_model_parallel_size={self.tp} does not divide the "
                f"{self.world_size} workers (trainer.nnodes x trainer.n_gpus_per_node)"
            )
        self.tp_group: dist.ProcessGroup | None = None  # this rank's TP group (init_model, tp > 1)
        self.device = torch.device("cpu")  # until init_model
        self._rollout_rng = _seeded_rng_state(rollout_seed(config, self.rank), self.device)

    # ------------------------------------------------------------------ setup
    def init_model(self) -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # Ray forwards every worker's per-load bars to the driver

        path = self.model_cfg.get("path")
        self.model_path = str(Path(os.path.expanduser(str(path)))) if path else ""
        if not path or not (Path(self.model_path) / "config.json").exists():
            raise FileNotFoundError(
                f"actor_rollout_ref.model.path={path!r} is not a HF model folder (no config.json): "
                "set actor_rollout_ref.model.path=/path/to/model (e.g. LLM_PATH for the run scripts)"
            )
        self._init_distributed()

        tok_path = self.model_cfg.get("tokenizer_path") or self.model_path
        self.tokenizer = AutoTokenizer.from_pretrained(
            os.path.expanduser(str(tok_path)), trust_remote_code=bool(self.model_cfg.get("trust_remote_code", False))
        )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.eos_ids = eos_token_ids(self.tokenizer, self.model_path)

        self.compute_dtype = resolve_dtype(self.model_cfg.get("dtype"), self.device)
        self.attn_impl = self._attn_implementation()
        self.model_cfg["attn_implementation"] = self.attn_impl  # the hf rollout engine loads with the same

        actor_fsdp = self.actor_cfg.get("fsdp_config") or {}
        self.actor = self._load_model(train=True)
        self._shard(
            self.actor,
            offload=self.device.type == "cuda"
            and bool(actor_fsdp.get("param_offload") or actor_fsdp.get("optimizer_offload")),
            reshard=bool(actor_fsdp.get("reshard_after_forward", True)),
        )
        optim = self.actor_cfg["optim"]
        self.optimizer = torch.optim.AdamW(
            self.actor.parameters(),
            lr=float(optim["lr"]),
            betas=tuple(float(b) for b in optim.get("betas", (0.9, 0.999))),
            eps=float(optim.get("eps", 1e-8)),
            weight_decay=float(optim.get("weight_decay", 0.01)),
        )
        from corewarding.algos import build_lr_scheduler

        total = int(optim.get("total_training_steps") or -1)
        if total <= 0:
            raise ValueError(
                "actor_rollout_ref.actor.optim.total_training_steps is not set (the trainer sets it before "
                "init_model; set it yourself when using the workers directly)"
            )
        warmup = optim.get("lr_warmup_steps")
        self.lr_scheduler = build_lr_scheduler(
            self.optimizer,
            total_steps=total,
            warmup_steps_ratio=float(optim.get("lr_warmup_steps_ratio") or 0.0),
            warmup_steps=None if warmup is None else int(warmup),
            style=str(optim.get("warmup_style") or "constant"),
            min_lr_ratio=float(optim.get("min_lr_ratio") or 0.0),
        )

        self.ref = self._load_model(train=False)
        self._shard(
            self.ref,
            offload=self.device.type == "cuda" and bool((self.ref_cfg.get("fsdp_config") or {}).get("param_offload")),
            reshard=True,
        )

        self._build_engine()

    def _init_distributed(self) -> None:
        """The device, the torch.distributed group (gloo on CPU, NCCL on GPU), the FSDP mesh and,
        with tp > 1, this rank's TP group of consecutive ranks (the layout vLLM's external_launcher
        uses; every rank creates every group, in the same order)."""
        from torch.distributed.device_mesh import init_device_mesh

        if str(self.config["trainer"].get("device", "cuda")) == "cpu":
            torch.set_num_threads(int(self.config["trainer"].get("cpus_per_worker") or 1))
            self.device = torch.device("cpu")
            backend = "gloo"
        else:
            if not torch.cuda.is_available():
                raise RuntimeError("trainer.device=cuda but no GPU is visible: set trainer.device=cpu for a CPU run")
            local = int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.device_count() > 1 else 0
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
            backend = "nccl"
        if not dist.is_initialized():
            os.environ.setdefault("RANK", str(self.rank))
            os.environ.setdefault("WORLD_SIZE", str(self.world_size))
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            kwargs: dict[str, Any] = dict(backend=backend, rank=self.rank, world_size=self.world_size)
            if self.device.type == "cuda":
                kwargs["device_id"] = self.device
            dist.init_process_group(**kwargs)
        self.mesh = init_device_mesh(self.device.type, (self.world_size,), mesh_dim_names=("fsdp",))
        if self.tp > 1:
            self.tp_group, _ = dist.new_subgroups(group_size=self.tp)

    def _build_engine(self) -> None:
        """The rollout engine on the model folder (seeded `rollout_seed`), then the trainer's RNGs
        seeded (after the engine: in-process vLLM resets random / numpy / torch to its own seed)."""
        self.engine = build_rollout_engine(self.config, self.model_path, None, self.tokenizer, self.device, self.rank)
        self._seed_rngs()
        # Policy and teacher start from the same folder, which the engine has just loaded.
        self._engine_holds = {("policy", 0), ("teacher", 0)}

    def _seed_rngs(self) -> None:
        """The trainer's RNGs (random, numpy, torch) from rollout.seed + rank; the rollout stream
        from `rollout_seed` (rollout.seed + rank // tp)."""
        seed = int(self.rollout_cfg.get("seed") or 0) + self.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self._rollout_rng = _seeded_rng_state(rollout_seed(self.config, self.rank), self.device)

    def _attn_implementation(self) -> str:
        impl = self.model_cfg.get("attn_implementation")
        if impl:
            return str(impl)
        if self.device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        return "sdpa"

    def _load_model(self, train: bool) -> torch.nn.Module:
        """Rank 0 reads the weights (float32 master copy); the other ranks build the model on the
        meta device and receive their shards from rank 0 in `_shard`, so a node holds one full copy
        in host memory, not one per GPU."""
        from transformers import AutoConfig, AutoModelForCausalLM

        kwargs = dict(
            dtype=torch.float32,  # master weights; FSDP2 mixed precision casts for compute
            attn_implementation=self.attn_impl,
            trust_remote_code=bool(self.model_cfg.get("trust_remote_code", False)),
        )
        if self.rank == 0:
            model = AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs)
        else:
            config = AutoConfig.from_pretrained(self.model_path, trust_remote_code=kwargs["trust_remote_code"])
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, **kwargs)
        model.config.use_cache = False
        if train:
            if self.model_cfg.get("enable_gradient_checkpointing"):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
        else:
            model.requires_grad_(False)
            model.eval()
        return model

    def _shard(self, model: torch.nn.Module, offload: bool, reshard: bool) -> None:
        """fully_shard per decoder layer + root, then rank 0's weights and buffers to every rank."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kwargs: dict[str, Any] = dict(mesh=self.mesh, reshard_after_forward=reshard)
        if self.compute_dtype != torch.float32:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
        if offload:
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
        full = dict(model.state_dict()) if self.rank == 0 else {}
        layer_classes = set(getattr(model, "_no_split_modules", None) or [])
        layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
        if not layers:
            layers = list(model.model.layers)
        for layer in layers:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)  # moves parameters and buffers to the mesh's device (CPU when offloaded)
        if self.rank != 0:
            model.to_empty(device="cpu" if offload else self.device)
            if offload:
                for module in model.modules():
                    for name, buf in module.named_buffers(recurse=False):
                        module._buffers[name] = buf.to(self.device)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full
        for buf in model.buffers():  # non-persistent buffers (rotary inv_freq) are not in the state dict
            dist.broadcast(buf, src=0)
        install_token_stats(model)

    def _model(self, which: str) -> torch.nn.Module:
        if which in ("actor", "policy"):
            return self.actor
        if which in ("ref", "teacher"):
            return self.ref
        raise ValueError(f"unknown model {which!r}: use 'actor' or 'ref'")

    # --------------------------------------------------------------- weights
    def _full_params(self, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) per parameter, one all-gather at a time (a collective: every rank
        must consume the whole iterator). Tied aliases (lm_head.weight) are not repeated."""
        for name, param in model.named_parameters():
            value = param.detach()
            if isinstance(value, DTensor):
                if value.device.type != self.device.type:
                    value = value.to(self.device)
                value = value.full_tensor()
            yield name, value

    def _push_weights(self, which: str) -> float:
        version = self.policy_version if which == "policy" else self.teacher_version
        if (which, version) in self._engine_holds:
            return 0.0
        start = time.perf_counter()
        self.engine.load_weights(self._full_params(self.actor if which == "policy" else self.ref))
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self._engine_holds = {(which, version)}
        return time.perf_counter() - start

    # -------------------------------------------------------------- rollout
    def _sampling(self, use_teacher: bool, validate: bool) -> SamplingSettings:
        r = self.rollout_cfg
        max_new = int(self.config["data"]["max_response_length"])
        if validate:
            return validation_sampling(r.get("val_kwargs") or {}, max_new, tuple(self.eos_ids))
        n = int(r.get("teacher_n") or r["n"]) if use_teacher else int(r["n"])
        return SamplingSettings(
            n=n,
            temperature=float(r.get("temperature", 1.0)),
            top_p=float(r.get("top_p", 1.0)),
            top_k=int(r.get("top_k", -1)),
            max_new_tokens=max_new,
            stop_token_ids=tuple(self.eos_ids),
        )

    @collect(concat_rows)
    def generate_sequences(self, batch: Batch, use_teacher: bool = False, validate: bool = False) -> Batch:
        """This rank's prompts (left-padded `input_ids` / `attention_mask`) -> each prompt's rollouts
        (prompt-major), with `prompts` [N, P] (the input width), `responses` [N, R] right-padded to
        R = data.max_response_length, `response_mask`, `input_ids` / `attention_mask` /
        `position_ids` [N, P + R], optional `rollout_log_probs`, and rows `response_text` and
        `sample_index` (0 .. n-1: the order in which the prompt's rollouts were generated; votes
        break ties by it, whatever the batch's later row order)."""
        sampling = self._sampling(use_teacher, validate)
        input_ids = batch.tensors["input_ids"].cpu()
        attention_mask = batch.tensors["attention_mask"].cpu()
        prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        outputs, sync_s, gen_s = self._rollout(prompts, sampling, "teacher" if use_teacher else "policy")

        n_rows, width = len(outputs), int(self.config["data"]["max_response_length"])
        responses = torch.full((n_rows, width), self.pad_token_id, dtype=torch.long)
        response_mask = torch.zeros((n_rows, width), dtype=torch.long)
        have_logprobs = all(o.logprobs is not None for o in outputs) and n_rows > 0
        rollout_log_probs = torch.zeros((n_rows, width), dtype=torch.float32) if have_logprobs else None
        for i, out in enumerate(outputs):
            ids = list(out.token_ids)[:width]
            responses[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_mask[i, : len(ids)] = 1
            if rollout_log_probs is not None:
                lp = list(out.logprobs)[: len(ids)]
                rollout_log_probs[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        texts = self.tokenizer.batch_decode(
            [responses[i, : int(response_mask[i].sum())].tolist() for i in range(n_rows)], skip_special_tokens=True
        )

        repeated = batch.repeat_interleave(sampling.n)
        prompt_ids = repeated.tensors["input_ids"].cpu()
        prompt_mask = repeated.tensors["attention_mask"].cpu()
        full_mask = torch.cat([prompt_mask, response_mask], dim=1)
        # Other input tensors ride along, repeated; the prompt-width ones are replaced.
        replaced = ("input_ids", "attention_mask", "position_ids")
        tensors = {k: v for k, v in repeated.tensors.items() if k not in replaced}
        tensors |= {
            "prompts": prompt_ids,
            "responses": responses,
            "response_mask": response_mask,
            "input_ids": torch.cat([prompt_ids, responses], dim=1),
            "attention_mask": full_mask,
            "position_ids": (full_mask.cumsum(dim=1) - 1).clamp(min=0),
        }
        if rollout_log_probs is not None:
            tensors["rollout_log_probs"] = rollout_log_probs
        rows = dict(repeated.rows)
        rows["response_text"] = texts
        rows["sample_index"] = list(range(sampling.n)) * len(batch)  # prompt-major: n per prompt
        meta = dict(batch.meta)
        meta["timing/weight_sync"] = sync_s
        meta["timing/generate_engine"] = gen_s
        return Batch(tensors=tensors, rows=rows, meta=meta)

    def _rollout(
        self, prompts: list[list[int]], sampling: SamplingSettings, which: str
    ) -> tuple[list[RolloutOutput], float, float]:
        """`sampling.n` outputs per prompt (prompt-major) from the engine holding `which` weights,
        and the seconds spent pushing weights and generating. With rollout.free_cache_engine the
        engine is woken first and put to sleep after. With tp > 1 every rank of the TP group runs
        the group's prompts (the same requests, in lock step) and keeps its own slice."""
        free_cache = bool(self.rollout_cfg.get("free_cache_engine", False))
        if free_cache:
            self.engine.wake_up()
        sync_s = self._push_weights(which)
        group_prompts, start = gather_group_prompts(prompts, self.tp_group)
        started = time.perf_counter()
        with self._rollout_rng_stream():
            outputs = self.engine.generate(group_prompts, sampling)
        gen_s = time.perf_counter() - started
        if free_cache and self.engine.sleep():
            self._engine_holds = set()  # the engine dropped its weights: push after the next wake-up
        if len(outputs) != len(group_prompts) * sampling.n:
            raise RuntimeError(
                f"engine returned {len(outputs)} outputs for {len(group_prompts)} prompts x n={sampling.n}"
            )
        return own_outputs(outputs, start, len(prompts), sampling.n), sync_s, gen_s

    @contextmanager
    def _rollout_rng_stream(self) -> Iterator[None]:
        """Sampling draws from the rollout stream (the device's default generator, which HF
        `generate` and vLLM's sampler use), the trainer's per-rank state is put back after."""
        trainer_state = _device_rng_state(self.device)
        _set_device_rng_state(self._rollout_rng, self.device)
        try:
            yield
        finally:
            self._rollout_rng = _device_rng_state(self.device)
            _set_device_rng_state(trainer_state, self.device)

    # ------------------------------------------------------------ log-probs
    def _forward_settings(self) -> ForwardSettings:
        return ForwardSettings(
            temperature=float(self.rollout_cfg.get("temperature", 1.0)),
            layout=self._forward_layout(),
            chunk_size=int(self.model_cfg.get("logits_chunk_size") or 1024),
        )

    def _forward_layout(self) -> str:
        """padded, packed (use_remove_padding) or shared_prefix (packed, one copy of each prompt:
        share_prompt_prefix, auto on CPU workers; it needs an attention that takes a 4-D mask)."""
        if not self.model_cfg.get("use_remove_padding", False):
            return "padded"
        share = str(self.model_cfg.get("share_prompt_prefix", "auto"))
        if share == "auto":
            share = str(self.device.type == "cpu")
        if share != "True":
            return "packed"
        if self.attn_impl.startswith("flash"):
            raise ValueError(
                f"actor_rollout_ref.model.share_prompt_prefix=True needs an attention that takes a 4-D mask (sdpa, eager), "
                f"not {self.attn_impl}: set it to auto or False"
            )
        return "shared_prefix"

    @collect(concat_rows)
    def compute_log_prob(
        self,
        batch: Batch,
        model: str = "actor",
        calculate_entropy: bool = False,
        calculate_self_certainty: bool = False,
    ) -> Batch:
        """`old_log_probs` (model="actor") or `ref_log_probs` (model="ref") of the response tokens
        [N, R], plus `entropy` / `self_certainty` [N, R] when asked (0 on padding). Logits are
        divided by rollout.temperature."""
        net = self._model(model)
        section = self.rollout_cfg if net is self.actor else self.ref_cfg
        micro = int(section.get("log_prob_micro_batch_size_per_gpu") or len(batch) or 1)
        budget = int(section["log_prob_max_token_len_per_gpu"]) if section.get("log_prob_use_dynamic_bsz") else None
        stats = compute_token_stats(net, batch.to(self.device), self._forward_settings(), micro, budget)
        tensors = {"old_log_probs" if net is self.actor else "ref_log_probs": stats.log_probs}
        if calculate_entropy:
            tensors["entropy"] = stats.entropy
        if calculate_self_certainty:
            tensors["self_certainty"] = stats.self_certainty
        return Batch(tensors=tensors)

    # ---------------------------------------------------------------- update
    def _ppo_settings(self) -> PPOSettings:
        a = self.actor_cfg
        clip = float(a.get("clip_ratio", 0.2))
        clip_c = a.get("clip_ratio_c", 3.0)
        return PPOSettings(
            forward=self._forward_settings(),
            ppo_epochs=int(a.get("ppo_epochs", 1)),
            mini_batch_size=int(a["ppo_mini_batch_size"]),
            micro_batch_rows=int(a.get("ppo_micro_batch_size_per_gpu") or 1),
            max_tokens=int(a["ppo_max_token_len_per_gpu"]) if a.get("use_dynamic_bsz") else None,
            shuffle=bool(a.get("shuffle", False)),
            clip_low=float(a["clip_ratio_low"]) if a.get("clip_ratio_low") is not None else clip,
            clip_high=float(a["clip_ratio_high"]) if a.get("clip_ratio_high") is not None else clip,
            clip_c=float(clip_c) if clip_c is not None else None,
            loss_agg_mode=str(a.get("loss_agg_mode", "token-mean")),
            loss_scope=str(a.get("loss_agg_scope", "mini_batch")),
            per_view_loss=str(a.get("co_reward_loss", "joint")) == "per_view",
            entropy_coeff=float(a.get("entropy_coeff", 0.0)),
            use_kl_loss=bool(a.get("use_kl_loss", False)),
            kl_loss_coef=float(a.get("kl_loss_coef", 0.0)),
            kl_loss_type=str(a.get("kl_loss_type", "low_var_kl")),
            grad_clip=float(a.get("grad_clip", 1.0) or 0.0),
        )

    @collect(ActorUpdate.gather)
    def update_actor(self, batch: Batch) -> ActorUpdate:
        """PPO/GRPO update on this rank's rows (`actor.ppo_update`). Rollouts per prompt (for the
        mini-batch size in rows) is `batch.meta["rollouts_per_prompt"]` when the trainer sets it
        (Co-rewarding-I trains both views of a pair in one mini-batch: 2 x n), else rollout.n. The LR
        scheduler steps once per call. Without `old_log_probs` in the batch the update is on-policy
        and returns the log-probs and entropies of its own forward."""
        per_prompt = int(batch.meta.get("rollouts_per_prompt") or self.rollout_cfg["n"])
        lr = float(self.lr_scheduler.get_last_lr()[0])
        result = ppo_update(self.actor, self.optimizer, batch, self._ppo_settings(), per_prompt, self.world_size,
                            self.device)
        self.lr_scheduler.step()
        self.policy_version += 1
        self.skipped_steps += int(result.metrics["actor/skipped_steps"])
        result.metrics["actor/lr"] = lr
        return result

    # ----------------------------------------------------------------- teacher
    def update_teacher(self, weight: float) -> None:
        """In place on the local shards: ref = weight * ref + (1 - weight) * policy."""
        with torch.no_grad():
            teacher = {name: _local(t) for name, t in self.ref.named_parameters()}
            policy = {name: _local(p) for name, p in self.actor.named_parameters()}
            ema_update_(teacher, policy, float(weight))
        self.teacher_version += 1

    # ------------------------------------------------------------- state I/O
    def _aliases(self, model: torch.nn.Module) -> dict[str, str]:
        """Tied-parameter aliases: alias name -> canonical name (e.g. lm_head.weight -> embed)."""
        canonical = {id(p): n for n, p in model.named_parameters()}
        return {
            n: canonical[id(p)]
            for n, p in model.named_parameters(remove_duplicate=False)
            if canonical.get(id(p)) not in (None, n)
        }

    def _gather_full(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict on rank 0 (CPU; empty on other ranks), tied aliases left out."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        for alias in self._aliases(model):
            state.pop(alias, None)
        return {k: v.contiguous() for k, v in state.items()}

    def _load_full(self, model: torch.nn.Module, file: Path) -> None:
        """Rank 0 reads `file` (safetensors), every rank gets its shards; a file rank 0 cannot read
        fails on every rank at once (no rank left waiting in the broadcast)."""
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        state: dict[str, torch.Tensor] = {}
        error = None
        if self.rank == 0:
            try:
                state = load_file(str(file))
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own kinds; all ranks must learn of it
                error = exc
            for alias, canonical in self._aliases(model).items():
                if alias not in state and canonical in state:
                    state[alias] = state[canonical]
        self._agree(error, f"cannot read {file}")
        set_model_state_dict(
            model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
        )

    def _agree(self, error: BaseException | None, what: str) -> None:
        agree_on_error(error, what, self.rank, self.world_size)

    def _write_hf_folder(self, out_dir: Path, state: dict[str, torch.Tensor], with_config: bool = True) -> None:
        """model.safetensors (+ config, generation config, tokenizer) in `out_dir`, all fsynced."""
        out_dir.mkdir(parents=True, exist_ok=True)
        _save_safetensors(state, out_dir / MODEL_FILE, metadata={"format": "pt"})
        if with_config:
            self.actor.config.save_pretrained(out_dir)
            if getattr(self.actor, "generation_config", None) is not None:
                self.actor.generation_config.save_pretrained(out_dir)
            self.tokenizer.save_pretrained(out_dir)
        fsync_tree(out_dir)

    def export_hf(self, out_dir: str, which: str = "actor") -> None:
        """A plain HF folder (model.safetensors in float32, config, generation config, tokenizer)
        of the policy (`actor`) or the reference / teacher (`ref`). Call on all ranks."""
        state = self._gather_full(self._model(which))
        error = _attempt(lambda: self._write_hf_folder(Path(out_dir), state)) if self.rank == 0 else None
        self._agree(error, f"export to {out_dir} failed")

    def save_checkpoint(self, step_dir: str) -> None:
        """step_dir/actor/ (HF folder of the policy), ref/model.safetensors, actor/optim/rank_<r>.safetensors
        (this rank's optimizer shard) with actor/optim/state.json (param groups, scheduler,
        counters), rng/rank_<r>.json. Only safetensors and JSON: nothing in a checkpoint is
        unpickled, so loading one cannot run code. Every file is fsynced. Call on all ranks; a
        write that fails on any rank (a full disk) makes every rank raise the same one-line
        `WorkerCheckpointError` at once."""
        root = Path(step_dir)
        actor_state = self._gather_full(self.actor)
        ref_state = self._gather_full(self.ref)
        error = _attempt(lambda: self._write_models(root, actor_state, ref_state)) if self.rank == 0 else None
        del actor_state, ref_state
        self._agree(error, "write failed")
        # An optimizer that never stepped has no state; asking for it would fake a step.
        has_state = bool(self.optimizer.state)
        optim = self._optimizer_shard() if has_state else None
        error = _attempt(lambda: self._write_states(root, optim, has_state))
        self._agree(error, "write failed")
        if self.rank == 0:  # the names the other ranks created, now that all have written
            for folder in (root / "actor" / "optim", root / "rng"):
                fsync_dir(folder)

    def _write_models(self, root: Path, actor_state: dict[str, torch.Tensor], ref_state: dict[str, torch.Tensor]) -> None:
        self._write_hf_folder(root / "actor", actor_state)
        self._write_hf_folder(root / "ref", ref_state, with_config=False)
        (root / "actor" / "optim").mkdir(parents=True, exist_ok=True)
        (root / "rng").mkdir(parents=True, exist_ok=True)
        fsync_dir(root)

    def _optimizer_shard(self) -> dict[str, Any]:
        """This rank's optimizer state: local tensors by "<param fqn>::<key>", JSON-able scalars, param groups."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(self.actor, self.optimizer)
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, Any] = {}
        for fqn, entries in state["state"].items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{fqn}::{key}"] = _local(value).detach().to("cpu").contiguous()
                else:
                    scalars[f"{fqn}::{key}"] = value
        return {"tensors": tensors, "scalars": scalars, "param_groups": state["param_groups"]}

    def _write_states(self, root: Path, optim: dict[str, Any] | None, has_state: bool) -> None:
        if optim is not None:
            _save_safetensors(optim["tensors"], root / "actor" / "optim" / f"rank_{self.rank}.safetensors")
        if self.rank == 0:
            state = {
                "format": CHECKPOINT_FORMAT,
                "scheduler": self.lr_scheduler.state_dict(),
                "optimizer_has_state": has_state,
                "optimizer_scalars": optim["scalars"] if optim else {},
                "param_groups": optim["param_groups"] if optim else [],
                "policy_version": self.policy_version,
                "teacher_version": self.teacher_version,
                "skipped_steps": self.skipped_steps,
                "world_size": self.world_size,
            }
            _write_json(root / "actor" / "optim" / STATE_FILE, state)
        _write_json(root / "rng" / f"rank_{self.rank}.json", _rng_to_json(self.device, self._rollout_rng))

    def load_checkpoint(self, step_dir: str) -> None:
        """Restore what `save_checkpoint` wrote (policy, optimizer, scheduler, reference model,
        this rank's RNG states) from safetensors and JSON only. Call on all ranks; a missing or
        unreadable file fails on every rank together."""
        root = Path(step_dir)
        self._check_complete(root)
        extra = json.loads((root / "actor" / "optim" / STATE_FILE).read_text(encoding="utf-8"))
        self._load_full(self.actor, root / "actor" / MODEL_FILE)
        self._load_full(self.ref, root / "ref" / MODEL_FILE)
        if extra["optimizer_has_state"]:
            self._load_optimizer_shard(root, extra)
        else:
            self.optimizer.state.clear()
        self.lr_scheduler.load_state_dict(extra["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr()):
            group["lr"] = lr
        self.policy_version = int(extra["policy_version"])
        self.teacher_version = int(extra["teacher_version"])
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        self._engine_holds = set()
        rng_file = root / "rng" / f"rank_{self.rank}.json"
        error, rollout = None, self._rollout_rng
        try:
            rollout = _rng_from_json(json.loads(rng_file.read_text(encoding="utf-8")), self.device)
        except Exception as exc:  # noqa: BLE001 - a bad file on one rank must fail all ranks together
            error = exc
        self._agree(error, f"cannot read {rng_file}")
        self._rollout_rng = rollout

    def _check_complete(self, root: Path) -> None:
        """Every rank checks every rank's files, so that all raise together (none left in a collective)."""
        optim = root / "actor" / "optim"
        if not (optim / STATE_FILE).exists() and (optim / "extra.pt").exists():
            raise FileNotFoundError(
                f"checkpoint {root} was written by an older version in a pickle format, which is not loaded "
                "(unpickling a file can run code): resume from a checkpoint written by this version"
            )
        needed = [root / "actor" / MODEL_FILE, root / "ref" / MODEL_FILE, optim / STATE_FILE]
        needed += [root / "rng" / f"rank_{r}.json" for r in range(self.world_size)]
        missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"checkpoint {root} is incomplete (missing {', '.join(missing[:3])}): delete it or point "
                "trainer.resume_from_path at a complete one"
            )
        extra = json.loads((optim / STATE_FILE).read_text(encoding="utf-8"))
        if extra.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {root} has format {extra.get('format')!r}, this version reads {CHECKPOINT_FORMAT}")
        if int(extra.get("world_size", -1)) != self.world_size:
            raise ValueError(
                f"checkpoint {root} holds optimizer shards of {extra.get('world_size')} workers, this run has "
                f"{self.world_size}: resume with the same trainer.nnodes x trainer.n_gpus_per_node"
            )
        if extra["optimizer_has_state"]:
            lost = [r for r in range(self.world_size) if not (optim / f"rank_{r}.safetensors").exists()]
            if lost:
                raise FileNotFoundError(f"checkpoint {root} is incomplete (missing actor/optim/rank_{lost[0]}.safetensors)")

    def _load_optimizer_shard(self, root: Path, extra: dict[str, Any]) -> None:
        """Fill this rank's optimizer state, in place, from its shard (same world size, same sharding)."""
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        state = get_optimizer_state_dict(self.actor, self.optimizer)  # the layout, with local shards to fill
        shard_file = root / "actor" / "optim" / f"rank_{self.rank}.safetensors"
        error = None
        try:
            shard = load_file(str(shard_file))
            for fqn, entries in state["state"].items():
                for key, value in entries.items():
                    name = f"{fqn}::{key}"
                    if isinstance(value, torch.Tensor):
                        _local(value).copy_(shard[name])
                    else:
                        entries[key] = extra["optimizer_scalars"][name]
        except Exception as exc:  # noqa: BLE001 - a bad shard on one rank must fail all ranks together
            error = exc
        self._agree(error, f"cannot read {shard_file}")
        groups = extra["param_groups"]
        for group in groups:
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
        state["param_groups"] = groups
        set_optimizer_state_dict(self.actor, self.optimizer, state)

    # -------------------------------------------------------------- helpers
    def get_versions(self) -> dict[str, int]:
        return {"policy": self.policy_version, "teacher": self.teacher_version, "skipped_steps": self.skipped_steps}

    def get_full_state_dict(self, which: str = "actor") -> dict[str, torch.Tensor]:
        """Full CPU state dict on rank 0 (empty elsewhere); for tests and small models only."""
        return self._gather_full(self._model(which))

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _rng_to_json(device: torch.device, rollout: torch.Tensor) -> dict[str, Any]:
    """The trainer's RNG states (random, numpy, torch, cuda) and the rollout stream as plain JSON."""
    version, python_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(python_state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
        "rollout": rollout.tolist(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def _rng_from_json(state: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Set the trainer's RNGs from `_rng_to_json`'s output; returns the rollout stream's state."""
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)
    return torch.tensor(state["rollout"], dtype=torch.uint8)


def agree_on_error(error: BaseException | None, what: str, rank: int, world_size: int) -> None:
    """Every rank learns whether any rank failed (one all-gather of the error texts, where the
    ranks would otherwise wait at a barrier), then all raise the same one-line
    `WorkerCheckpointError` together, instead of the others hanging until the distributed timeout."""
    text = None if error is None else f"{what} on rank {rank}: {describe_error(error)}"
    texts: list[str | None] = [text]
    if world_size > 1:
        texts = [None] * world_size
        dist.all_gather_object(texts, text)
    failed = [t for t in texts if t]
    if failed:
        more = f" (and on {len(failed) - 1} more ranks)" if len(failed) > 1 else ""
        raise WorkerCheckpointError(failed[0] + more)


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, fsynced; its errors (it reports a full disk in words) name the file."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - SafetensorError is not an OSError
        raise RuntimeError(f"{path}: {exc}") from exc
    fsync_file(path)


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _attempt(write: Callable[[], Any]) -> BaseException | None:
    """Run `write`; the exception it raised (any kind: all ranks must hear of it), else None."""
    try:
        write()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def gather_group_prompts(
    prompts: list[list[int]], group: dist.ProcessGroup | None
) -> tuple[list[list[int]], int]:
    """The prompts of every rank of `group` in group-rank order (the same list on every rank) and
    where this rank's own prompts start in it; without a group this rank's prompts and 0."""
    if group is None:
        return prompts, 0
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, prompts, group=group)
    start = sum(len(part) for part in parts[: dist.get_rank(group)])
    return [prompt for part in parts for prompt in part], start


def own_outputs(outputs: Sequence[RolloutOutput], start: int, count: int, n: int) -> list[RolloutOutput]:
    """This rank's part of prompt-major outputs: prompts start .. start + count, n outputs each."""
    return list(outputs[start * n : (start + count) * n])


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _seeded_rng_state(seed: int, device: torch.device) -> torch.Tensor:
    """The state of `device`'s default generator after manual_seed(seed), without touching it."""
    return torch.Generator(device=device).manual_seed(int(seed)).get_state()


def _device_rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_device_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
