# Sourced by the run scripts (Co-rewarding-I/, -II/, -III/, baselines/run_baseline.sh): the
# environment they all read, and `launch`, which runs `python -m corewarding.main` with their overrides.
#
# LLM_PATH (required), NUM_GPUS (GPUs per node; default: all visible), NNODES (1), WANDB_API_KEY
# (wandb logging when set, else tensorboard), PROJECT_NAME (co-rewarding), ROLLOUT_TP (vLLM tensor
# parallel size, 1), PYTHON (python3), RELEASE_EXACT=1 (the authors' release where our defaults
# differ: +preset=release, docs/release-differences.md), DRY_RUN=1 (print the overrides, run nothing).

export PYTHONUNBUFFERED=1 PYTHONUTF8=1 HYDRA_FULL_ERROR=1 TOKENIZERS_PARALLELISM=false
LLM_PATH=${LLM_PATH:?set LLM_PATH to the base model folder, e.g. LLM_PATH=/models/Qwen3-8B-Base}
source "$(dirname "${BASH_SOURCE[0]}")/visible_gpus.sh"
NUM_GPUS=${NUM_GPUS:-$(visible_gpus)}
NNODES=${NNODES:-1}
ROLLOUT_TP=${ROLLOUT_TP:-1}
PROJECT_NAME=${PROJECT_NAME:-co-rewarding}
if [ -n "${WANDB_API_KEY:-}" ] || [ "${WANDB_MODE:-}" = offline ]; then
    LOGGER="['console','wandb']"
else
    LOGGER="['console','tensorboard']"   # set WANDB_API_KEY for wandb
fi
PYTHON=${PYTHON:-python3}

# launch EXP_NAME OVERRIDE... -- EXTRA... : the run, logged to logs/EXP_NAME.log, with the script's
# own overrides, then the ones every run script sets from the environment (model, tensor parallel,
# GPUs, nodes, logging, names), then the script's extra arguments (last, so they win)
launch() {
    local name=$1
    shift
    local own=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        own+=("$1")
        shift
    done
    [ $# -gt 0 ] && shift
    local args=("${own[@]}"
        actor_rollout_ref.model.path="$LLM_PATH"
        actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
        trainer.n_gpus_per_node="$NUM_GPUS"
        trainer.nnodes="$NNODES"
        trainer.logger="$LOGGER"
        trainer.project_name="$PROJECT_NAME"
        trainer.experiment_name="$name"
        trainer.rollout_data_dir="rollout_log/$name"
        "$@")
    if [ "${RELEASE_EXACT:-0}" = 1 ]; then
        args=(+preset=release "${args[@]}")
    fi
    if [ "${DRY_RUN:-0}" = 1 ]; then
        printf '%s\n' "${args[@]}"
        return 0
    fi
    mkdir -p logs
    # Python replaces this shell (exec), so a signal sent to the job's shell alone (SLURM's
    # --signal=B:USR1@120) reaches the trainer, and the script's exit status is the trainer's (75
    # when preempted). The log still goes through tee, which ignores the signals so that it keeps
    # writing the trainer's last lines (the checkpoint it saved) and ends when Python does.
    exec > >(trap '' TERM INT USR1 HUP; exec tee "logs/$name.log") 2>&1
    set -x
    exec "$PYTHON" -m corewarding.main "${args[@]}"
}
