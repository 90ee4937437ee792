#!/usr/bin/env bash
# Evaluate a model or a checkpoint as the paper reports it: MATH500 and GSM8K pass@1 (k=1) and
# AMC avg@8 (k=8), temperature 0.8. A thin wrapper around `python -m corewarding.eval`.
#
#   bash scripts/evaluate.sh MODEL [OUTPUT_DIR] [more corewarding.eval arguments...]
#
# MODEL: an HF folder, a global_step_N checkpoint dir, or a run dir (its latest checkpoint).
# Environment: NUM_GPUS (default: every GPU the node shows, one engine each; 1 without a GPU),
# BENCHMARKS (the command's default: math500,gsm8k,amc:8), BACKEND (vllm | hf; default vllm), MAX_TOKENS (3072),
# TEMPERATURE (0.8), DATA_DIR (data), PYTHON (on a GPU node the active python3, the environment
# scripts/install_env.sh made; on a CPU machine .venv/bin/python when present).
# Later arguments win, e.g. `--limit 50` or `--backend hf`.
# Then `python scripts/compare_runs.py --runs NAME=OUTPUT_DIR ...` prints the Table-1-shaped comparison.
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
cd "$(dirname "$0")/.."
MODEL=$1
shift
OUT=outputs/eval/$(basename "$MODEL")
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then
    OUT=$1
    shift
fi
if [ -z "${PYTHON:-}" ]; then
    # .venv is the CPU environment (make env): never the choice on a node with a GPU
    if ! nvidia-smi -L >/dev/null 2>&1 && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
source scripts/visible_gpus.sh
NUM_GPUS=${NUM_GPUS:-$(visible_gpus)}
exec "$PYTHON" -m corewarding.eval --model "$MODEL" --output_dir "$OUT" \
    ${BENCHMARKS:+--benchmarks "$BENCHMARKS"} --k 1 \
    --backend "${BACKEND:-vllm}" --temperature "${TEMPERATURE:-0.8}" \
    --max_tokens "${MAX_TOKENS:-3072}" --data_dir "${DATA_DIR:-data}" --num_gpus "$NUM_GPUS" "$@"
