"""The GRPO baseline's settings, in two shapes:

- `GRPOSection`, a recipe's `grpo:` section, sized the way a comparison is planned: prompts_per_step prompts, each
  answered num_generations times, per update;
- `GRPOBaselineConfig`, what `GRPOBaselineTrainer` takes as `args`: the run keys and shared sections (RunArgs) plus
  TRL's GRPOConfig names for what maps onto it (learning_rate, num_generations, per_device_train_batch_size,
  gradient_accumulation_steps, temperature, beta, gradient_checkpointing), and lora_rank for PEFT's LoraConfig.

A recipe with `method: grpo` resolves its section into the trainer config (`Recipe.trainer_config()`), and a run
records the section back (`GRPOBaselineConfig.section()`). Both check themselves where they are built.

    GRPOBaselineTrainer(model="tiny-arith", reward_funcs=["gsm8k"], train_dataset=ds,
                        args=GRPOBaselineConfig(num_generations=4, per_device_train_batch_size=16, lora_rank=8))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .fields import check_section, help_field
from .run import RunArgs

_HELP = {  # the fields both shapes share, described once
    "num_generations": "completions sampled per prompt: the group whose mean reward is the baseline (>= 2)",
    "temperature": "sampling temperature, > 0 (GRPO explores by sampling; generation.temperature is EGGROLL's and is "
                   "not used)",
    "learning_rate": "AdamW learning rate, held constant",
    "lora_rank": "rank of a LoRA adapter on every linear layer of the blocks; 0 = full fine-tuning",
    "beta": "KL penalty towards the starting model (0 = none, as DAPO and TRL's default; > 0 keeps a reference copy "
            "of the model)",
    "gradient_accumulation_steps": "micro-batches one update's completions are split into (less memory, same update)",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, slower; for large models)",
}


def _shared_checks(prefix: str, c) -> list[tuple[bool, str]]:
    """The checks of the fields both shapes share, naming each key under `prefix`."""
    return [
        (c.num_generations >= 2, f"{prefix}num_generations must be >= 2 (the group baseline needs two completions of "
                                 f"a prompt), got {c.num_generations}"),
        (c.temperature > 0, f"{prefix}temperature must be > 0 (GRPO needs different completions of a prompt to "
                            f"compare), got {c.temperature}"),
        (c.learning_rate > 0, f"{prefix}learning_rate must be > 0, got {c.learning_rate}"),
        (c.lora_rank >= 0, f"{prefix}lora_rank must be >= 0 (0 = full fine-tuning), got {c.lora_rank}"),
        (c.beta >= 0, f"{prefix}beta must be >= 0, got {c.beta}"),
    ]


@dataclass
class GRPOSection:
    """A recipe's `grpo:` section (used when method: grpo)."""

    prompts_per_step: int = help_field("prompts answered per update; each gets num_generations sampled completions",
                                       8)
    num_generations: int = help_field(_HELP["num_generations"], 8)
    temperature: float = help_field(_HELP["temperature"], 1.0)
    learning_rate: float = help_field(_HELP["learning_rate"], 3e-4)
    lora_rank: int = help_field(_HELP["lora_rank"], 0)
    beta: float = help_field(_HELP["beta"], 0.0)
    gradient_accumulation_steps: int = help_field(_HELP["gradient_accumulation_steps"], 1)
    gradient_checkpointing: bool = help_field(_HELP["gradient_checkpointing"], False)

    @property
    def completions(self) -> int:
        """Completions sampled per update: prompts_per_step x num_generations (TRL's generation batch)."""
        return self.prompts_per_step * self.num_generations

    def __post_init__(self):
        check_section(self, "grpo.", lambda: [
            (self.prompts_per_step >= 1, f"grpo.prompts_per_step must be >= 1, got {self.prompts_per_step}"),
            *_shared_checks("grpo.", self)[:1],
            (self.gradient_accumulation_steps >= 1 and self.completions % self.gradient_accumulation_steps == 0,
             f"grpo.gradient_accumulation_steps {self.gradient_accumulation_steps} must divide the "
             f"{self.completions} completions of a step (prompts_per_step {self.prompts_per_step} x num_generations "
             f"{self.num_generations}); choose a divisor of {self.completions}"),
            *_shared_checks("grpo.", self)[1:],
        ])

    def trainer_fields(self) -> dict:
        """The GRPOBaselineConfig fields this section sets: one update is one generation batch of `completions`,
        split into gradient_accumulation_steps micro-batches of per_device_train_batch_size."""
        return dict(learning_rate=self.learning_rate, num_generations=self.num_generations,
                    per_device_train_batch_size=self.completions // self.gradient_accumulation_steps,
                    gradient_accumulation_steps=self.gradient_accumulation_steps, temperature=self.temperature,
                    beta=self.beta, gradient_checkpointing=self.gradient_checkpointing, lora_rank=self.lora_rank)


