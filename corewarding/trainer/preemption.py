"""Preemption: a signal (`trainer.preemption_signals`, SIGTERM and SIGUSR1 by default) asks the
driver to stop. The handler only records it; the fit loop decides once per step, after the step and
its logging (`Trainer._done`): it saves the last trained step whatever `trainer.save_freq` says
(unless it is saved already) and the command exits with status `EXIT_PREEMPTED` (75, EX_TEMPFAIL:
"try again later"), which a SLURM script tells from a failure (1) or bad input (2) to requeue the job.

A second signal stops the run at once: during a save that leaves only the `.tmp` folder, which the
next save removes, and `latest_checkpointed_iteration.txt` still names the previous checkpoint. The
last renames that publish a checkpoint are not interrupted (`PreemptionWatch.publishing`): a
folder renamed in without `latest` pointing at it would make the resumed run refuse the folder.
The Ray workers ignore these signals (`ActorRolloutRefWorker.ignore_signals`): the driver decides
when they stop.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, Sequence

logger = logging.getLogger(__name__)

EXIT_PREEMPTED = 75


RESUME_HINT = f"resume with the same command (trainer.resume_mode=auto); exit status {EXIT_PREEMPTED}"


class Preempted(BaseException):
    """The run stopped on a preemption signal; `checkpoint` is where it resumes (None: nowhere yet),
    `reason` what happened (the message adds how to resume). A BaseException, as KeyboardInterrupt:
    no `except Exception` around a worker call may turn a second signal into a failed save."""

    def __init__(self, reason: str, checkpoint: Path | None, at_once: bool = False) -> None:
        super().__init__(f"{reason}; {RESUME_HINT}")
        self.reason = reason
        self.checkpoint = checkpoint
        self.at_once = at_once  # a second signal: the workers are not waited for


def signal_numbers(names: Sequence[str]) -> list[signal.Signals]:
    return [signal.Signals[name] for name in names]


class PreemptionWatch:
    """Records the first preemption signal; raises `Preempted(at_once=True)` on the next one."""

    def __init__(self, names: Sequence[str], latest: Callable[[], Path | None]) -> None:
        self.signals = signal_numbers(names)
        self.latest = latest  # the checkpoint a resume would start from now
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._publishing = False
        self._deferred = False

    def install(self) -> None:
        """Take the signals (again: `ray.init` sets its own SIGTERM handler in the driver)."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("trainer.preemption_signals: not the main thread, signals are not handled")
            return
        for number in self.signals:
            previous = signal.signal(number, self._handle)
            self._previous.setdefault(number, previous)

    def restore(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    @contextmanager
    def publishing(self) -> Iterator[None]:
        """A second signal inside this block takes effect at its end."""
        self._publishing = True
        try:
            yield
        finally:
            self._publishing = False
            if self._deferred:
                self._stop_at_once()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(number)
            logger.warning("%s received: finishing this step, saving a checkpoint, then exiting with status %d "
                           "(a second signal exits at once)", self.received.name, EXIT_PREEMPTED)
            return
        if self._publishing:
            self._deferred = True
            return
        self._stop_at_once()

    def _stop_at_once(self) -> None:
        self._deferred = False
        latest = self.latest()
        where = f"{latest} is still good" if latest is not None else "no checkpoint was saved yet"
        raise Preempted(f"second preemption signal: stopped at once; {where}", latest, at_once=True)
