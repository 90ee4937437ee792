"""Answers: normalisation and math equivalence (math-verify under a hard time limit, cached).

The time limit itself lives in `corewarding.rewards.verify` (its docstring says how it works): a
signal timer in the main thread, a worker subprocess in any other. A timed-out or failed check
counts as "not equivalent". Definite results are cached on the normalised pair (timeouts are not).
The limit is wall-clock time, ``DEFAULT_TIMEOUT`` = 1 s (env ``COREWARDING_VERIFY_TIMEOUT``): an
ordinary check takes ~5 ms, but on a heavily oversubscribed CPU a legitimate check can pass 1 s.
Extraction is in `corewarding.rewards.extraction`, the majority vote in `corewarding.rewards.voting`.
"""

from __future__ import annotations

import atexit
import os
import re
import time

from corewarding.rewards.verify import VerifyWorker, backend, check_with_alarm

DEFAULT_TIMEOUT = float(os.environ.get("COREWARDING_VERIFY_TIMEOUT", "1.0"))  # seconds, wall clock
MAX_VERIFY_CHARS = 500
MAX_VERIFY_DEPTH = 32

_TEXT_CMD = r"\\(?:text|textbf|textrm|mathrm|mbox)"
_WHOLE_TEXT = re.compile(rf"^{_TEXT_CMD}\{{([^{{}}]*)\}}$")
# The constants i and e in roman type: ``3\mathrm{i}`` is 3i, never 3 with a unit "i".
_TEXT_CONSTANT = re.compile(rf"{_TEXT_CMD}\{{\s*([ie])\s*\}}")
_TRAILING_UNIT = re.compile(rf"^(.+?){_TEXT_CMD}\{{\s*[A-Za-z][A-Za-z\s.^0-9]*\}}$")
# What may not end the value left after a unit is removed (``1+\text{ cm}`` keeps its unit).
_DANGLING = re.compile(r"(?:[-+*/=^_,(\[{<>]|\\(?:cdot|times|div|pm|mp|leq?|geq?|neq?|approx|in|to))$")


def normalize_answer(answer: str | None) -> str:
    """A light, purely textual normalisation used for the string fast path and as cache key.

    Strips whitespace, surrounding ``$``, ``\\left`` / ``\\right``, spacing commands (``\\!``,
    ``\\,``, ``\\;``, ``\\:``, ``~``), all spaces, ``\\dfrac`` / ``\\tfrac`` -> ``\\frac``, degree
    marks (``^\\circ``), a trailing ``.``, a trailing percent sign (``10\\%`` == ``10``, as
    math-verify also decides), a whole-answer ``\\text{X}`` -> ``X`` and a trailing text unit
    (``5\\text{ cm}``, ``5\\mbox{dollars}``, ``5\\mathrm{cm}`` -> ``5``). The constants
    ``\\mathrm{i}`` / ``\\text{e}`` (any text command around a lone i or e) become ``i`` / ``e``
    and are never taken for units (``3\\mathrm{i}`` -> ``3i``); a unit is kept when removing it would
    leave a dangling operator (``1+\\text{ cm}``). Returns "" for None / blank input.
    """
    if answer is None:
        return ""
    s = answer.strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[!,;:](?![a-zA-Z])|~", "", s)
    s = re.sub(r"\\(?:d|t)frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|°", "", s)
    s = _TEXT_CONSTANT.sub(r"\1", s)
    m = _WHOLE_TEXT.match(s.strip())
    if m:
        s = m.group(1)
    else:
        m = _TRAILING_UNIT.match(s.strip())
        value = m.group(1).strip() if m else ""
        if value and not _DANGLING.search(value):
            s = value
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\?%$", "", s) if len(s) > 1 else s
    while s.endswith(".") and len(s) > 1:
        s = s[:-1]
    return s


def _nesting_depth(s: str) -> int:
    depth = best = 0
    for c in s:
        if c in "{([":
            depth += 1
            if depth > best:
                best = depth
        elif c in "})]":
            depth = max(depth - 1, 0)
    return best


def _verifiable(s: str) -> bool:
    return len(s) <= MAX_VERIFY_CHARS and _nesting_depth(s) <= MAX_VERIFY_DEPTH


