"""The `es:` section: EGGROLL's hyper-parameters (population, σ, rank, the update, fitness shaping, schedules).

Checks itself where it is built (`__post_init__`), with the checks EggrollES applies to the same values
(perturbed.check_sigma, optim.check_optimizer), so a recipe and `EggrollES(...)` refuse alike.

    eggroll-llm train recipes/tiny-arith-eggroll.yaml --es.sigma 0.01 --es.population_size 16
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .fields import check_section, help_field


@dataclass
class ESConfig:
    strategy: str = help_field("eggroll (low-rank noise, batched population generation), openai_es (full-rank Gaussian "
                               "noise: full-parameter ES as in Qiu et al. 2025) or package.module:Class (a "
                               "eggroll_llm.strategy.Strategy)", "eggroll")
    scoring: str = help_field("batched: every member in one generation (perturbed forward); per_member: each member's "
                              "noise written into the weights in turn, plain generation, centre restored (full-rank "
                              "strategies); auto: per_member for openai_es, else batched", "auto")
    population_size: int = help_field("members per step (N); even when antithetic", 32)
    sigma: float = help_field("perturbation scale σ (paper: 1e-3..2e-3 on real LLMs; larger on tiny models)", 0.02)
    rank: int = help_field("rank r of each member's perturbation A Bᵀ (paper: 1)", 1)
    antithetic: bool = help_field("members 2k, 2k+1 share noise with opposite signs", True)
    noise_reuse: int = help_field("steps that share one noise draw (1 = fresh noise every step)", 1)
    lr: float = help_field("learning rate α of the ES step (1/σ is divided out, so α does not scale with σ or N)", 0.01)
    momentum: float = help_field("SGD momentum (0 = plain SGD, the paper's choice)", 0.0)
    weight_decay: float = help_field("decoupled decay of the adapter per step", 0.0)
    decay_to_base: bool = help_field("in place: es.weight_decay pulls the weights toward the base model's instead of "
                                     "0, θ ← θ − lr·wd·(θ − θ_base) each step (an adapter's decay already pulls ΔW "
                                     "toward 0); a retention lever (docs/es.md)", False)
    fitness: str = help_field("group_centered (paper §6.3), centered_rank, or none (the summed rewards as they are)",
                              "group_centered")
    sigma_scale: str = help_field("absolute: every layer's noise is σ and its step lr; weight_rms: σ·RMS(W) and "
                                  "lr·RMS(W) per layer, so one σ is the same relative change everywhere", "absolute")
    optimizer: str = help_field("sgd (the paper's; momentum and weight_decay apply) or adam (Adam's normalised "
                                "moments of the ES gradient; needs adapter_rank full)", "sgd")
    adapter_rank: int | str | None = help_field("rank R of the fp32 adapter the updates fold into, 'full' (dense "
                                                "delta), or null: the target weights themselves are θ (in place; the "
                                                "run exports a merged model)", 8)
    target_modules: list[str] | str | None = help_field("PEFT-style names or a regex; default: every linear layer in "
                                                        "the transformer blocks", None)
    members_per_prompt: int = help_field("members answering the same prompts (a fitness group); divides "
                                         "population_size", 32)
    prompts_per_member: int = help_field("prompts each member answers per step", 8)
    samples_per_prompt: int = help_field("sampled completions per (member, prompt), combined by es.aggregate into one "
                                         "score (> 1 needs generation.temperature > 0)", 1)
    aggregate: str = help_field("how the samples of one (member, prompt) become its score: mean, pass_at_k (the best "
                                "of K) or majority_vote (the reward of the most common extracted answer)", "mean")
    answer_fn: str | None = help_field("majority_vote: the answer extractor, a built-in task name (gsm8k, tiny-arith, "
                                       "countdown) or package.module:function (completion text -> answer or None); "
                                       "default: data.task's", None)
    sigma_schedule: str = help_field("σ over the run: constant, linear or cosine (decaying to a tenth of es.sigma at "
                                     "max_steps)", "constant")
    lr_schedule: str = help_field("lr over the run: constant, linear or cosine (decaying to 0 at max_steps)",
                                  "constant")
    warmup_steps: int = help_field("steps of linear lr warm-up from 0 before es.lr_schedule starts", 0)

    def __post_init__(self):
        """The es.* values alone, checked where the section is built (a recipe, or EggrollConfig(es={...}));
        rules that involve other sections are config.validate's. σ, lr, momentum and weight_decay are
        checked by the functions EggrollES checks them with, so a recipe and the Python API share one bound each."""
        # the lists and checks of the modules that use these values (EggrollES and its parts): one bound each
        from ..es import SIGMA_SCALES
        from ..fitness import FITNESS_METHODS
        from ..levers import AGGREGATES, SCHEDULES, SCORINGS
        from ..optim import OPTIMIZERS, check_optimizer
        from ..perturbed import check_sigma
        from ..strategy import STRATEGIES

        es, bad_regex = self, _regex_error(self.target_modules)
        check_section(self, "es.", lambda: [
            shared_check("es.", check_sigma, es.sigma),
            (es.rank >= 1, f"es.rank must be >= 1, got {es.rank}"),
            (es.population_size >= 1, f"es.population_size must be >= 1, got {es.population_size}"),
            (not es.antithetic or es.population_size % 2 == 0,
             f"es.population_size {es.population_size} is odd; antithetic sampling pairs members: use an even "
             "population_size or es.antithetic: false"),
            (es.noise_reuse >= 1, f"es.noise_reuse must be >= 1, got {es.noise_reuse}"),
            (es.adapter_rank is None or es.adapter_rank == "full"
             or (isinstance(es.adapter_rank, int) and es.adapter_rank >= 1),
             f"es.adapter_rank must be a positive integer, 'full' or null (in place), got {es.adapter_rank!r}"),
            (bad_regex is None, f"es.target_modules {es.target_modules!r} is not a valid regular expression "
                                f"({bad_regex}); fix the pattern, or give a list of module names"),
            (es.strategy in STRATEGIES or ":" in es.strategy,
             f"es.strategy must be one of {', '.join(STRATEGIES)} or package.module:Class, got {es.strategy!r}"),
            (es.scoring in SCORINGS, f"es.scoring must be one of {', '.join(SCORINGS)}, got {es.scoring!r}"),
            (es.samples_per_prompt >= 1, f"es.samples_per_prompt must be >= 1, got {es.samples_per_prompt}"),
            (es.aggregate in AGGREGATES,
             f"es.aggregate must be one of {', '.join(AGGREGATES)}, got {es.aggregate!r}"),
            (es.sigma_schedule in SCHEDULES and es.lr_schedule in SCHEDULES,
             f"es.sigma_schedule and es.lr_schedule must be one of {', '.join(SCHEDULES)}, got "
             f"{es.sigma_schedule!r} and {es.lr_schedule!r}"),
            (es.warmup_steps >= 0, f"es.warmup_steps must be >= 0, got {es.warmup_steps}"),
            (es.members_per_prompt >= 1 and es.population_size % es.members_per_prompt == 0,
             f"es.members_per_prompt {es.members_per_prompt} must divide es.population_size {es.population_size}"),
            (not es.antithetic or es.members_per_prompt % 2 == 0,
             "es.members_per_prompt must be even with antithetic sampling (both members of a pair answer the same "
             "prompts)"),
            (es.prompts_per_member >= 1, f"es.prompts_per_member must be >= 1, got {es.prompts_per_member}"),
            shared_check("es.", check_optimizer, es.lr, es.momentum, es.weight_decay),
            (es.fitness in FITNESS_METHODS,
             f"es.fitness must be one of {', '.join(FITNESS_METHODS)}, got {es.fitness!r}"),
            (es.sigma_scale in SIGMA_SCALES,
             f"es.sigma_scale must be {' or '.join(SIGMA_SCALES)}, got {es.sigma_scale!r}"),
            (es.optimizer in OPTIMIZERS, f"es.optimizer must be {' or '.join(OPTIMIZERS)}, got {es.optimizer!r}"),
            (es.optimizer == "sgd" or es.momentum == 0,
             "es.momentum is SGD's; es.optimizer adam keeps its own moments: set es.momentum: 0"),
            (not es.decay_to_base or es.weight_decay > 0,
             "es.decay_to_base sets where es.weight_decay pulls; give es.weight_decay > 0 (the pull per step)"),
        ])


def shared_check(prefix: str, check, *values) -> tuple[bool, str]:
    """(ok, message) of a check function of the ES modules, whose message opens with the value's name: the recipe's
    key is that name under `prefix` (es.lr, es.sigma)."""
    try:
        check(*values)
    except ValueError as err:
        return False, f"{prefix}{err}"
    return True, ""


def _regex_error(pattern) -> str | None:
    """Why a target_modules string (a regex, PEFT's rule) does not compile; None when it does or is not a string."""
    if not isinstance(pattern, str):
        return None
    try:
        re.compile(pattern)
    except re.error as err:
        return str(err)
    return None
