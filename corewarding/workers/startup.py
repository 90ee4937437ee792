"""What a worker process that Ray starts for a worker group (`group.py`) leaves out of its start-up.

transformers imports scikit-learn whenever it is installed (lm-eval, which the CPU lock holds for
the out-of-domain benchmarks, installs it), only for assisted generation's dynamic threshold
(`sklearn.metrics.roc_curve`), which no worker uses. With the scipy modules it pulls in, that is
about 1 s of every worker's start on this project's 2-core machine. Such a process is told that
scikit-learn is absent; the driver and a single-process run, which may run lm-eval, are not.
"""

from __future__ import annotations

import os

RAY_WORKER_ENV = "COREWARDING_RAY_WORKER"  # set to "1" in the environment of the group's actors


def _absent() -> bool:
    return False


def skip_unused_imports() -> None:
    """In a process started with RAY_WORKER_ENV=1: transformers sees no scikit-learn (before it
    first imports its generation code); anywhere else nothing changes."""
    if os.environ.get(RAY_WORKER_ENV) != "1":
        return
    import transformers.utils
    from transformers.utils import import_utils

    # transformers.generation imports the name from transformers.utils, which took it from import_utils
    transformers.utils.is_sklearn_available = _absent
    import_utils.is_sklearn_available = _absent
