"""Shared fixtures: the real SmolLM2 model (converted once, cached), a tiny random model with the
same tokenizer, that model taught to box an answer (`boxing_model`), a module-wide local Ray
session, and the shared data folder beside the repository.

With COREWARDING_REQUIRE_VLLM=1 (set by `make test`) a vllm that cannot be imported stops the run
before collection instead of letting the vLLM tests skip themselves (`pytest.importorskip`)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray

    if ray.is_initialized():
        yield
        return
    temp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(temp),
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def two_step_histories() -> dict[str, list[dict]]:
    """method -> the logged steps of test_e2e's `test_two_steps` run of it, for a test elsewhere that
    compares a run of the same settings with it (each such test runs it itself when it is missing)."""
    return {}


@pytest.fixture(scope="session")
def boxing_model(tiny_model_path):
    """The tiny model, trained (about a minute, once) to answer "The answer is \\boxed{d}." (d in 1..3)."""
    from corewarding.model_zoo import build_once, cache_dir

    out = cache_dir() / "tiny-llama-2l-128h-boxing-v3"
    return build_once(out, lambda folder: _train_boxing_model(tiny_model_path, folder))


def _train_boxing_model(tiny_model_path: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corewarding.data import ONE_SHOT_SYSTEM_PROMPT, builtin_problems
    from corewarding.model_zoo import save_model_folder

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    prompts = [
        tok.apply_chat_template([{"role": "system", "content": ONE_SHOT_SYSTEM_PROMPT}, {"role": "user", "content": p["question"]}],
                                add_generation_prompt=True, tokenize=False)
        for p in builtin_problems(64, seed=5)
    ]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):  # 100 steps left it boxing a fifth of its sampled answers; 300 box all of them
        pairs = [(rng.choice(ids), tok(f"The answer is \\boxed{{{rng.choice('123')}}}.", add_special_tokens=False)["input_ids"]
                  + [tok.eos_token_id]) for _ in range(16)]
        resp_len, width = len(pairs[0][1]), max(len(p) for p, _ in pairs)
        x = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p + r for p, r in pairs])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + resp_len) for p, _ in pairs])
        hidden = model.model(input_ids=x, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).last_hidden_state
        logits = model.lm_head(hidden[:, width - 1:width + resp_len - 1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, width:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    return save_model_folder(model, tok, out)
