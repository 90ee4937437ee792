"""`run_training(cfg)`: everything between a hydra config and a finished run.

Checks the config, loads the tokenizer and the datasets, finds the checkpoint to resume (before
any worker starts, so a bad resume folder fails fast), starts Ray when it is not running yet,
starts the workers, trains, and tears down what it started (a Ray session that the caller had
already started is left running, so tests can reuse one).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from corewarding.data import DataError, PairedRLDataset, RLDataset, StatefulLoader
from corewarding.trainer import checkpoint as ckpt
from corewarding.trainer.config import ConfigError, Method, prepare_config, resolve_method, world_size
from corewarding.trainer.tracking import Tracker

logger = logging.getLogger(__name__)

# A single-node CPU run (tests, the demo) starts Ray without token authentication: nothing but
# loopback can reach it. Every other run keeps Ray's own authentication: a local GPU run gets the
# token Ray generates for a new cluster, a cluster run the one its nodes were started with.
LOCAL_CPU_RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def init_ray(cfg: DictConfig) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down). A run without
    `ray_init.address` starts a single-node Ray bound to loopback (127.0.0.1)."""
    address = cfg.ray_init.get("address")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    local_cpu = not address and cfg.trainer.device == "cpu"
    if local_cpu:
        for key, value in LOCAL_CPU_RAY_ENV.items():
            os.environ.setdefault(key, value)
    elif os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        logger.warning("RAY_AUTH_MODE=disabled on a GPU or cluster run: anyone who can reach Ray's ports can run code "
                       "on these nodes; unset it to keep Ray's token authentication")
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=str(address), log_to_driver=True)
        return True
    num_cpus = cfg.ray_init.get("num_cpus")
    if num_cpus is None:
        wanted = world_size(cfg) * int(cfg.trainer.get("cpus_per_worker") or 1)
        num_cpus = max(wanted, os.cpu_count() or 1) if local_cpu else None
    passed = ("TOKENIZERS_PARALLELISM", *LOCAL_CPU_RAY_ENV) if local_cpu else ("TOKENIZERS_PARALLELISM",)
    kwargs: dict[str, Any] = dict(
        num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {k: os.environ[k] for k in passed if k in os.environ}},
    )
    if cfg.ray_init.get("temp_dir"):
        Path(cfg.ray_init.temp_dir).mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(cfg.ray_init.temp_dir)
    ray.init(**kwargs)
    return True


def load_tokenizer(cfg: DictConfig):
    from transformers import AutoTokenizer

    path = cfg.actor_rollout_ref.model.get("tokenizer_path") or cfg.actor_rollout_ref.model.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=bool(cfg.actor_rollout_ref.model.get("trust_remote_code", False))
        )
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise ConfigError(f"actor_rollout_ref.model.path={path}: cannot load its tokenizer ({exc})".replace("\n", " ")) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_datasets(cfg: DictConfig, method: Method, tokenizer) -> tuple[Any, Any | None]:
    data = cfg.data
    require_gt = data.get("require_ground_truth")
    if require_gt is None:
        require_gt = method.ground_truth
    common = dict(
        tokenizer=tokenizer, max_prompt_length=int(data.max_prompt_length), prompt_key=str(data.prompt_key),
        filter_overlong_prompts=bool(data.filter_overlong_prompts), truncation=str(data.truncation),
    )
    paired = method.paired or (method.teacher and bool(data.use_aug))
    if paired:
        train = PairedRLDataset(list(data.train_files), list(data.train_aug_files), require_ground_truth=bool(require_gt),
                                max_samples=data.get("train_max_samples"), **common)
    else:
        train = RLDataset(list(data.train_files), require_ground_truth=bool(require_gt),
                          max_samples=data.get("train_max_samples"), **common)
    val = None
    if data.get("val_files"):
        val = RLDataset(list(data.val_files), require_ground_truth=True, max_samples=data.get("val_max_samples"), **common)
    return train, val


