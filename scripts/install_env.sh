#!/usr/bin/env bash
# Install the GPU-node environment: CUDA torch, vLLM, flash-attention and this package.
# Usage (on a CUDA 12.x node, inside a fresh conda env or venv with Python 3.10-3.12):
#   bash scripts/install_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# vLLM pins the torch build it was compiled against; installing it first lets pip pick that torch.
pip install "vllm>=0.10"
pip install flash-attn --no-build-isolation
pip install -e ".[gpu]"
python - <<'PY'
import torch, vllm
assert torch.cuda.is_available(), "torch was installed without CUDA: check the CUDA driver / wheel"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), vllm {vllm.__version__}, GPUs: {torch.cuda.device_count()}")
PY
