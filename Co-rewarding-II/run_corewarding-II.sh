#!/usr/bin/env bash
# Co-rewarding-II (model view): the GRPO reference model is also an EMA teacher of the policy;
# the majority answer of its 8 rollouts per question is the policy's pseudo-label. The paper's
# settings (SPEC.md section 2): batch 128, 8 rollouts (and 8 teacher rollouts) per question,
# lr 3e-6 with 10 % cosine warm-up, KL loss 0.001 (low_var_kl) against the same teacher,
# prompt 512 / response 3072 tokens, temperature 1.0, 3 epochs, teacher updated every step with
# weight a_k on the teacher going 0.99 -> 0.9999 on a cosine (paper's parametrisation).
#
#   cd Co-rewarding-II && LLM_PATH=/models/Qwen3-8B-Base NUM_GPUS=8 bash run_corewarding-II.sh [key=value ...]
#
# Environment: LLM_PATH (required), NUM_GPUS (GPUs per node; default: all visible), NNODES (1),
# WANDB_API_KEY (wandb logging when set), TRAIN_FILES / TRAIN_AUG_FILES / VAL_FILES (data paths,
# default ../data/math/...; DAPO-14k: TRAIN_FILES=../data/dapo/train.parquet), USE_AUG (False;
# True gives the policy the rephrased question and the teacher the original, as the release; the
# override data.p=0 reverses that; needs TRAIN_AUG_FILES), ROLLOUT_TP (vLLM tensor
# parallel size, 1), ALPHA_START / ALPHA_END / INTERVAL (EMA schedule), EXP_NAME, PROJECT_NAME, DRY_RUN=1 (print the command only).
# RELEASE_EXACT=1 runs the authors' release where our defaults differ (+preset=release:
# docs/release-differences.md) and makes ALPHA_END default to the release's 0.99999.
# Extra arguments are hydra overrides appended last (they win), e.g. ray_init.address=auto.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

export PYTHONUNBUFFERED=1 PYTHONUTF8=1 HYDRA_FULL_ERROR=1 TOKENIZERS_PARALLELISM=false
LLM_PATH=${LLM_PATH:?set LLM_PATH to the base model folder, e.g. LLM_PATH=/models/Qwen3-8B-Base}
if [ -z "${NUM_GPUS:-}" ]; then
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
        NUM_GPUS=$(echo "$CUDA_VISIBLE_DEVICES" | awk -F',' '{print NF}')
    else
        NUM_GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
        [ "${NUM_GPUS:-0}" -gt 0 ] || NUM_GPUS=1
    fi
fi
NNODES=${NNODES:-1}
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
PROJECT_NAME=${PROJECT_NAME:-co-rewarding}
EXP_NAME=${EXP_NAME:-Co-rewarding-II}
if [ -n "${WANDB_API_KEY:-}" ] || [ "${WANDB_MODE:-}" = offline ]; then
    LOGGER="['console','wandb']"
else
    LOGGER="['console','tensorboard']"   # set WANDB_API_KEY for wandb
fi
PYTHON=${PYTHON:-python3}

ARGS=(
    algorithm.adv_estimator=grpo
    algorithm.norm_adv_by_std_in_grpo=True
    algorithm.use_kl_in_reward=False
    data.train_files=$TRAIN_FILES
    data.train_aug_files=$TRAIN_AUG_FILES
    data.use_aug=$USE_AUG
    data.val_files=$VAL_FILES
    data.train_batch_size=128
    data.max_prompt_length=512
    data.max_response_length=3072
    data.filter_overlong_prompts=True
    data.truncation=error
    actor_rollout_ref.model.path=$LLM_PATH
    actor_rollout_ref.model.use_remove_padding=True
    actor_rollout_ref.model.enable_gradient_checkpointing=True
    actor_rollout_ref.actor.optim.lr=3e-6
    actor_rollout_ref.actor.optim.warmup_style=cosine
    actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1
    actor_rollout_ref.actor.ppo_mini_batch_size=128
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8
    actor_rollout_ref.actor.use_kl_loss=True
    actor_rollout_ref.actor.kl_loss_coef=0.001
    actor_rollout_ref.actor.kl_loss_type=low_var_kl
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.actor.fsdp_config.param_offload=False
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.n=8
    actor_rollout_ref.rollout.teacher_n=8
    actor_rollout_ref.rollout.temperature=1.0
    actor_rollout_ref.rollout.tensor_model_parallel_size=${ROLLOUT_TP:-1}
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16
    actor_rollout_ref.ref.fsdp_config.param_offload=True
    actor_rollout_ref.ref.sliding_average.enable=True
    actor_rollout_ref.ref.sliding_average.update_interval=$INTERVAL
    actor_rollout_ref.ref.sliding_average.alpha_start=$ALPHA_START
    actor_rollout_ref.ref.sliding_average.alpha_end=$ALPHA_END
    reward_model.reward_manager=co_rewarding_II
    reward_model.val_reward_manager=naive
    trainer.critic_warmup=0
    trainer.val_before_train=True
    trainer.rollout_data_dir=rollout_log/$EXP_NAME
    trainer.n_gpus_per_node=$NUM_GPUS
    trainer.nnodes=$NNODES
    trainer.logger=$LOGGER
    trainer.project_name=$PROJECT_NAME
    trainer.experiment_name=$EXP_NAME
    trainer.save_freq=30
    trainer.test_freq=10
    trainer.total_epochs=3
)

if [ "${RELEASE_EXACT:-0}" = 1 ]; then
    ARGS=(+preset=release "${ARGS[@]}")
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%s\n' "${ARGS[@]}" "$@"
    exit 0
fi
mkdir -p logs
set -x
"$PYTHON" -m corewarding.main "${ARGS[@]}" "$@" 2>&1 | tee "logs/$EXP_NAME.log"
