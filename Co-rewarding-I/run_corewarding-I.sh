#!/usr/bin/env bash
# Co-rewarding-I (data view): GRPO where a rollout on a question is rewarded for agreeing with the
# majority answer of the rollouts on its rephrased twin, and vice versa. The paper's settings come
# from the preset `+method=co_rewarding_i` (corewarding/config/method/, docs/method.md): batch 128
# pairs, 8 rollouts per question, lr 3e-6 with 10 % cosine warm-up, KL loss 0.005 (low_var_kl),
# prompt 512 / response 3072 tokens, temperature 1.0, 3 epochs.
#
#   cd Co-rewarding-I && LLM_PATH=/models/Qwen3-8B-Base NUM_GPUS=8 bash run_corewarding-I.sh [key=value ...]
#
# Environment: as scripts/run_common.sh says (LLM_PATH, NUM_GPUS, NNODES, WANDB_API_KEY, ROLLOUT_TP,
# RELEASE_EXACT, DRY_RUN, ...), and TRAIN_FILES / TRAIN_AUG_FILES / VAL_FILES (data paths, default
# ../data/math/...), EXP_NAME. Extra arguments are hydra overrides appended last (they win), e.g.
# ray_init.address=auto or data.train_batch_size=64.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ../scripts/run_common.sh

TRAIN_FILES=${TRAIN_FILES:-../data/math/train.parquet}
TRAIN_AUG_FILES=${TRAIN_AUG_FILES:-../data/math/train_rewrite_Qwen3-32B.parquet}
VAL_FILES=${VAL_FILES:-../data/math/test.parquet}
EXP_NAME=${EXP_NAME:-Co-rewarding-I}

launch "$EXP_NAME" \
    +method=co_rewarding_i \
    data.train_files="$TRAIN_FILES" \
    data.train_aug_files="$TRAIN_AUG_FILES" \
    data.val_files="$VAL_FILES" \
    -- "$@"
