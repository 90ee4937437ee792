"""The original release's run-script overrides, word for word (docs/release-differences.md), with the paths
left as {train}, {aug}, {val}, {model}: the config must accept them unchanged."""

from __future__ import annotations

RELEASE_I = """algorithm.adv_estimator=co_reward data.train_files={train} data.train_aug_files={aug}
data.val_files={val} data.train_batch_size=128 data.max_prompt_length=512 data.max_response_length=3072
data.filter_overlong_prompts=True data.truncation='error' actor_rollout_ref.record_entropy=False
actor_rollout_ref.model.path={model} actor_rollout_ref.rollout.tensor_model_parallel_size=1
actor_rollout_ref.model.use_fused_kernels=False actor_rollout_ref.actor.optim.lr=3e-6
actor_rollout_ref.actor.optim.warmup_style=cosine actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1
actor_rollout_ref.model.use_remove_padding=True actor_rollout_ref.actor.ppo_mini_batch_size=128
actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 actor_rollout_ref.actor.use_kl_loss=True
actor_rollout_ref.actor.kl_loss_coef=0.005 actor_rollout_ref.actor.kl_loss_type=low_var_kl
actor_rollout_ref.actor.entropy_coeff=0 actor_rollout_ref.model.enable_gradient_checkpointing=True
actor_rollout_ref.actor.fsdp_config.param_offload=False actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 actor_rollout_ref.rollout.name=vllm
actor_rollout_ref.rollout.gpu_memory_utilization=0.8 actor_rollout_ref.rollout.n=8
actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 actor_rollout_ref.ref.fsdp_config.param_offload=True
algorithm.use_kl_in_reward=False reward_model.reward_manager=co_reward trainer.critic_warmup=0
trainer.val_before_train=True trainer.rollout_data_dir=rollout_log/Co-rewarding-I trainer.n_gpus_per_node=4
trainer.nnodes=1 trainer.logger=['console','wandb'] trainer.project_name=verl trainer.experiment_name=Co-rewarding-I
trainer.save_freq=10 trainer.test_freq=10 trainer.total_epochs=3"""

RELEASE_II = """algorithm.adv_estimator=grpo data.train_files={train} data.val_files={val} data.use_aug=False
data.train_batch_size=128 data.max_prompt_length=512 data.max_response_length=3072 data.filter_overlong_prompts=True
data.truncation='error' actor_rollout_ref.model.path={model} actor_rollout_ref.rollout.tensor_model_parallel_size=1
actor_rollout_ref.model.use_fused_kernels=False actor_rollout_ref.actor.optim.lr=3e-6
actor_rollout_ref.actor.optim.warmup_style=cosine actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1
actor_rollout_ref.model.use_remove_padding=True actor_rollout_ref.actor.ppo_mini_batch_size=128
actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 actor_rollout_ref.actor.use_kl_loss=True
actor_rollout_ref.actor.kl_loss_coef=0.001 actor_rollout_ref.actor.kl_loss_type=low_var_kl
actor_rollout_ref.actor.entropy_coeff=0 actor_rollout_ref.model.enable_gradient_checkpointing=True
actor_rollout_ref.actor.fsdp_config.param_offload=False actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 actor_rollout_ref.rollout.name=vllm
actor_rollout_ref.rollout.gpu_memory_utilization=0.6 actor_rollout_ref.rollout.n=8
actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 actor_rollout_ref.ref.fsdp_config.param_offload=True
actor_rollout_ref.ref.sliding_average.enable=True actor_rollout_ref.ref.sliding_average.update_interval=1
actor_rollout_ref.ref.sliding_average.alpha_start=0.01 actor_rollout_ref.ref.sliding_average.alpha_end=1e-5
algorithm.use_kl_in_reward=False reward_model.reward_manager=co_rewarding_II reward_model.val_reward_manager=naive
trainer.critic_warmup=0 trainer.val_before_train=True trainer.rollout_data_dir=rollout_log/x/policy
trainer.rollout_data_dir=rollout_log/x/ref trainer.n_gpus_per_node=4 trainer.nnodes=1
trainer.logger=['console','wandb'] trainer.project_name=DAPO_Dataset trainer.experiment_name=x
trainer.save_freq=30 trainer.test_freq=10 trainer.total_epochs=3"""


RELEASE_III = """algorithm.adv_estimator=co_rewarding_grpo data.use_aug=True data.train_files={train}
data.train_aug_files={aug} data.val_files={val} data.train_batch_size=128 data.max_prompt_length=512
data.max_response_length=3072 data.filter_overlong_prompts=True data.truncation='error'
actor_rollout_ref.model.path={model} actor_rollout_ref.rollout.tensor_model_parallel_size=1
actor_rollout_ref.model.use_fused_kernels=False actor_rollout_ref.actor.optim.lr=3e-6
actor_rollout_ref.actor.optim.warmup_style=cosine actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1
actor_rollout_ref.model.use_remove_padding=True actor_rollout_ref.actor.ppo_mini_batch_size=128
actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 actor_rollout_ref.actor.use_kl_loss=True
actor_rollout_ref.actor.kl_loss_coef=0.001 actor_rollout_ref.actor.kl_loss_type=low_var_kl
actor_rollout_ref.actor.entropy_coeff=0 actor_rollout_ref.model.enable_gradient_checkpointing=True
actor_rollout_ref.actor.fsdp_config.param_offload=False actor_rollout_ref.actor.fsdp_config.optimizer_offload=False
actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 actor_rollout_ref.rollout.name=vllm
actor_rollout_ref.rollout.gpu_memory_utilization=0.6 actor_rollout_ref.rollout.n=8
actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 actor_rollout_ref.ref.fsdp_config.param_offload=True
actor_rollout_ref.ref.sliding_average.enable=True actor_rollout_ref.ref.sliding_average.update_interval=1
actor_rollout_ref.ref.sliding_average.alpha_start=0.01 actor_rollout_ref.ref.sliding_average.alpha_end=1e-5
algorithm.use_kl_in_reward=False reward_model.reward_manager=co_rewarding_III reward_model.val_reward_manager=naive
trainer.critic_warmup=0 trainer.val_before_train=True trainer.rollout_data_dir=rollout_log/x_ori/policy
trainer.ref_rollout_data_dir=rollout_log/x_ori/ref trainer.rollout_data_dir_aug=rollout_log/x_aug/policy
trainer.ref_rollout_data_dir_aug=rollout_log/x_aug/ref trainer.n_gpus_per_node=4 trainer.nnodes=1
trainer.logger=['console','wandb'] trainer.project_name=DAPO_Dataset trainer.experiment_name=x
trainer.save_freq=30 trainer.test_freq=10 trainer.total_epochs=3"""


def release(text: str, **paths) -> list[str]:
    """The override list of `text` with its paths filled in."""
    return text.format(**{k: str(v) for k, v in paths.items()}).split()
