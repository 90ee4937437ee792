"""The rewriting prompt (the release's instruction, verbatim) and the parser of its replies.

Each question is sent with `INSTRUCTION` and the text between `REWRITE:` and `### RESULT_END` is
the rewrite (`read_rewrite`: a reply cut at the token limit, a refusal, chatter or a placeholder is
no rewrite; the reason is one of `REJECTIONS`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

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
