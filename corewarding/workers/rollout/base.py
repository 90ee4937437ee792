"""The interface every rollout engine implements (`hf` and `vllm`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """What one `generate` call samples: `n` responses per prompt."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def validation_sampling(val_kwargs: Any, max_new_tokens: int, stop_token_ids: tuple[int, ...] = ()) -> SamplingSettings:
    """What validation samples, read from `rollout.val_kwargs` as verl reads it: `n` responses per
    prompt either way (verl repeats each prompt n times); `do_sample=False` is greedy and ignores
    temperature, top_p and top_k (the n responses are the same greedy one); `do_sample=True` samples
    with the given temperature, top_p and top_k, where temperature 0 is greedy (as in vLLM)."""
    if not val_kwargs.do_sample:
        return SamplingSettings(n=val_kwargs.n, temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=max_new_tokens,
                                stop_token_ids=stop_token_ids)
    return SamplingSettings(n=val_kwargs.n, temperature=val_kwargs.temperature, top_p=val_kwargs.top_p,
                            top_k=val_kwargs.top_k, max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids)


@dataclass
class RolloutOutput:
    """One sampled response: its token ids (EOS included when it stopped) and, where the engine
    provides them, the sampler's log-probs of those tokens."""

    token_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str = "length"


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[RolloutOutput]:
        """`n` responses for each prompt (token ids, no padding), prompt-major:
        [p0s0, p0s1, ..., p1s0, ...] -> len(prompts) * sampling.n outputs."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights in place with full (unsharded) HF-named tensors."""
        ...

    def sleep(self) -> bool:
        """Free what the engine can while the trainer needs the memory (no-op where unsupported);
        True when that dropped the weights too, so that they must be pushed again after `wake_up`."""
        ...

    def wake_up(self, tags: tuple[str, ...] | None = None) -> None:
        """Undo `sleep` (the weights too, unless `sleep` returned True); `tags` ("weights",
        "kv_cache") wakes one part at a time, None both."""
        ...

    def close(self) -> None:
        """Release what the engine holds, its distributed groups too: the worker calls it before it
        leaves its own process group, under which an engine's groups live."""
        ...
