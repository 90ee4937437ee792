"""Extraction: the answer of a response's last ``\\boxed{}``."""

from __future__ import annotations

import re

_BOX_START = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _bare_box_argument(text: str, start: int) -> str | None:
    """The argument of a box written without braces, read from `start`: characters up to the
    first whitespace or ``$`` outside braces, or up to a ``}`` closing a group the box sits in.
    None when that leaves a brace open (a truncated response) or holds no digit, letter or
    command (``\\boxed.``)."""
    depth, end = 0, start
    while end < len(text):
        c = text[end]
        if c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and (c.isspace() or c == "$"):
            break
        end += 1
    token = text[start:end]
    if depth or not any(c.isalnum() or c == "\\" for c in token):
        return None
    return token


def extract_boxed_answer(text: str | None) -> str | None:
    """The answer of the last ``\\boxed`` / ``\\fbox`` command in `text`, stripped.

    - ``\\boxed{...}``: the group's content (nested braces handled);
    - ``\\boxed 5``: the space form of the release, the next token up to whitespace or ``$``;
    - ``\\boxed\\frac12`` / ``\\boxed5``: decision: the same token rule, so ``\\frac12`` /
      ``5``, which math equivalence reads as 1/2 / 5 (LaTeX itself would box only ``\\frac``).

    The last box always decides: None when it is unbalanced or cut off (a truncated response ending
    in ``\\boxed{3`` or ``\\boxed``) or empty, never an earlier box. ``\\boxedx`` is another macro.
    """
    if not text:
        return None
    starts = list(_BOX_START.finditer(text))
    if not starts:
        return None
    i = starts[-1].end()
    n = len(text)
    j = i
    while j < n and text[j].isspace():
        j += 1
    if j < n and text[j] == "{":
        depth = 0
        for k in range(j, n):
            c = text[k]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    content = text[j + 1 : k].strip()
                    return content or None
        return None  # unbalanced
    return _bare_box_argument(text, j)

