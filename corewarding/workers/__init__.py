"""Workers: the FSDP2 actor / reference / rollout worker (`fsdp_worker.ActorRolloutRefWorker`), the Ray
group that runs one per device (`group.RayWorkerGroup`) and its rooms: the model (`model/`), the PPO
update (`update/`), the worker's checkpoint (`checkpoint/`) and the rollout engines (`rollout/`)."""
