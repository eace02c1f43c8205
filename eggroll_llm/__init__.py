"""eggroll_llm: fine-tune Hugging Face causal LMs for reasoning with EGGROLL, compared fairly against GRPO.

    from eggroll_llm import EggrollConfig, EggrollTrainer
    EggrollTrainer(model="tiny-arith", reward_funcs=[my_reward], train_dataset=ds, args=EggrollConfig()).train()

The names below are imported on first use, so `import eggroll_llm.rewards` (or `eggroll-llm --help`) does not load
torch and transformers.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "EggrollConfig": "config",
    "GRPOBaselineConfig": "config",
    "Recipe": "config",
    "EggrollTrainer": "trainer",
    "GRPOBaselineTrainer": "grpo",
    "EggrollES": "es",
    "OpenAIES": "openai_es",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
