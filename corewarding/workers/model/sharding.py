"""Loading a model into FSDP2 shards on every rank, and its full weights back out of them.

Rank 0 reads the weights (a float32 master copy); the other ranks build the model on the meta device
and receive their shards from rank 0, so a node holds one full copy in host memory, not one per GPU.
Every function that gathers or scatters is a collective: all ranks call it together.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from corewarding.workers.model import segment_attention
from corewarding.workers.model.forward import install_token_stats, is_flash_attention

logger = logging.getLogger(__name__)

__all__ = ["attention_implementation", "flash_attention_works", "forward_layout", "full_params", "gather_full_state",
           "load_full_state", "load_model", "local", "reshard", "shard_model", "tied_aliases"]


def flash_attention_works() -> bool:
    """flash-attn's CUDA kernels import. A wheel built for another torch or CUDA is found by
    `find_spec` and only fails when its extension loads (an undefined symbol): import it for real."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401  loads flash_attn_2_cuda
    except (ImportError, OSError) as exc:
        logger.warning("flash-attn is installed but does not load (%s): using SDPA", exc)
        return False
    return True


def attention_implementation(configured: str | None, device: torch.device) -> str:
    """`model.attn_implementation`, or flash-attention 2 where this node has it working (GPU); on CPU
    `sdpa_segments` (packed rows and shared prompts without a [tokens, tokens] mask: linear in the
    number of rows, `segment_attention`); else SDPA."""
    if configured == segment_attention.NAME or (not configured and device.type == "cpu"):
        return segment_attention.register()
    if configured:
        return configured
    if device.type == "cuda" and flash_attention_works():
        return "flash_attention_2"
    return "sdpa"


@functools.cache  # decided once per setting: the warning below is said once, not at every forward
def forward_layout(use_remove_padding: bool, share_prompt_prefix: str, device: torch.device, attn_impl: str) -> str:
    """padded, packed (use_remove_padding) or shared_prefix (packed, one copy of each prompt:
    share_prompt_prefix, auto on CPU workers; it needs an attention that takes a 4-D mask). On a GPU
    without flash-attention, packed rows would make transformers build a dense [T, T] mask over the
    whole micro-batch (GBs at 28k tokens, 8-16x the attention work): the padded layout instead."""
    if not use_remove_padding:
        return "padded"
    share = share_prompt_prefix == "true" or (share_prompt_prefix == "auto" and device.type == "cpu")
    if share:
        if is_flash_attention(attn_impl):
            raise ValueError(f"actor_rollout_ref.model.share_prompt_prefix=true needs an attention that takes a 4-D mask "
                             f"(sdpa, eager), not {attn_impl}: set it to auto or false")
        return "shared_prefix"
    if device.type == "cuda" and not is_flash_attention(attn_impl):
        logger.warning("actor_rollout_ref.model.use_remove_padding=True without flash-attention (%s): packed rows "
                       "would need a dense [tokens, tokens] mask on this GPU; using the padded layout", attn_impl)
        return "padded"
    return "packed"


def load_model(path: str, attn_implementation: str, trust_remote_code: bool, rank: int, train: bool,
               gradient_checkpointing: bool) -> torch.nn.Module:
    """The HF causal LM of `path` in float32 (rank 0: with its weights; other ranks: on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(dtype=torch.float32, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if rank == 0:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.config.use_cache = False
    if train:
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    else:
        model.requires_grad_(False)
        model.eval()
    return model


def reshard(model: torch.nn.Module) -> None:
    """Put every FSDP2 module of `model` back in its sharded state (a no-op where it is), so that its
    parameters are this rank's shards. torch 2.13 reshards the root module after a no-grad forward
    with reshard_after_forward=True; older releases leave it unsharded, and an in-place update of
    the local shards (the EMA teacher) would then meet full tensors."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def shard_model(model: torch.nn.Module, mesh: Any, compute_dtype: torch.dtype, offload: bool, reshard: bool,
                rank: int, device: torch.device) -> None:
    """fully_shard per decoder layer + root, then rank 0's weights and buffers to every rank, and the
    `token_stats` forward method (`forward.install_token_stats`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = dict(mesh=mesh, reshard_after_forward=reshard)
    if compute_dtype != torch.float32:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
    full = dict(model.state_dict()) if rank == 0 else {}
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes] or list(model.model.layers)
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)  # moves parameters and buffers to the mesh's device (CPU when offloaded)
    if rank != 0:
        model.to_empty(device="cpu" if offload else device)
        if offload:
            for module in model.modules():
                for name, buf in module.named_buffers(recurse=False):
                    module._buffers[name] = buf.to(device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    for buf in model.buffers():  # non-persistent buffers (rotary inv_freq) are not in the state dict
        dist.broadcast(buf, src=0)
    install_token_stats(model)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard; a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_params(model: torch.nn.Module, device: torch.device,
                dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) per parameter, one all-gather at a time (every rank must consume the
    whole iterator), floating-point ones in `dtype` when given (cast on the shard, before the
    gather: a bf16 push moves half the bytes of the float32 master weights). Tied aliases
    (lm_head.weight) are not repeated."""
    for name, param in model.named_parameters():
        value = param.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        if isinstance(value, DTensor):
            if value.device.type != device.type:
                value = value.to(device)
            value = value.full_tensor()
        yield name, value


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Tied-parameter aliases: alias name -> canonical name (e.g. lm_head.weight -> embed)."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
            if canonical.get(id(p)) not in (None, n)}


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0 (CPU; empty on other ranks), tied aliases left out."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for alias in tied_aliases(model):
        state.pop(alias, None)
    return {k: v.contiguous() for k, v in state.items()}


def load_full_state(model: torch.nn.Module, file: Path, rank: int,
                    agree: Callable[[BaseException | None, str], None]) -> None:
    """Rank 0 reads `file` (safetensors), every rank gets its shards; `agree` makes a file rank 0
    cannot read fail on every rank at once (no rank left waiting in the broadcast)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state: dict[str, torch.Tensor] = {}
    error = None
    if rank == 0:
        try:
            state = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own kinds; all ranks must learn of it
            error = exc
        for alias, canonical in tied_aliases(model).items():
            if alias not in state and canonical in state:
                state[alias] = state[canonical]
    agree(error, f"cannot read {file}")
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                 strict=True))
