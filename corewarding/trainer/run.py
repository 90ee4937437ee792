"""`run_training(cfg)`: everything between a hydra config and a finished run.

Loads and checks the config (`corewarding.config.load_config`), takes the run folder's lock
(`run_lock`) and the preemption signals (`preemption`), loads the tokenizer and the datasets, finds
the checkpoint to resume (before any worker starts, so a bad resume folder fails fast), starts Ray
when it is not running yet, starts the workers, trains, and tears down what it started (a Ray
session that the caller had already started is left running, so tests can reuse one).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig

from corewarding.config import Config, ConfigError, load_config
from corewarding.data import DataError, PairedRLDataset, RLDataset, StatefulLoader, load_tokenizer, to_batch
from corewarding.logs import is_verbose, worker_log
from corewarding.methods import Method
from corewarding.trainer import checkpoint as ckpt
from corewarding.trainer.preemption import EXIT_PREEMPTED, Preempted, PreemptionWatch
from corewarding.trainer.run_lock import RunLock, RunLockError
from corewarding.trainer.tracking import Tracker
from corewarding.workers.worker_api import WorkerGroup

logger = logging.getLogger(__name__)

# A single-node CPU run (tests, the demo) starts Ray without token authentication: nothing but
# loopback can reach it. Every other run keeps Ray's own authentication: a local GPU run gets the
# token Ray generates for a new cluster, a cluster run the one its nodes were started with.
LOCAL_CPU_RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def init_ray(config: Config) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down). A run without
    `ray_init.address` starts a single-node Ray bound to loopback (127.0.0.1)."""
    address = config.ray_init.address
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    local_cpu = not address and config.trainer.device == "cpu"
    if local_cpu:
        for key, value in LOCAL_CPU_RAY_ENV.items():
            os.environ.setdefault(key, value)
    elif os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        logger.warning("RAY_AUTH_MODE=disabled on a GPU or cluster run: anyone who can reach Ray's ports can run code "
                       "on these nodes; unset it to keep Ray's token authentication")
    import ray

    if ray.is_initialized():
        return False
    # A quiet run: Ray's own INFO lines on the driver (its start-up banner) only at WARNING; what the
    # workers print reaches the driver only at ERROR (corewarding/logs.py).
    level = logging.INFO if is_verbose(config.trainer.verbose) else logging.WARNING
    if address:
        ray.init(address=str(address), log_to_driver=True, logging_level=level)
        return True
    num_cpus = config.ray_init.num_cpus
    if num_cpus is None and local_cpu:
        num_cpus = max(config.world_size * (config.trainer.cpus_per_worker or 1), os.cpu_count() or 1)
    passed = ("TOKENIZERS_PARALLELISM", *LOCAL_CPU_RAY_ENV) if local_cpu else ("TOKENIZERS_PARALLELISM",)
    kwargs: dict[str, Any] = dict(
        num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, logging_level=level, _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {k: os.environ[k] for k in passed if k in os.environ}},
    )
    if config.ray_init.temp_dir:
        Path(config.ray_init.temp_dir).mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(config.ray_init.temp_dir)
    ray.init(**kwargs)
    return True


def check_cluster_devices(config: Config, resources: dict[str, float]) -> None:
    """Refuse a GPU run on a Ray cluster without GPUs at once (the placement would wait for them
    until COREWARDING_PG_TIMEOUT), and a CPU run on a cluster of GPUs (a driver on a CPU-only head
    node cannot tell: trainer.device must say it)."""
    gpus = resources.get("GPU", 0)
    if config.trainer.device == "cuda" and gpus == 0:
        where = ("the Ray cluster has no GPUs: start the workers' nodes with theirs (ray start --num-gpus=N)"
                 if config.ray_init.address else "Ray sees no GPU on this machine (check CUDA_VISIBLE_DEVICES and nvidia-smi)")
        raise ConfigError(f"trainer.device=cuda but {where}; resources: {resources}; or set trainer.device=cpu")
    if config.trainer.device == "cpu" and gpus > 0 and config.ray_init.address:
        logger.warning("trainer.device=cpu on a Ray cluster with %g GPUs: the workers train on CPU cores; set "
                       "trainer.device=cuda to use the GPUs", gpus)


