"""Saving, restoring and exporting one worker (`worker_checkpoint.py`) into its checkpoint files
(`worker_state.py`), named by `corewarding.checkpoint_layout`; its RNG states are `workers.rng_state`'s."""
