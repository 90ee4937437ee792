#!/usr/bin/env bash
# Install the GPU-node environment: exactly requirements/gpu.lock (CUDA torch, vLLM, Ray,
# transformers, ...), flash-attention built against that torch, and this package.
# Usage (on a CUDA node whose driver runs CUDA 13, which the locked torch 2.13.0 and vLLM 0.32 wheels
# are built for; inside a fresh conda env or venv with the lock's Python, 3.11):
#   bash scripts/install_env.sh
# The engine calls vLLM 0.32's collective_rpc("reload_weights", kwargs={"weights_iterator": ...,
# "is_checkpoint_format": True}), the layer-wise in-place reload; older releases' reload_weights
# takes neither argument. scripts/lock_gpu_env.sh moves the lock forward on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
FLASH_ATTN_VERSION=2.8.3.post2  # built from source against the locked torch (no wheel on PyPI)
python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "requirements/gpu.lock is for Python 3.11; this python is $(python -V 2>&1): activate a 3.11 environment" >&2
    exit 1
}
pip install -r requirements/gpu.lock
pip install --no-build-isolation "flash-attn==${FLASH_ATTN_VERSION}"
pip install --no-deps -e .
python - <<'PY'
import torch, vllm
assert torch.cuda.is_available(), "torch was installed without CUDA: check the CUDA driver / wheel"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), vllm {vllm.__version__}, GPUs: {torch.cuda.device_count()}")
PY
