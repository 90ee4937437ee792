"""Shared fixtures: the real SmolLM2 model (converted once, cached), a tiny random model with the
same tokenizer, and the shared data folder beside the repository.

With COREWARDING_REQUIRE_VLLM=1 (set by `make test`) a vllm that cannot be imported stops the run
before collection instead of letting the vLLM tests skip themselves (`pytest.importorskip`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REQUIRE_VLLM = "COREWARDING_REQUIRE_VLLM"


def pytest_configure(config: pytest.Config) -> None:
    """With COREWARDING_REQUIRE_VLLM=1, fail the run when `import vllm` fails (checked in a subprocess,
    so that this process does not import vllm before the tests that need it)."""
    if os.environ.get(REQUIRE_VLLM) != "1":
        return
    result = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise pytest.UsageError(
            f"{REQUIRE_VLLM}=1 but `import vllm` fails in {sys.executable}, so the vLLM tests would be skipped:\n"
            f"{tail}\nreinstall it (`rm .venv/.corewarding-installed && make env`), or run pytest without "
            f"{REQUIRE_VLLM}=1 (`make test {REQUIRE_VLLM}=0`) to let those tests skip"
        )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: CI and tests expect ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from corewarding.model_zoo import prepare_smollm2

    return prepare_smollm2()


@pytest.fixture(scope="session")
def tiny_model_path(smollm2_path: Path) -> Path:
    from corewarding.model_zoo import cache_dir, make_tiny_model

    return make_tiny_model(cache_dir() / "tiny-llama-2l-128h", tokenizer_path=smollm2_path)
