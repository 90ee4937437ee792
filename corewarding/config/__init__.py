"""The trainer's configuration: `ppo_trainer.yaml` (verl's keys, every default), presets
(`+preset=release`), the typed, frozen `Config` built from them (`schema.py`) and the loading that
checks and resolves it (`loading.py`)."""

from corewarding.config.loading import compose_config, load_config, replace_in
from corewarding.config.schema import Config, ConfigError

__all__ = ["Config", "ConfigError", "compose_config", "load_config", "replace_in"]
