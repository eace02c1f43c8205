"""What both trainers take, resolved and checked: the reward functions and the datasets' prompts.

EggrollTrainer and the GRPO baseline accept the objects TRL's GRPOTrainer does: reward functions as callables
`fn(prompts, completions, **columns) -> list[float | None]`, built-in names or `package.module:function` paths;
datasets with a `prompt` column, plain text or chat messages. `RewardSet` scores completions with every other
dataset column as a keyword list (TRL's convention: `answer` is one column among others), weighted by
`reward_weights`; `PromptSet` holds a dataset's prompts as the rewards see them (as given) and as the engine sees
them (chat messages through the chat template).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import datasets
import torch

from .data import check_prompts, render_prompt
from .fitness import check_scores
from .rewards import RewardError, resolve_reward, reward_name


class RewardSet:
    """The run's reward functions and their weights; calling it scores completions → (weighted sum, per function)."""

    def __init__(self, reward_funcs: Callable | str | Sequence[Callable | str], weights: Sequence[float] | None = None):
        entries = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not entries:
            raise RewardError("reward_funcs is empty; give at least one reward function")
        self.funcs = [resolve_reward(entry) for entry in entries]
        self.names = [reward_name(entry) for entry in entries]  # what config.yaml records
        self.labels = _unique([getattr(fn, "__name__", None) or type(fn).__name__ for fn in self.funcs])  # log keys
        if weights is not None and len(weights) != len(entries):
            raise RewardError(f"reward_weights has {len(weights)} entries for {len(entries)} reward functions; give "
                              "one weight per reward function")
        self.weights = [1.0] * len(entries) if weights is None else [float(w) for w in weights]

    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]],
                 columns: dict[str, list]) -> tuple[torch.Tensor, dict]:
        """(weighted total [rows], {label: scores [rows]}); a function's None scores count as 0 (check_scores).

        Each function gets what TRL's GRPOTrainer hands it: prompts, completions, completion_ids and the columns."""
        total = torch.zeros(len(completions))
        parts = {}
        for label, fn, weight in zip(self.labels, self.funcs, self.weights):
            scores = fn(prompts, completions, completion_ids=completion_ids, **columns)
            parts[label] = check_scores(scores, len(completions), label)
            total += weight * parts[label]
        return total, parts


class PromptSet:
    """A dataset's prompts and columns: `prompts` as given (for the rewards), `texts` rendered (for the engine)."""

    def __init__(self, dataset: datasets.Dataset, tokenizer, source: str):
        check_prompts(dataset, source)
        self.prompts = dataset["prompt"]
        self.texts = [render_prompt(tokenizer, prompt) for prompt in self.prompts]
        self.conversational = not isinstance(self.prompts[0], str)
        self.columns = {name: dataset[name] for name in dataset.column_names if name != "prompt"}

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices: Sequence[int]) -> tuple[list, list[str], dict[str, list]]:
        """(prompts, texts, columns) of the rows at `indices`, in that order (repeats allowed)."""
        return ([self.prompts[i] for i in indices], [self.texts[i] for i in indices],
                {name: [values[i] for i in indices] for name, values in self.columns.items()})

    def completions(self, texts: list[str]) -> list:
        """Completions as TRL hands them to rewards: text, or [{"role": "assistant", "content": text}] for chats."""
        return [[{"role": "assistant", "content": t}] for t in texts] if self.conversational else list(texts)


def _unique(labels: list[str]) -> list[str]:
    """Labels made distinct with #2, #3 (two rewards may share a __name__, e.g. two lambdas)."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out
