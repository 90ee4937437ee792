"""Rollout with transformers `generate`: the CPU-test engine and the fallback where vLLM is missing.

The engine owns a plain (unsharded) copy of the model; the worker pushes the policy's or the
teacher's full weights into it with `load_weights`, exactly as it does for vLLM.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from corewarding.data.chat import pad_token_id
from corewarding.workers.rollout import EngineSettings, eos_token_ids, resolve_dtype
from corewarding.workers.rollout.base import RolloutOutput, SamplingSettings


def build(settings: EngineSettings, model_path: str, tokenizer: Any, device: torch.device) -> HFRolloutEngine:
    """The engine of `settings` on the model folder (`make_engine` calls it through the registry)."""
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=resolve_dtype(settings.dtype, device), attn_implementation=settings.attn_implementation,
        trust_remote_code=settings.trust_remote_code,
    ).to(device)
    return HFRolloutEngine(model, pad_token_id=pad_token_id(tokenizer), eos_token_ids=eos_token_ids(tokenizer, model_path),
                           micro_batch_size=settings.hf_micro_batch_size)


class HFRolloutEngine:
    def __init__(
        self,
        model: PreTrainedModel,
        pad_token_id: int,
        eos_token_ids: list[int],
        micro_batch_size: int = 32,
    ) -> None:
        self.model = model.eval()
        # `generate` fills every knob our config leaves unset from the model's generation_config.json
        # (min_p, epsilon_cutoff, suppress_tokens, min_new_tokens, ...): a blank one keeps the hub's
        # sampling settings out, so the engine samples what vLLM samples and the trainer scores
        self.model.generation_config = GenerationConfig()
        self.pad_token_id = pad_token_id
        self.eos_token_ids = list(eos_token_ids)
        self.micro_batch_size = micro_batch_size

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[RolloutOutput]:
        if sampling.seed is not None:
            device = next(self.model.parameters()).device
            if device.type == "cuda":  # the device's generator only: the CPU one is the trainer's stream
                torch.cuda.manual_seed(sampling.seed)
            else:
                torch.manual_seed(sampling.seed)
        expanded = [prompt for prompt in prompts for _ in range(sampling.n)]
        outputs: list[RolloutOutput] = []
        for start in range(0, len(expanded), self.micro_batch_size):
            outputs.extend(self._generate_micro_batch(expanded[start : start + self.micro_batch_size], sampling))
        return outputs

    def _generate_micro_batch(self, prompts: list[list[int]], sampling: SamplingSettings) -> list[RolloutOutput]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        stop_ids = self.eos_token_ids + [t for t in sampling.stop_token_ids if t not in self.eos_token_ids]
        generated = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=self._generation_config(sampling, stop_ids),
        )[:, width:].cpu()
        return [self._cut_at_stop(row.tolist(), stop_ids) for row in generated]

    def _generation_config(self, sampling: SamplingSettings, stop_ids: list[int]) -> GenerationConfig:
        """Every sampling knob set explicitly: `generate` fills unset ones from the model's
        generation config (blank here: `__init__`) and then from global defaults (top_k=50!), which
        would silently change the sampling distribution (and make log-probs disagree with the trainer's)."""
        common = dict(
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=self.pad_token_id,
            use_cache=True,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )
        if sampling.greedy:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            typical_p=1.0,
            **common,
        )

    @staticmethod
    def _cut_at_stop(token_ids: list[int], stop_ids: list[int]) -> RolloutOutput:
        for position, token in enumerate(token_ids):
            if token in stop_ids:
                return RolloutOutput(token_ids=token_ids[: position + 1], finish_reason="stop")
        return RolloutOutput(token_ids=token_ids, finish_reason="length")

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        for name, tensor in named_tensors:
            if name not in params:
                if name == "lm_head.weight" and self.model.config.tie_word_embeddings:
                    continue
                raise KeyError(f"rollout model has no weight {name!r}")
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))

    def sleep(self) -> bool:
        """Nothing to free: the HF engine keeps no KV cache between calls (weights kept: False)."""
        return False

    def wake_up(self, tags: tuple[str, ...] | None = None) -> None:
        """Nothing to restore (see `sleep`)."""

    def close(self) -> None:
        """Nothing to release: the model is the worker's."""