def build_datasets(config: Config, method: Method, tokenizer: Any) -> tuple[Any, Any | None]:
    data = config.data
    require_gt = method.ground_truth if data.require_ground_truth is None else data.require_ground_truth
    fg = config.algorithm.filter_groups
    if fg.enable and fg.metric == "acc":
        if data.require_ground_truth is False:
            raise ConfigError("algorithm.filter_groups.metric=acc filters on ground-truth accuracy: it needs "
                              "data.require_ground_truth=true (or null), or use metric=score")
        require_gt = True
    common = dict(
        tokenizer=tokenizer, max_prompt_length=data.max_prompt_length, prompt_key=data.prompt_key,
        filter_overlong_prompts=data.filter_overlong_prompts, truncation=data.truncation,
    )
    if config.roles.pairs:
        train = PairedRLDataset(list(data.train_files), list(data.train_aug_files), require_ground_truth=require_gt,
                                max_samples=data.train_max_samples, **common)
    else:
        train = RLDataset(list(data.train_files), require_ground_truth=require_gt, max_samples=data.train_max_samples,
                          **common)
    val = None
    if data.val_files:
        val = RLDataset(list(data.val_files), require_ground_truth=True, max_samples=data.val_max_samples, **common)
    return train, val


def build_loader(config: Config, train: Any) -> StatefulLoader:
    """The resumable training loader, batches of data.gen_batch_size (= data.train_batch_size unless
    dynamic sampling), each prompt row with its roles (`to_batch`); Co-rewarding-II with
    data.use_aug swaps each pair's views with probability data.p (the release's paired dataset; its
    Co-rewarding-I and -III datasets never swap)."""
    data = config.data
    roles = config.roles
    swap_p = data.p if roles.policy_views == "one" else None
    return StatefulLoader(train, data.gen_batch_size, shuffle=data.shuffle, seed=data.seed, drop_last=True,
                          view_swap_p=swap_p, collate_fn=functools.partial(to_batch, roles=roles))


def resume_target(config: Config) -> Path | None:
    trainer = config.trainer
    if trainer.resume_mode == "disable":
        return None
    if trainer.resume_mode == "resume_path":
        return Path(trainer.resume_from_path)
    return ckpt.latest_dir(trainer.default_local_dir)


def check_train_size(config: Config, train: RLDataset | PairedRLDataset) -> None:
    """Refuse a training set smaller than one batch of prompts (pairs)."""
    batch_size = max(config.data.train_batch_size, config.data.gen_batch_size)
    if len(train) < batch_size:
        key = "train_batch_size" if batch_size == config.data.train_batch_size else "gen_batch_size"
        raise ConfigError(
            f"data.{key}={batch_size} is larger than the training set ({len(train)} "
            f"{'pairs' if isinstance(train, PairedRLDataset) else 'prompts'} after filtering)"
        )


def resume_state(config: Config, steps: int) -> tuple[Path | None, dict[str, Any] | None]:
    """The checkpoint to resume from and its driver state ((None, None): a fresh start), read before
    any worker starts, so that a bad resume folder fails fast."""
    trainer_cfg = config.trainer
    target = resume_target(config)
    state = ckpt.read_state(target) if target is not None else None
    # whatever save_freq says: a preemption signal saves, and the metrics log is cut back to the start
    ckpt.check_start_step(trainer_cfg.default_local_dir, int(state["global_step"]) if state is not None else 0, target)
    if state is not None and int(state.get("total_training_steps", steps)) != steps:
        logger.warning("resuming a run planned for %s steps with %s steps", state["total_training_steps"], steps)
    return target, state


def build_workers(config: Config) -> WorkerGroup:
    """The one worker in this process (`trainer.single_process`), or one Ray actor per device (Ray is
    running: `init_ray`)."""
    if config.trainer.single_process:
        from corewarding.workers.local_group import LocalWorkerGroup

        return LocalWorkerGroup(config)
    import ray

    check_cluster_devices(config, ray.cluster_resources())
    from corewarding.workers.group import RayWorkerGroup

    return RayWorkerGroup(config)


def stop_workers(workers: WorkerGroup, wait: bool) -> None:
    """Every worker leaves its process group (unless `wait` is False: a second signal does not wait
    for what the workers are doing), then the group stops them."""
    try:
        if wait:
            workers.leave_process_group()
    except Exception:  # noqa: BLE001 - best effort at teardown
        pass
    workers.close()