def build_loader(cfg: DictConfig, method: Method, train: Any) -> StatefulLoader:
    """The resumable training loader; Co-rewarding-II with data.use_aug swaps each pair's views with
    probability data.p (the release's paired dataset; its Co-rewarding-I dataset never swaps)."""
    swap_p = float(cfg.data.p) if method.teacher and cfg.data.use_aug else None
    return StatefulLoader(train, int(cfg.data.train_batch_size), shuffle=bool(cfg.data.shuffle), seed=int(cfg.data.seed),
                          drop_last=True, view_swap_p=swap_p)


def resume_target(cfg: DictConfig) -> Path | None:
    mode = str(cfg.trainer.resume_mode)
    if mode == "disable":
        return None
    if mode == "resume_path":
        return Path(cfg.trainer.resume_from_path)
    return ckpt.latest_dir(cfg.trainer.default_local_dir)


def run_training(cfg: DictConfig, progress: bool = True) -> dict[str, Any]:
    """Train as configured. Returns {"history": [metrics per logged step], "global_step",
    "checkpoint_dir", "config"}. Raises ConfigError / DataError / CheckpointError for bad input."""
    cfg = prepare_config(cfg)
    method = resolve_method(cfg.reward_model.reward_manager)
    tokenizer = load_tokenizer(cfg)
    train, val = build_datasets(cfg, method, tokenizer)

    batch_size = int(cfg.data.train_batch_size)
    if len(train) < batch_size:
        raise ConfigError(
            f"data.train_batch_size={batch_size} is larger than the training set ({len(train)} "
            f"{'pairs' if isinstance(train, PairedRLDataset) else 'prompts'} after filtering)"
        )
    loader = build_loader(cfg, method, train)
    steps = cfg.trainer.get("total_training_steps") or len(loader) * int(cfg.trainer.total_epochs)
    cfg.actor_rollout_ref.actor.optim.total_training_steps = int(steps)

    target = resume_target(cfg)
    state = ckpt.read_state(target) if target is not None else None
    if int(cfg.trainer.save_freq or -1) > 0 or cfg.trainer.get("max_steps_this_run"):
        start = int(state["global_step"]) if state is not None else 0
        ckpt.check_start_step(cfg.trainer.default_local_dir, start, target)
    if state is not None and int(state.get("total_training_steps", steps)) != int(steps):
        logger.warning("resuming a run planned for %s steps with %s steps", state["total_training_steps"], steps)

    tracker = Tracker(
        cfg.trainer.default_local_dir, cfg.trainer.logger, str(cfg.trainer.project_name),
        str(cfg.trainer.experiment_name), OmegaConf.to_container(cfg, resolve=True),
        console_every=int(cfg.trainer.get("console_every") or 1),
        resume_step=int(state["global_step"]) if state is not None else None,
    )
    started = False
    workers = None
    try:
        from corewarding.trainer.ray_trainer import Trainer

        started = init_ray(cfg)
        from corewarding.workers.group import RayWorkerGroup

        start = time.perf_counter()
        workers = RayWorkerGroup(OmegaConf.to_container(cfg, resolve=True))
        placed = time.perf_counter()
        workers.call_all("init_model")
        logger.info("%d workers placed in %.1f s, models loaded in %.1f s", workers.world_size, placed - start,
                    time.perf_counter() - placed)
        trainer = Trainer(cfg, method, tokenizer, loader, val, workers, tracker, total_steps=int(steps))
        if state is not None:
            trainer.load_checkpoint(target, state)
            logger.info("resumed from %s (step %d)", target, trainer.global_step)
            print(f"resumed from {target} at step {trainer.global_step}", flush=True)
        history = trainer.fit(progress=progress)
        return {
            "history": history,
            "global_step": trainer.global_step,
            "checkpoint_dir": str(cfg.trainer.default_local_dir),
            "config": cfg,
        }
    finally:
        tracker.close()
        if workers is not None:
            try:
                workers.call_all("shutdown")
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
            workers.shutdown()
        if started:
            import ray

            ray.shutdown()


USER_ERRORS = (ConfigError, DataError, ckpt.CheckpointError)
