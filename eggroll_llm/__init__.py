"""eggroll_llm: fine-tune Hugging Face causal LMs for reasoning with EGGROLL, compared fairly against GRPO."""

__version__ = "0.1.0"
