"""Hydra entry point: `python -m corewarding.main key=value ...` (verl-style overrides).

    python -m corewarding.main reward_model.reward_manager=co_rewarding_II \\
        actor_rollout_ref.model.path=/models/Qwen3-8B-Base data.train_files=data/math/train.parquet ...

The configuration is `corewarding/config/ppo_trainer.yaml`; the run scripts in Co-rewarding-I/,
-II/, -III/ and baselines/ show the paper's settings. Bad input (missing model, data files or columns,
batch sizes that do not divide, a corrupt checkpoint, a run folder in use) ends with one line
`error: ...` and exit status 2; a preempted run (`trainer.preemption_signals`) with one line
`preempted: ...` naming its checkpoint and exit status 75. A multi-node run joins a cluster
started with `ray start`: `ray_init.address=auto` (with Ray's token authentication:
Co-rewarding-I/README.md, "Multi-node"). A single-node run starts its own Ray on loopback (`corewarding.trainer.run.init_ray`).
"""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@hydra.main(config_path="config", config_name="ppo_trainer", version_base=None)
def main(cfg: DictConfig) -> None:
    from corewarding.logs import FORMAT, is_verbose
    from corewarding.trainer.run import exit_status, run_training

    # A quiet console (corewarding/logs.py): the driver's own INFO lines only with trainer.verbose. Hydra
    # has set up the root logger already (basicConfig then does nothing): its level is what counts.
    logging.basicConfig(format=FORMAT)
    logging.getLogger().setLevel(logging.INFO if is_verbose(bool(cfg.trainer.get("verbose"))) else logging.WARNING)
    with exit_status():
        result = run_training(cfg)
    saved = result["saved_path"]
    checkpoint = f"last checkpoint {saved}" if saved else "no checkpoint (trainer.save_freq=-1)"
    print(f"done: {result['global_step']} steps; {checkpoint}; metrics.jsonl in {result['checkpoint_dir']}", flush=True)


if __name__ == "__main__":
    from corewarding.startup import skip_unused_imports

    skip_unused_imports()
    main()