def run_training(cfg: DictConfig | Config, progress: bool = True) -> dict[str, Any]:
    """Train as configured. Returns {"history": [metrics per logged step], "global_step",
    "checkpoint_dir", "config"}. Raises ConfigError / DataError / CheckpointError / RunLockError for
    bad input, `Preempted` after a preemption signal. The run holds `trainer.default_local_dir`'s
    lock (`run_lock.RunLock`) throughout."""
    config = cfg if isinstance(cfg, Config) else load_config(cfg)
    trainer_cfg = config.trainer
    if not trainer_cfg.single_process and not is_verbose(trainer_cfg.verbose):
        print(f"run folder {trainer_cfg.default_local_dir}; worker logs (vLLM, Ray, torch) in "
              f"{worker_log(trainer_cfg.default_local_dir, 0).parent}/ (trainer.verbose=True to print them here)", flush=True)
    watch = PreemptionWatch(trainer_cfg.preemption_signals, lambda: latest_or_none(trainer_cfg.default_local_dir))
    watch.install()
    try:
        with RunLock(trainer_cfg.default_local_dir, force=trainer_cfg.force_unlock):
            return _train(config, progress, watch)
    finally:
        watch.restore()


def latest_or_none(root: str | Path) -> Path | None:
    try:
        return ckpt.latest_dir(root)
    except ckpt.CheckpointError:
        return None


def _train(config: Config, progress: bool, watch: PreemptionWatch) -> dict[str, Any]:
    method = config.method
    model = config.actor_rollout_ref.model
    tokenizer = load_tokenizer(model.tokenizer_path or model.path, model.trust_remote_code)
    train, val = build_datasets(config, method, tokenizer)
    check_train_size(config, train)
    loader = build_loader(config, train)
    trainer_cfg = config.trainer
    steps = trainer_cfg.total_training_steps or len(loader) * trainer_cfg.total_epochs
    target, state = resume_state(config, steps)

    tracker = Tracker(
        trainer_cfg.default_local_dir, trainer_cfg.logger, trainer_cfg.project_name, trainer_cfg.experiment_name,
        dataclasses.asdict(config), console_every=trainer_cfg.console_every,
        resume_step=int(state["global_step"]) if state is not None else None,
    )
    started = at_once = False
    workers: WorkerGroup | None = None
    try:
        from corewarding.trainer.ray_trainer import Trainer

        start = time.perf_counter()
        if not config.trainer.single_process:
            started = init_ray(config)
            watch.install()  # ray.init set its own SIGTERM handler
        workers = build_workers(config)
        placed = time.perf_counter()
        memory_line = workers.init_model(steps)
        if memory_line:
            print(memory_line, flush=True)
        logger.info("%d workers placed in %.1f s, models loaded in %.1f s", workers.world_size, placed - start,
                    time.perf_counter() - placed)
        trainer = Trainer(config, tokenizer, loader, val, workers, tracker, total_steps=steps)
        if state is not None:
            trainer.load_checkpoint(target, state)
            logger.info("resumed from %s (step %d)", target, trainer.global_step)
            print(f"resumed from {target} at step {trainer.global_step}", flush=True)
        history = trainer.fit(progress=progress, preemption=watch)
        return {
            "history": history,
            "global_step": trainer.global_step,
            "checkpoint_dir": trainer_cfg.default_local_dir,
            "saved_path": trainer.saved_path,  # the last checkpoint written or resumed from (None: none)
            "config": config,
        }
    except Preempted as exc:
        at_once = exc.at_once
        raise
    finally:
        tracker.close()
        if workers is not None:
            stop_workers(workers, wait=not at_once)
        if started:
            import ray

            ray.shutdown()


USER_ERRORS = (ConfigError, DataError, ckpt.CheckpointError, RunLockError)


@contextmanager
def exit_status(resumes: bool = True) -> Iterator[None]:
    """Around a command that trains: bad input ends it with one `error: ...` line and status 2, a
    preemption with one `preempted: ...` line and status 75 (`EXIT_PREEMPTED`), no traceback.
    `resumes=False`: a command that starts afresh when run again (the demo, the benchmarks) says so."""
    try:
        yield
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Preempted as exc:
        message = exc if resumes else f"{exc.reason}; this command starts afresh when run again; exit status {EXIT_PREEMPTED}"
        print(f"preempted: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)
