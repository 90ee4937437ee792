"""Engines: generate(list of user messages) -> list of replies (a `Reply`, or a bare text when the
engine cannot say why it stopped). `vllm` (`LLM.chat` with the chat template) and `hf`
(transformers `generate`); `rewrite_questions.py` picks one with `--backend`.

These are not the trainer's rollout engines (`corewarding.workers.rollout.make_engine` and the
registry `corewarding.rollout_engines`), because the jobs differ: the rewriter is one standalone
process that sends chat messages and reads text back, on a large model spread over a node by vLLM's
own multi-process executor (the release: Qwen3-32B, tensor parallel 8), with the model's own
context length and, in the hf engine, transformers' sampling defaults (top_k from the model's
generation config, else 50). A rollout engine is colocated with an FSDP worker: token ids in and
out, in the worker's process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), tensor parallel only through
`external_launcher` across worker processes that already form a torch.distributed group, every
sampling knob pinned so that log-probs match the trainer's, and weights pushed in place. Built on
the rollout engine, the rewriter could not run tensor parallel on its own and its hf backend would
sample differently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from corewarding.rewrite.prompt import Reply


@dataclass(frozen=True)
class Generation:
    """What every engine is given: the model, the sampling and the chat template's thinking switch."""

    model_path: str
    tokenizer_path: str | None = None
    max_new_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.8
    enable_thinking: bool = False
    seed: int = 0
    dtype: str = "auto"


class Engine(Protocol):
    def generate(self, prompts: list[str]) -> list[Reply | str]: ...


def as_reply(reply: Reply | str) -> Reply:
    return reply if isinstance(reply, Reply) else Reply(str(reply) if reply is not None else "", None)


class HFEngine:
    """transformers `generate` with the tokenizer's chat template (CPU tests, small models)."""

    def __init__(self, generation: Generation, num_threads: int | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from corewarding.data.chat import load_tokenizer

        g = generation
        if num_threads:  # on a small shared CPU box one thread per process is much faster
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.tokenizer = load_tokenizer(g.tokenizer_path or g.model_path)
        self.tokenizer.padding_side = "left"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
                       "bfloat16": torch.bfloat16, "float16": torch.float16}[g.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(g.model_path, dtype=torch_dtype).to(device).eval()
        self.device = device
        self.max_new_tokens, self.temperature, self.top_p = g.max_new_tokens, g.temperature, g.top_p
        self.enable_thinking = g.enable_thinking
        torch.manual_seed(g.seed)

    def generate(self, prompts: list[str]) -> list[Reply]:
        from corewarding.data.chat import chat_prompt_ids

        ids = chat_prompt_ids(self.tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                              enable_thinking=self.enable_thinking)
        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p} if self.temperature > 0 else {"do_sample": False}
        with self.torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
            )
        generated = out[:, enc["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        # generate stops a row at an end-of-sequence token; a row without one hit max_new_tokens
        ended = self.torch.isin(generated, self.torch.tensor(sorted(self._eos_ids()), device=generated.device)).any(-1)
        return [Reply(text, "stop" if done else "length") for text, done in zip(texts, ended.tolist())]

    def _eos_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
        ids.add(self.tokenizer.eos_token_id)
        return {int(i) for i in ids if i is not None}


class VLLMEngine:
    """vLLM `LLM.chat` (GPU nodes; the release used Qwen3-32B with tensor parallel 8)."""

    def __init__(
        self,
        generation: Generation,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
    ) -> None:
        from vllm import LLM, SamplingParams

        g = generation
        self.llm = LLM(
            model=g.model_path, tokenizer=g.tokenizer_path or g.model_path, dtype=g.dtype, seed=g.seed,
            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, enforce_eager=enforce_eager,
        )
        self.sampling = SamplingParams(temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_new_tokens)
        self.enable_thinking = g.enable_thinking

    def generate(self, prompts: list[str]) -> list[Reply]:
        outputs = self.llm.chat(
            [[{"role": "user", "content": p}] for p in prompts], self.sampling, use_tqdm=False,
            chat_template_kwargs={"enable_thinking": self.enable_thinking},
        )
        return [Reply(o.outputs[0].text, o.outputs[0].finish_reason) for o in outputs]
