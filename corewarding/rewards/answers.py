"""Answers: extraction of the last ``\\boxed{}``, math equivalence with a hard time limit, majority vote.

This module imports only the standard library (math-verify lazily), so that the verification
worker process (see below) can load it by file path without importing torch or the package.

Time limit of a math-verify check
---------------------------------
math-verify (sympy + a LaTeX grammar) can run for a very long time on hostile input: a
5,000-deep ``\\frac{1}{\\frac{1}{...}}`` takes ~26 s just to parse, a 1,000-term polynomial ~5 s.
Its own ``timeout_seconds`` uses ``signal.alarm`` (whole seconds only), which works only in the
main thread; Ray actors, thread pools and async code are often not the main thread. So every check
goes through three layers:

1. **Size / depth pre-check** (`MAX_VERIFY_CHARS`, `MAX_VERIFY_DEPTH`): an answer longer than 500
   characters or nested deeper than 32 brackets is never handed to math-verify; the pair is
   compared by the normalised string only. Real final answers are far below both limits, and this
   alone turns the pathological inputs into an O(n) scan, in any thread, with no extra process.
2. **Main thread**: math-verify runs in-process with its own timeouts off, under our own
   ``signal.setitimer`` timer (sub-second precision). The timer raises a ``BaseException``
   subclass so that math-verify's many ``except Exception`` blocks cannot swallow it, and any
   SIGALRM timer that was already armed (pytest-timeout, a caller's alarm) is restored afterwards
   with its remaining time.
3. **Any other thread** (or ``COREWARDING_VERIFY_BACKEND=process``): the check is sent to one
   long-lived worker subprocess (``python -c`` loading this file; no multiprocessing, so the
   parent's ``__main__`` - e.g. a Ray worker - is never re-imported). The parent waits at most
   `timeout` seconds for the reply; on a timeout it kills the worker and starts a fresh one on
   the next call. A subprocess is the only limit that also stops C-level work a signal cannot
   interrupt. Calls from several threads are serialised by a lock.

A timed-out or failed check counts as "not equivalent". Definite results are cached on the normalised pair (timeouts are not).
The limit is wall-clock time, ``DEFAULT_TIMEOUT`` = 1 s (env ``COREWARDING_VERIFY_TIMEOUT``): an
ordinary check takes ~5 ms, but on a heavily oversubscribed CPU a legitimate check can pass 1 s.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Iterable, NamedTuple, Sequence

DEFAULT_TIMEOUT = float(os.environ.get("COREWARDING_VERIFY_TIMEOUT", "1.0"))  # seconds, wall clock
MAX_VERIFY_CHARS = 500
MAX_VERIFY_DEPTH = 32
_WORKER_START_TIMEOUT = 120.0

# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Normalisation (string fast path)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# math-verify with a hard time limit
# --------------------------------------------------------------------------------------------


_MV_READY = False


def _load_math_verify() -> None:
    """Import math-verify (sympy, the LaTeX grammar) and run one check, once per process and
    never under the timer: a ~1-2 s first import must not count as a timeout, and an import cut
    short by the alarm would leave half-initialised modules behind."""
    global _MV_READY
    if _MV_READY:
        return
    from math_verify import grader as _mv_grader
    from math_verify import parser as _mv_parser

    _mv_parser.TIMEOUT_WARNING_SHOWN = True  # we provide the time limit ourselves
    _mv_grader.TIMEOUT_WARNING_SHOWN = True
    _MV_READY = True
    _mv_equal("0.5", "\\frac{1}{2}")


def _mv_equal(pred: str, gold: str) -> bool:
    """math-verify on two bare answers, its own (signal based) timeouts switched off."""
    _load_math_verify()
    import math_verify

    gold_parsed = math_verify.parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = math_verify.parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


class _Timeout(BaseException):
    """BaseException so that math-verify's ``except Exception`` cannot swallow it."""


def _alarm_handler(signum, frame):  # pragma: no cover - runs only on a timeout
    raise _Timeout()


def _check_with_alarm(pred: str, gold: str, timeout: float) -> bool | None:
    """math-verify under a SIGALRM timer; None when the time limit was hit."""
    _load_math_verify()
    old_handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm_handler)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            result = _mv_equal(pred, gold)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        result = None
    except Exception:
        result = False
    finally:
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        if old_delay > 0:  # give the caller's timer back, minus the time we used
            remaining = old_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-3), old_interval)
    return result


_WORKER_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_corewarding_answers', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
    "mod._worker_loop()\n"
)


def _worker_loop() -> None:  # runs in the worker subprocess
    _load_math_verify()  # import and warm up before saying ready

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            pred, gold = json.loads(line)
            ok = _mv_equal(pred, gold)
        except Exception:
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


