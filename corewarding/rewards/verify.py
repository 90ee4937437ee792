"""math-verify under a hard time limit, in this thread (a signal timer) or in a worker process.

This module imports only the standard library (math-verify lazily), so that the verification
worker process (see below) can load it by file path without importing torch or the package.
`corewarding.rewards.answers` chooses between the two checks and caches their results.

math-verify (sympy + a LaTeX grammar) can run for a very long time on hostile input: a
5,000-deep ``\\frac{1}{\\frac{1}{...}}`` takes ~26 s just to parse, a 1,000-term polynomial ~5 s.
Its own ``timeout_seconds`` uses ``signal.alarm`` (whole seconds only), which works only in the
main thread; Ray actors, thread pools and async code are often not the main thread. So every check
goes through three layers:

1. **Size / depth pre-check** (`corewarding.rewards.answers.MAX_VERIFY_CHARS`, `MAX_VERIFY_DEPTH`):
   an answer longer than 500 characters or nested deeper than 32 brackets is never handed to
   math-verify; the pair is compared by the normalised string only. Real final answers are far
   below both limits, and this alone turns the pathological inputs into an O(n) scan, in any
   thread, with no extra process.
2. **Main thread** (`check_with_alarm`): math-verify runs in-process with its own timeouts off,
   under our own ``signal.setitimer`` timer (sub-second precision). The timer raises a
   ``BaseException`` subclass so that math-verify's many ``except Exception`` blocks cannot
   swallow it, and any SIGALRM timer that was already armed (pytest-timeout, a caller's alarm) is
   restored afterwards with its remaining time.
3. **Any other thread** (or ``COREWARDING_VERIFY_BACKEND=process``; `VerifyWorker`): the check is
   sent to one long-lived worker subprocess (``python -c`` loading this file; no multiprocessing,
   so the parent's ``__main__`` - e.g. a Ray worker - is never re-imported). The parent waits at
   most `timeout` seconds for the reply; on a timeout it kills the worker and starts a fresh one on
   the next call. A subprocess is the only limit that also stops C-level work a signal cannot
   interrupt. Calls from several threads are serialised by a lock.

A timed-out check returns None, a failed one False.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

_WORKER_START_TIMEOUT = 120.0

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


def check_with_alarm(pred: str, gold: str, timeout: float) -> bool | None:
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


class VerifyWorker:
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


def backend() -> str:
    """"signal" in the main thread (where a timer can interrupt), "process" elsewhere or when the env says so."""
    choice = os.environ.get("COREWARDING_VERIFY_BACKEND", "auto")
    if choice in ("signal", "process"):
        return choice
    in_main = threading.current_thread() is threading.main_thread()
    return "signal" if in_main and hasattr(signal, "setitimer") else "process"
