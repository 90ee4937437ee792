"""The rollout side of one worker: its engine, which weights the engine holds, the rollout RNG
stream, tensor-parallel prompt gathering, and turning the engine's outputs into a rollout `Batch`.

Weights are pushed into the engine only when it does not hold the ones a role needs (the policy at
its current version for policy and validation rollouts, the teacher at its version for teacher
rollouts). With `rollout.free_cache_engine` the engine sleeps between rollouts; an engine that drops
its weights while asleep gets them pushed again after it wakes.

With `rollout.tensor_model_parallel_size` = tp > 1 (vLLM on GPU nodes) the ranks form TP groups of
consecutive ranks; every rank of a group generates the union of the group's prompts (the same
requests, in lock step) and keeps its own slice. Sampling draws from a rollout RNG stream seeded
`rollout.seed + rank // tp` (shared by a TP group), swapped in around `generate`, apart from the
trainer's per-rank RNGs. Every sampled `generate` call hands the engine an explicit seed drawn from
that stream: vLLM's GPU model runner V2 seeds a request without one from numpy's global generator,
which differs per rank, and the ranks of a TP group would then sample different tokens, schedule
differently and hang in mismatched all-reduces.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
import torch.distributed as dist

from corewarding.batch import Batch
from corewarding.config.actor_rollout_ref import RolloutConfig
from corewarding.data import left_pad
from corewarding.workers.rollout.base import RolloutEngine, RolloutOutput, SamplingSettings, validation_sampling
from corewarding.workers.rng_state import device_rng_state, seeded_rng_state, set_device_rng_state

ROLES = ("policy", "teacher", "validation")


class Generated(NamedTuple):
    rollouts: Batch
    weight_sync_s: float  # pushing weights into the engine
    generate_s: float  # the engine's generation

    @staticmethod
    def gather(results: list[Generated]) -> Generated:
        """Every rank's rollouts in rank order; the slowest rank's times."""
        return Generated(Batch.concat([r.rollouts for r in results]), max(r.weight_sync_s for r in results),
                         max(r.generate_s for r in results))


def rollout_seed(rollout: RolloutConfig, rank: int) -> int:
    """`rollout.seed` + this rank's rollout group (rank // tp): the ranks of a TP group share it
    (they must sample the same tokens), different groups sample differently."""
    return rollout.seed + rank // rollout.tensor_model_parallel_size


def gather_group_prompts(prompts: list[list[int]], group: dist.ProcessGroup | None) -> tuple[list[list[int]], int]:
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


class RolloutRunner:
    def __init__(self, engine: RolloutEngine, rollout: RolloutConfig, response_length: int, tokenizer: Any,
                 pad_token_id: int, eos_ids: list[int], device: torch.device, rank: int,
                 tp_group: dist.ProcessGroup | None) -> None:
        self.engine = engine
        self.rollout = rollout
        self.response_length = response_length
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.eos_ids = tuple(eos_ids)
        self.device = device
        self.tp_group = tp_group
        self.rng = seeded_rng_state(rollout_seed(rollout, rank), device)
        # what the engine holds: equivalent (weights, version) labels; it starts from the model folder
        self.holds: set[tuple[str, int]] = {("policy", 0), ("teacher", 0)}

    def sampling(self, role: str) -> SamplingSettings:
        if role == "validation":
            return validation_sampling(self.rollout.val_kwargs, self.response_length, self.eos_ids)
        return SamplingSettings(
            n=self.rollout.teacher_n if role == "teacher" else self.rollout.n, temperature=self.rollout.temperature,
            top_p=self.rollout.top_p, top_k=self.rollout.top_k, max_new_tokens=self.response_length,
            stop_token_ids=self.eos_ids,
        )

    def forget_weights(self) -> None:
        """The engine's weights are no longer known (a checkpoint was loaded): push before the next use."""
        self.holds = set()

    def generate(self, prompts: Batch, role: str, prompt_width: int, version: int,
                 weights: Callable[[], Iterator[tuple[str, torch.Tensor]]]) -> Generated:
        """Each prompt's rollouts (prompt-major) from the engine holding the role's weights at
        `version` (pushed from `weights()` if it does not hold them), as a rollout `Batch`."""
        if role not in ROLES:
            raise ValueError(f"unknown rollout role {role!r}; use one of {ROLES}")
        sampling = self.sampling(role)
        which = "teacher" if role == "teacher" else "policy"
        if self.rollout.free_cache_engine:  # weights first, push, then the KV cache: never both with a push
            self.engine.wake_up(tags=("weights",))
        sync_s = self._push(which, version, weights)
        if self.rollout.free_cache_engine:
            self.engine.wake_up(tags=("kv_cache",))
        group_prompts, start = gather_group_prompts(prompts.rows["prompt_ids"], self.tp_group)
        started = time.perf_counter()
        with self._rng_stream():
            outputs = self.engine.generate(group_prompts, self._with_seed(sampling))
        generate_s = time.perf_counter() - started
        if self.rollout.free_cache_engine and self.engine.sleep():
            self.holds = set()  # the engine dropped its weights: push after the next wake-up
        if len(outputs) != len(group_prompts) * sampling.n:
            raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(group_prompts)} prompts x n={sampling.n}")
        mine = own_outputs(outputs, start, len(prompts), sampling.n)
        return Generated(self._rollout_batch(prompts, mine, sampling.n, prompt_width), sync_s, generate_s)

    def _push(self, which: str, version: int, weights: Callable[[], Iterator[tuple[str, torch.Tensor]]]) -> float:
        if (which, version) in self.holds:
            return 0.0
        start = time.perf_counter()
        self.engine.load_weights(weights())
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.holds = {(which, version)}
        return time.perf_counter() - start

    def _with_seed(self, sampling: SamplingSettings) -> SamplingSettings:
        """`sampling` with a seed drawn from the rollout stream (inside `_rng_stream`: the same draw
        on every rank of a TP group); greedy decoding needs none."""
        if sampling.greedy or sampling.seed is not None:
            return sampling
        seed = int(torch.randint(0, 2**31 - 1, (1,), device=self.device).item())
        return dataclasses.replace(sampling, seed=seed)

    @contextmanager
    def _rng_stream(self) -> Iterator[None]:
        """Sampling draws from the rollout stream (the device's default generator, which HF
        `generate` and vLLM's sampler use), the trainer's per-rank state is put back after."""
        trainer_state = device_rng_state(self.device)
        set_device_rng_state(self.rng, self.device)
        try:
            yield
        finally:
            self.rng = device_rng_state(self.device)
            set_device_rng_state(trainer_state, self.device)

    def _rollout_batch(self, prompts: Batch, outputs: list[RolloutOutput], n: int, prompt_width: int) -> Batch:
        """The prompts' rows repeated n times, with `responses` [N, R] (right-padded to R =
        data.max_response_length), `response_mask`, `input_ids` / `attention_mask` / `position_ids`
        [N, prompt_width + R] (prompts left-padded to the batch's width), `truncated` [N] (the
        response filled R tokens without stopping), `rollout_log_probs` where the engine gives them, and rows `response_text` and `sample_index` (0 .. n-1: the order in
        which the prompt's rollouts were generated; votes break ties by it)."""
        rows, width = len(outputs), self.response_length
        responses = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        response_mask = torch.zeros((rows, width), dtype=torch.long)
        truncated = torch.zeros(rows, dtype=torch.bool)
        with_logprobs = rows > 0 and all(o.logprobs is not None for o in outputs)
        rollout_log_probs = torch.zeros((rows, width), dtype=torch.float32) if with_logprobs else None
        for i, out in enumerate(outputs):
            ids = list(out.token_ids)[:width]
            responses[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            response_mask[i, : len(ids)] = 1
            truncated[i] = len(ids) >= width and out.finish_reason != "stop"
            if rollout_log_probs is not None:
                logprobs = list(out.logprobs)[: len(ids)]
                rollout_log_probs[i, : len(logprobs)] = torch.tensor(logprobs, dtype=torch.float32)
        repeated = prompts.repeat_interleave(n)
        prompt_ids, prompt_mask = left_pad(repeated.rows["prompt_ids"], self.pad_token_id, width=prompt_width)
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
        tensors = {
            "responses": responses,
            "response_mask": response_mask,
            "truncated": truncated,
            "input_ids": torch.cat([prompt_ids, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(dim=1) - 1).clamp(min=0),
        }
        if rollout_log_probs is not None:
            tensors["rollout_log_probs"] = rollout_log_probs
        texts = self.tokenizer.batch_decode([list(o.token_ids)[:width] for o in outputs], skip_special_tokens=True)
        return Batch(tensors=tensors, rows={**repeated.rows, "response_text": texts,
                                            "sample_index": list(range(n)) * len(prompts)})