@dataclass
class GRPOBaselineConfig(RunArgs):
    """What GRPOBaselineTrainer takes as `args`: the run keys and shared sections, and the GRPO hyper-parameters
    under TRL's GRPOConfig names. One update samples generation_batch_size completions (num_generations per prompt)
    and takes one AdamW step over them."""

    method: ClassVar[str] = "grpo"
    learning_rate: float = help_field(_HELP["learning_rate"], 3e-4)
    num_generations: int = help_field(_HELP["num_generations"], 8)
    per_device_train_batch_size: int = help_field("completions per micro-batch; x gradient_accumulation_steps = the "
                                                  "completions of one update, a multiple of num_generations", 64)
    gradient_accumulation_steps: int = help_field(_HELP["gradient_accumulation_steps"], 1)
    temperature: float = help_field(_HELP["temperature"], 1.0)
    beta: float = help_field(_HELP["beta"], 0.0)
    gradient_checkpointing: bool = help_field(_HELP["gradient_checkpointing"], False)
    lora_rank: int = help_field(_HELP["lora_rank"], 0)

    @property
    def generation_batch_size(self) -> int:
        """Completions sampled per update (TRL's name): per_device_train_batch_size x gradient_accumulation_steps."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def prompts_per_step(self) -> int:
        return self.generation_batch_size // self.num_generations

    def own_checks(self) -> list[tuple[bool, str]]:
        return super().own_checks() + [
            (self.per_device_train_batch_size >= 1 and self.gradient_accumulation_steps >= 1,
             "per_device_train_batch_size and gradient_accumulation_steps must be >= 1"),
            *_shared_checks("", self)[:1],
            (self.num_generations < 2 or self.generation_batch_size % self.num_generations == 0,
             f"per_device_train_batch_size {self.per_device_train_batch_size} x gradient_accumulation_steps "
             f"{self.gradient_accumulation_steps} = {self.generation_batch_size} completions per update must be a "
             f"multiple of num_generations {self.num_generations} (whole groups of one prompt)"),
            *_shared_checks("", self)[1:],
        ]

    def cross_checks(self) -> list[tuple[bool, str]]:
        return super().cross_checks() + [
            (self.model.dtype != "float16", "GRPO trains in float32 or bfloat16; float16 weights would need loss "
                                            "scaling: set model.dtype to bfloat16 or float32"),
            (self.data.long_prompts == "error",
             "data.long_prompts: truncate is for EGGROLL runs; TRL's GRPOTrainer does not truncate prompts, so GRPO "
             "runs refuse prompts that do not fit: shorten them or lower generation.max_new_tokens"),
            (self.generation.engine == "hf",
             f"generation.engine {self.generation.engine!r} is for eggroll runs; GRPO samples with TRL's "
             "GRPOTrainer and evaluates with the hf engine: use generation.engine: hf"),
        ]

    def section(self) -> GRPOSection:
        """The recipe's `grpo:` section these settings come from (what config.yaml records)."""
        return GRPOSection(prompts_per_step=self.prompts_per_step, num_generations=self.num_generations,
                           temperature=self.temperature, learning_rate=self.learning_rate, lora_rank=self.lora_rank,
                           beta=self.beta, gradient_accumulation_steps=self.gradient_accumulation_steps,
                           gradient_checkpointing=self.gradient_checkpointing)
