"""The fit loop (`ray_trainer.Trainer`), its entry `run.run_training`, checkpoints, the collapse
monitor and metric logging."""

from corewarding.trainer.checkpoint import CheckpointError

__all__ = ["CheckpointError", "run_training"]


def __getattr__(name: str):  # lazy: importing the package must not import ray / transformers
    if name == "run_training":
        from corewarding.trainer.run import run_training

        return run_training
    raise AttributeError(name)
