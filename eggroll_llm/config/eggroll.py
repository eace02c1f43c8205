"""`EggrollConfig`: what `EggrollTrainer` takes as `args`, as TRL's trainers take a `GRPOConfig`: the run keys and
shared sections (RunArgs) plus the `es:` section. A recipe with `method: eggroll` resolves into one
(`Recipe.trainer_config()`).

    EggrollTrainer(model="tiny-arith", reward_funcs=[my_reward], train_dataset=ds,
                   args=EggrollConfig(output_dir="runs/x", max_steps=50, es={"sigma": 0.01}))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .es import ESConfig
from .fields import help_field
from .run import RunArgs


def es_field():
    return help_field("EGGROLL hyper-parameters", factory=ESConfig)


@dataclass
class EggrollConfig(RunArgs):
    """Everything an EGGROLL run needs besides the model, reward and dataset objects.

    Nested sections accept their dataclass or a plain dict: `EggrollConfig(es={"sigma": 0.01})`.
    """

    method: ClassVar[str] = "eggroll"
    es: ESConfig = es_field()

    def cross_checks(self) -> list[tuple[bool, str]]:
        es, gen, data = self.es, self.generation, self.data
        return super().cross_checks() + [
            (es.samples_per_prompt == 1 or gen.temperature > 0,
             f"es.samples_per_prompt {es.samples_per_prompt} draws several completions per (member, prompt), which "
             "greedy decoding makes identical: set generation.temperature > 0 or es.samples_per_prompt: 1"),
            (es.aggregate != "majority_vote" or es.answer_fn is not None or data.task is not None,
             "es.aggregate majority_vote compares extracted answers: set es.answer_fn (a task name or "
             "package.module:function) for your own dataset"),
            (gen.engine == "hf" or (es.strategy == "eggroll" and es.adapter_rank is not None),
             "generation.engine vllm runs members as LoRA adapters: it needs es.strategy eggroll and an adapter "
             "(es.adapter_rank); use generation.engine: hf"),
            (es.sigma_scale == "absolute" or gen.engine == "hf",
             "es.sigma_scale weight_rms runs on the hf engine (the vllm engine writes member adapters at one σ)"),
        ]
