"""The fit loop (`ray_trainer.Trainer`), its entry `run.run_training`, configuration checks,
checkpoints and metric logging."""

from corewarding.trainer.checkpoint import CheckpointError
from corewarding.trainer.config import ConfigError, Method, compose_config, prepare_config, resolve_method

__all__ = ["CheckpointError", "ConfigError", "Method", "compose_config", "prepare_config", "resolve_method", "run_training"]


def __getattr__(name: str):  # lazy: importing the package must not import ray / transformers
    if name == "run_training":
        from corewarding.trainer.run import run_training

        return run_training
    raise AttributeError(name)
