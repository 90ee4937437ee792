#!/usr/bin/env bash
# The paper's baselines on the same trainer and settings: GT-reward GRPO (gt), Majority-Voting
# (majority_voting), Self-Certainty (self_certainty), Entropy (entropy); and the controls and baseline a
# label-free result is reviewed against: random, format, incorrect (Spurious Rewards), empo (EMPO), ttrl
# (Majority-Voting as TTRL runs it: the vote over 16 rollouts, the update on 8).
# The settings come from the preset `+method=$METHOD` (corewarding/config/method/): the paper's GRPO
# settings with KL loss 0.005.
# No rephrased data is needed; each baseline has its own experiment name, so its checkpoints never
# mix with a method's.
#
#   cd baselines && METHOD=majority_voting LLM_PATH=/models/Qwen3-8B-Base NUM_GPUS=8 bash run_baseline.sh [key=value ...]
#
# Environment: as scripts/run_common.sh says (LLM_PATH, NUM_GPUS, NNODES, WANDB_API_KEY, ROLLOUT_TP,
# RELEASE_EXACT, DRY_RUN, ...), METHOD (required), TRAIN_FILES / VAL_FILES (default ../data/math/...),
# EXP_NAME (default baseline-$METHOD). Extra arguments are hydra overrides appended last (they win).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ../scripts/run_common.sh

METHOD=${METHOD:?set METHOD to gt, majority_voting, self_certainty or entropy, or random, format, incorrect, empo, ttrl}
case "$METHOD" in
    gt | majority_voting | self_certainty | entropy | random | format | incorrect | empo | ttrl) ;;
    *) echo "METHOD=$METHOD: choose gt, majority_voting, self_certainty or entropy, or a control: random, format," \
            "incorrect, empo, ttrl" >&2; exit 2 ;;
esac
TRAIN_FILES=${TRAIN_FILES:-../data/math/train.parquet}
VAL_FILES=${VAL_FILES:-../data/math/test.parquet}
EXP_NAME=${EXP_NAME:-baseline-$METHOD}

launch "$EXP_NAME" \
    +method="$METHOD" \
    data.train_files="$TRAIN_FILES" \
    data.val_files="$VAL_FILES" \
    -- "$@"
