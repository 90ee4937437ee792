# Sourced by scripts/run_common.sh and scripts/evaluate.sh: `visible_gpus` prints how many GPUs this
# node shows (CUDA_VISIBLE_DEVICES when set, else nvidia-smi), 1 when it shows none.
visible_gpus() {
    local count
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        count=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
    else
        count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    if [ "${count:-0}" -ge 1 ] 2>/dev/null; then echo "$count"; else echo 1; fi
}
