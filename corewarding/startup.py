"""What a process of this project leaves out of its start-up.

transformers imports scikit-learn whenever it is installed (lm-eval, which the CPU lock holds for
the out-of-domain benchmarks, installs it), only for assisted generation's dynamic threshold
(`sklearn.metrics.roc_curve`), which nothing here uses. With the scipy modules it pulls in, that is
about 1 s of every process's start on this project's 2-core machine. The processes this project
starts and owns are told that scikit-learn is absent before transformers first imports its
generation code: the Ray workers of a group (`group.py` sets `RAY_WORKER_ENV`) and the command
lines (`python -m corewarding.main`, `.plan`, `.eval`, `rewrite_questions.py`). lm-eval imports
scikit-learn itself, which this does not touch. A run started from a user's own Python process
(`run_training`, a single-process run) leaves that process's transformers as it is.

A CPU worker also loads its models and starts its engine with Python's cyclic garbage collector
paused (`gc_paused`): those imports and loads make millions of long-lived objects, and each full
collection they trigger walks all of them again.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Iterator

RAY_WORKER_ENV = "COREWARDING_RAY_WORKER"  # set to "1" in the environment of the group's actors


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block; the collector's state is restored after it, and
    the cycles made meanwhile are freed by its next collection (reference counting frees the rest)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _absent() -> bool:
    return False


def in_ray_worker() -> bool:
    """This process is an actor of a worker group (`group.py`)."""
    return os.environ.get(RAY_WORKER_ENV) == "1"


def skip_unused_imports() -> None:
    """transformers sees no scikit-learn from now on (call it first thing in a process this project owns)."""
    import transformers.utils
    from transformers.utils import import_utils

    # transformers.generation imports the name from transformers.utils, which took it from import_utils
    transformers.utils.is_sklearn_available = _absent
    import_utils.is_sklearn_available = _absent