_WORKER = VerifyWorker()  # checks from threads other than the main one
atexit.register(_WORKER.stop)


class _ResultCache:
    """Definite math-verify results keyed on the normalised pair (timed-out checks are not kept:
    a timeout caused by a starved CPU must not turn into a permanent false negative)."""

    def __init__(self, max_size: int = 1 << 16) -> None:
        self.max_size = max_size
        self.results: dict[tuple[str, str], bool] = {}
        self.hits = 0

    def get(self, key: tuple[str, str]) -> bool | None:
        result = self.results.get(key)
        self.hits += result is not None
        return result

    def put(self, key: tuple[str, str], result: bool) -> None:
        if len(self.results) >= self.max_size:
            self.results.clear()
        self.results[key] = result


_RESULTS = _ResultCache()


def _without_math_verify(pred: str, gold: str) -> bool | None:
    """The result when math-verify is not needed (empty, equal, too big for it, cached), else None."""
    if not pred or not gold:
        return False
    if pred == gold:
        return True
    if not (_verifiable(pred) and _verifiable(gold)):
        return False
    return _RESULTS.get((pred, gold))


def _verify_normalised(pred: str, gold: str, timeout: float) -> bool | None:
    """Equivalence of two normalised answers; None when math-verify hit its time limit."""
    quick = _without_math_verify(pred, gold)
    if quick is not None:
        return quick
    check = check_with_alarm if backend() == "signal" else _WORKER.check
    result = check(pred, gold, timeout)
    if result is not None:
        _RESULTS.put((pred, gold), result)
    return result


def normalised_equivalent(pred: str, gold: str, timeout: float | None = None) -> bool:
    """`answers_equivalent` of two answers already passed through `normalize_answer`."""
    return bool(_verify_normalised(pred, gold, float(DEFAULT_TIMEOUT if timeout is None else timeout)))


class VerifyBudget:
    """Math equivalence for many pairs at once (one reward call) under a wall-clock budget.

    Each distinct normalised pair is judged once. Pairs that need math-verify are checked while
    `seconds` last (each check limited to the time left, at most `DEFAULT_TIMEOUT`); after that
    they are judged as not equivalent without a check and counted in `skipped`. Checks that hit
    their time limit are counted in `timeouts`. `seconds=None`: no budget (every pair is checked),
    for rewards, whose values must not depend on how fast the machine is."""

    def __init__(self, seconds: float | None = None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + float(seconds)
        self.timeouts = 0
        self.skipped = 0
        self._judged: dict[tuple[str, str], bool] = {}

    def equivalent(self, a: str | None, b: str | None) -> bool:
        """`answers_equivalent(a, b)` within the budget."""
        key = (normalize_answer(a), normalize_answer(b))
        if key not in self._judged:
            self._judged[key] = self._judge(*key)
        return self._judged[key]

    def _judge(self, pred: str, gold: str) -> bool:
        quick = _without_math_verify(pred, gold)
        if quick is not None:
            return quick
        timeout = DEFAULT_TIMEOUT
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                self.skipped += 1
                return False
        result = _verify_normalised(pred, gold, timeout)
        if result is None:
            self.timeouts += 1
        return bool(result)


def answers_equivalent(a: str | None, b: str | None, timeout: float | None = None) -> bool:
    """True when answer `a` equals reference `b` (the gold side of math-verify).

    Order: None / empty -> False; equal after `normalize_answer` -> True; too long or too deeply
    nested for math-verify -> False; otherwise math-verify (each side wrapped in ``$...$``) under
    a hard `timeout` in seconds (None: the module's `DEFAULT_TIMEOUT`, 1 s unless the environment
    sets ``COREWARDING_VERIFY_TIMEOUT``; see the module docstring). Definite results are cached on
    the normalised pair; a timed-out check returns False and is tried again next time.

    Decisions (inherited from math-verify, pinned by tests): ``x=3`` == ``3``; ``10\\%`` == ``10``
    but != ``0.1``; ``1,2`` == ``2,1`` (comma lists compare as sets); ``\\pi`` != ``3.14``.
    """
    return normalised_equivalent(normalize_answer(a), normalize_answer(b), timeout)


def clear_cache() -> None:
    _RESULTS.results.clear()

