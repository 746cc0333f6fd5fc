"""alignlab: post-training language models with DPO and GRPO."""
__version__ = "0.1.0"
