"""Co-rewarding: self-supervised RL for LLM reasoning on a Ray + FSDP2 + vLLM GRPO trainer."""

__version__ = "0.1.0"
