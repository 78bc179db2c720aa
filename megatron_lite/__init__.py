"""megatron_lite: a config-driven trainer for GPT-NeoX-architecture code language models."""

__version__ = "0.1.0"
