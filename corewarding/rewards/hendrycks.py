"""The Hendrycks MATH answer check: string equality after the benchmark's `strip_string`
normalisation, which the release uses for its GT reward and its validation on MATH-style data.

Written from the benchmark's published description of the normalisation, step by step in its order:
drop line breaks and ``\\!``; ``\\\\`` -> ``\\``; ``tfrac`` / ``dfrac`` -> ``frac``; drop ``\\left`` /
``\\right``, degree marks and ``\\$``; cut a unit written as ``\\text{ ...}`` on the right; drop
``\\%``; give a leading decimal point its 0 (`` .5`` / ``{.5`` / ``.5``); drop a short left side of
one ``=`` (``x = 3`` -> ``3``); brace one-character ``\\sqrt`` arguments; drop spaces; brace
one-character ``\\frac`` arguments (``\\frac12`` -> ``\\frac{1}{2}``); the literal ``0.5`` becomes
``\\frac{1}{2}``; ``a/b`` of two plain integers becomes ``\\frac{a}{b}``.

Where the normalisation meets a form it does not handle (two ``\\text{ `` units, a ``\\sqrt`` or
``\\frac`` with nothing after it) the two raw strings are compared instead, as the original's
exception path does. There is no mathematics in it: ``142`` != ``142.0``, ``1,2`` != ``2,1`` and
``0.50`` != ``\\frac12`` (math-verify says equal to all three).
"""

from __future__ import annotations

import re

__all__ = ["hendrycks_equivalent", "hendrycks_normalize"]

_PLAIN_INTEGER = re.compile(r"-?[1-9][0-9]*|0")  # exactly what str(int(x)) writes


class _Unhandled(ValueError):
    """A form the normalisation does not cover: compare the raw strings."""


def _cut_right_unit(s: str) -> str:
    parts = s.split("\\text{ ")
    if len(parts) > 2:
        raise _Unhandled(s)
    return parts[0]


def _brace_sqrt_arguments(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``: a one-character argument without braces gets them."""
    head, *tails = s.split("\\sqrt")
    out = [head]
    for tail in tails:
        if not tail:
            raise _Unhandled(s)
        out.append(tail if tail[0] == "{" else "{" + tail[0] + "}" + tail[1:])
    return "\\sqrt".join(out)


def _brace_frac_arguments(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}`` (``\\frac{72}1`` stays);
    a ``\\frac`` followed by one character leaves the whole string as it was."""
    head, *tails = s.split("\\frac")
    out = [head]
    for tail in tails:
        if not tail:
            raise _Unhandled(s)
        if tail[0] == "{":
            out.append(tail)
        elif len(tail) < 2:
            return s
        else:
            numerator, second, rest = tail[0], tail[1], tail[2:]
            denominator = second if second == "{" else "{" + second + "}"
            out.append("{" + numerator + "}" + denominator + rest)
    return "\\frac".join(out)


def _slash_to_frac(s: str) -> str:
    parts = s.split("/")
    if len(parts) == 2 and all(_PLAIN_INTEGER.fullmatch(p) for p in parts):
        return "\\frac{" + parts[0] + "}{" + parts[1] + "}"
    return s


def hendrycks_normalize(answer: str) -> str:
    """The normalised form of `answer` (see the module docstring); raises `_Unhandled` where the
    original would fail."""
    s = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _cut_right_unit(s).replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 3", "k=3": the value only
        s = sides[1]
    s = _brace_sqrt_arguments(s).replace(" ", "")
    s = _brace_frac_arguments(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def hendrycks_equivalent(answer: str | None, ground_truth: str | None) -> bool:
    """The release's GT check: equal normalised strings (raw strings where the normalisation fails);
    a missing answer or ground truth is never equal."""
    if answer is None or ground_truth is None:
        return False
    try:
        return hendrycks_normalize(answer) == hendrycks_normalize(ground_truth)
    except _Unhandled:
        return answer == ground_truth
