"""Error types shared across layers; this module imports nothing of the package, so any layer may
use it (the method registry raises ConfigError without importing the configuration package)."""


class ConfigError(ValueError):
    """A configuration problem; the message is one line that names the key to fix."""