class _VerifyWorker:
    """One long-lived math-verify subprocess; killed and restarted after a timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self.restarts = 0

    def _readline(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:  # worker died
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _start(self) -> None:
        self._buf = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        if self._readline(_WORKER_START_TIMEOUT) != b"ready":
            self.stop()
            raise RuntimeError("the math-verify worker process did not start")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
            self._proc = None

    def check(self, pred: str, gold: str, timeout: float) -> bool | None:
        """math-verify in the worker process; None when the time limit was hit."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps([pred, gold]) + "\n").encode())
                self._proc.stdin.flush()
            except OSError:
                self.stop()
                return False
            line = self._readline(timeout)
            if line is None:  # timed out (or died): a fresh worker next time
                self.stop()
                self.restarts += 1
                return None
            return line == b"1"


_WORKER = _VerifyWorker()
atexit.register(_WORKER.stop)


def _backend() -> str:
    choice = os.environ.get("COREWARDING_VERIFY_BACKEND", "auto")
    if choice in ("signal", "process"):
        return choice
    in_main = threading.current_thread() is threading.main_thread()
    return "signal" if in_main and hasattr(signal, "setitimer") else "process"


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
    check = _check_with_alarm if _backend() == "signal" else _WORKER.check
    result = check(pred, gold, timeout)
    if result is not None:
        _RESULTS.put((pred, gold), result)
    return result


def _equivalent_normalised(pred: str, gold: str, timeout: float) -> bool:
    return bool(_verify_normalised(pred, gold, timeout))


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
    return _equivalent_normalised(normalize_answer(a), normalize_answer(b), _timeout(timeout))


def _timeout(timeout: float | None) -> float:
    return float(DEFAULT_TIMEOUT if timeout is None else timeout)


def clear_cache() -> None:
    _RESULTS.results.clear()


# --------------------------------------------------------------------------------------------
# Majority vote
# --------------------------------------------------------------------------------------------


class Vote(NamedTuple):
    label: str | None
    ratio: float
    n_valid: int


class _Class:
    __slots__ = ("key", "size", "spellings", "members")

    def __init__(self, key: str) -> None:
        self.key = key
        self.size = 0
        self.spellings: Counter[str] = Counter()  # insertion order = first seen
        self.members: list[int] = []


def vote_classes(answers: Sequence[str | None], equivalence: str = "math") -> list[_Class]:
    """Answer classes in first-seen order. "string": identical after strip. "math": buckets of
    identical `normalize_answer`, then bucket representatives merged with `answers_equivalent`
    (each new bucket joins the first earlier class it is equivalent to), so math-verify runs
    O(#distinct answers x #classes) times, not O(n^2)."""
    if equivalence not in ("math", "string"):
        raise ValueError(f"equivalence must be 'math' or 'string', got {equivalence!r}")
    buckets: dict[str, _Class] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        spelling = answer.strip()
        key = spelling if equivalence == "string" else normalize_answer(spelling)
        if not key:
            continue
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Class(key)
        bucket.size += 1
        bucket.spellings[spelling] += 1
        bucket.members.append(i)
    if equivalence == "string":
        return list(buckets.values())
    classes: list[_Class] = []
    for bucket in buckets.values():
        for cls in classes:
            if _equivalent_normalised(bucket.key, cls.key, _timeout(None)):
                cls.size += bucket.size
                cls.spellings.update(bucket.spellings)
                cls.members.extend(bucket.members)
                break
        else:
            classes.append(bucket)
    return classes


def majority_vote(answers: Iterable[str | None], equivalence: str = "math") -> Vote:
    """The majority answer of `answers`.

    None / empty answers never win. With ``"math"`` equivalent answers (``0.5``, ``\\frac{1}{2}``,
    ``1/2``, ``\\dfrac12``) form one class, and the label is the class's most frequent spelling
    (stripped; ties -> first seen). Ties between classes go to the class seen first. With
    ``"string"`` this is the release exactly: exact match after strip, ``Counter.most_common``
    (first seen on a tie). ``ratio`` = size of the winning class / len(answers) (None included);
    no valid answer -> ``Vote(None, 0.0, 0)``.
    """
    answers = list(answers)
    classes = vote_classes(answers, equivalence)
    if not classes:
        return Vote(None, 0.0, 0)
    best = classes[0]
    for cls in classes[1:]:
        if cls.size > best.size:
            best = cls
    label = best.spellings.most_common(1)[0][0]
    n_valid = sum(cls.size for cls in classes)
    return Vote(label, best.size / len(answers), n_valid)
