"""The PPO update on one rank's rows (`actor.py`): its settings (`ppo_settings.py`) and its
micro-batches and loss weights (`micro_batches.py`); its forward is `workers.model.forward`'s."""
