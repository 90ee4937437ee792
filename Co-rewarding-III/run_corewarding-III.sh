#!/usr/bin/env bash
# Co-rewarding-III (data view and model view together, the paper's final version): the EMA teacher
# of Co-rewarding-II answers both the original and the rephrased question; each view's rollouts
# are rewarded for agreeing with the majority answer of the teacher's rollouts on the *other*
# view; both views train, their losses summed, with the low-variance KL to the same teacher. The
# settings of the authors' release come from the preset `+method=co_rewarding_iii`
# (corewarding/config/method/, docs/method.md): batch 128 pairs, 8 rollouts per question and view
# for the policy and for the teacher, lr 3e-6 with 10 % cosine warm-up, KL 0.001, prompt 512 /
# response 3072 tokens, micro-batch 4, teacher weight 0.99 -> 0.99999 every step, 3 epochs.
#
#   cd Co-rewarding-III && LLM_PATH=/models/Qwen3-8B-Base NUM_GPUS=8 bash run_corewarding-III.sh [key=value ...]
#
# Environment: as scripts/run_common.sh says (LLM_PATH, NUM_GPUS, NNODES, WANDB_API_KEY, ROLLOUT_TP,
# RELEASE_EXACT, DRY_RUN, ...), and TRAIN_FILES / TRAIN_AUG_FILES / VAL_FILES (data paths, default
# ../data/math/...; DAPO-14k as the release: TRAIN_FILES=../data/dapo/train.parquet
# TRAIN_AUG_FILES=../data/dapo/train_rewrite_Qwen3-32B.parquet), ALPHA_START (0.99), ALPHA_END
# (0.99999), INTERVAL (1), EXP_NAME. Extra arguments are hydra overrides appended last (they win).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ../scripts/run_common.sh

TRAIN_FILES=${TRAIN_FILES:-../data/math/train.parquet}
TRAIN_AUG_FILES=${TRAIN_AUG_FILES:-../data/math/train_rewrite_Qwen3-32B.parquet}
VAL_FILES=${VAL_FILES:-../data/math/test.parquet}
ALPHA_START=${ALPHA_START:-0.99}     # weight on the teacher at the first step (the release: 0.01 on the policy)
ALPHA_END=${ALPHA_END:-0.99999}      # ... and at the last step (the release: 1e-5 on the policy)
INTERVAL=${INTERVAL:-1}              # update the teacher every INTERVAL steps
EXP_NAME=${EXP_NAME:-Co-rewarding-III}

launch "$EXP_NAME" \
    +method=co_rewarding_iii \
    data.train_files="$TRAIN_FILES" \
    data.train_aug_files="$TRAIN_AUG_FILES" \
    data.val_files="$VAL_FILES" \
    actor_rollout_ref.ref.sliding_average.update_interval="$INTERVAL" \
    actor_rollout_ref.ref.sliding_average.alpha_start="$ALPHA_START" \
    actor_rollout_ref.ref.sliding_average.alpha_end="$ALPHA_END" \
    -- "$@"
