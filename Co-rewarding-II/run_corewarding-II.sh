#!/usr/bin/env bash
# Co-rewarding-II (model view): the GRPO reference model is also an EMA teacher of the policy;
# the majority answer of its 8 rollouts per question is the policy's pseudo-label. The paper's
# settings come from the preset `+method=co_rewarding_ii` (corewarding/config/method/,
# docs/method.md): batch 128, 8 rollouts (and 8 teacher rollouts) per question, lr 3e-6 with 10 %
# cosine warm-up, KL loss 0.001 (low_var_kl) against the same teacher, prompt 512 / response 3072
# tokens, temperature 1.0, 3 epochs; the teacher is updated every INTERVAL steps with weight a_k on
# the teacher going ALPHA_START -> ALPHA_END on a cosine (paper's parametrisation).
#
#   cd Co-rewarding-II && LLM_PATH=/models/Qwen3-8B-Base NUM_GPUS=8 bash run_corewarding-II.sh [key=value ...]
#
# Environment: as scripts/run_common.sh says (LLM_PATH, NUM_GPUS, NNODES, WANDB_API_KEY, ROLLOUT_TP,
# RELEASE_EXACT, DRY_RUN, ...), and TRAIN_FILES / TRAIN_AUG_FILES / VAL_FILES (data paths, default
# ../data/math/...; DAPO-14k: TRAIN_FILES=../data/dapo/train.parquet), USE_AUG (False; True gives
# the policy the rephrased question and the teacher the original, as the release; the override
# data.p=0 reverses that; needs TRAIN_AUG_FILES), ALPHA_START (0.99), ALPHA_END (0.9999, the paper;
# with RELEASE_EXACT=1 the release's 0.99999), INTERVAL (1), EXP_NAME. Extra arguments are hydra
# overrides appended last (they win), e.g. ray_init.address=auto.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ../scripts/run_common.sh

TRAIN_FILES=${TRAIN_FILES:-../data/math/train.parquet}
TRAIN_AUG_FILES=${TRAIN_AUG_FILES:-null}
VAL_FILES=${VAL_FILES:-../data/math/test.parquet}
USE_AUG=${USE_AUG:-False}
ALPHA_START=${ALPHA_START:-0.99}   # weight on the teacher at the first step (paper's a_k)
if [ "${RELEASE_EXACT:-0}" = 1 ]; then
    ALPHA_END=${ALPHA_END:-0.99999}  # the release's script: 1e-5 on the policy at the end
else
    ALPHA_END=${ALPHA_END:-0.9999}   # ... and at the last step (the paper's 1e-4 on the policy)
fi
INTERVAL=${INTERVAL:-1}            # update the teacher every INTERVAL steps
EXP_NAME=${EXP_NAME:-Co-rewarding-II}

launch "$EXP_NAME" \
    +method=co_rewarding_ii \
    data.train_files="$TRAIN_FILES" \
    data.train_aug_files="$TRAIN_AUG_FILES" \
    data.use_aug="$USE_AUG" \
    data.val_files="$VAL_FILES" \
    actor_rollout_ref.ref.sliding_average.update_interval="$INTERVAL" \
    actor_rollout_ref.ref.sliding_average.alpha_start="$ALPHA_START" \
    actor_rollout_ref.ref.sliding_average.alpha_end="$ALPHA_END" \
    -- "$@"
