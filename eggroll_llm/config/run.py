"""What every trainer config holds besides its method's hyper-parameters: the run keys (where, how far, how the
budget is counted), the reward functions, and the shared `model:`, `data:` and `generation:` sections.

`EggrollConfig` and `GRPOBaselineConfig` extend `RunArgs`; a recipe (`Recipe`) holds the same keys plus `method`
and both methods' sections. RUN_ONLY_KEYS is the one list of keys that say how a run goes, not what it trains.

    EggrollConfig(output_dir="runs/x", max_steps=50, max_wall_s=600, rewards=["gsm8k"])
"""

from __future__ import annotations

from dataclasses import dataclass

from .fields import build_sections, check_section, help_field
from .sections import DataConfig, GenerationConfig, ModelConfig

REPORT_TO = ("none", "tensorboard", "wandb", "all")

# Keys that only say how far, where or how a run goes, not what it trains: a resumed run may change them, and
# `compare` puts runs that differ only in these (and their seed) in one group. The one list of them.
RUN_ONLY_KEYS = frozenset({"output_dir", "max_steps", "max_wall_s", "eval_every", "save_every",
                           "distributed_timeout_s", "report_to", "disable_tqdm", "model.device"})


def is_run_only(dotted_key: str) -> bool:
    """Whether a dotted config key (or the section it lies in) is in RUN_ONLY_KEYS."""
    return dotted_key in RUN_ONLY_KEYS or dotted_key.split(".")[0] in RUN_ONLY_KEYS


def budget_clocks() -> tuple[str, ...]:
    from ..runlog import BUDGET_CLOCKS

    return tuple(BUDGET_CLOCKS)


@dataclass
class RunArgs:
    """The keys both trainers share. Nested sections accept their dataclass or a plain dict."""

    output_dir: str = help_field("run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/", "runs/default")
    seed: int = help_field("fixes data order, noise and sampling: the same seed gives the same metrics", 0)
    max_steps: int = help_field("stop after this many updates", 100)
    max_wall_s: float | None = help_field("stop after this many seconds of training (evaluation excluded)", None)
    budget_clock: str = help_field("how training seconds (wall_s, max_wall_s) are counted: wall (elapsed time) or "
                                   "process (this process's CPU time: on a machine shared with other jobs, the budget "
                                   "a one-thread run would have on a quiet one)", "wall")
    eval_every: int = help_field("evaluate on the held-out split every K steps (and at the start and end)", 10)
    save_every: int = help_field("write a resumable checkpoint every K steps (and at the end)", 10)
    distributed_timeout_s: float = help_field("multi-process runs (eggroll): seconds a process waits for the others "
                                              "at a collective before the job fails with an error instead of "
                                              "hanging", 1800.0)
    rewards: list[str] = help_field("reward functions, summed with reward_weights: built-in names (gsm8k, "
                                    "gsm8k_strict, format, countdown, countdown_format) or package.module:function "
                                    "import paths", factory=lambda: ["gsm8k"])
    reward_weights: list[float] | None = help_field("weight of each reward function in the sum (TRL's "
                                                    "reward_weights); null: all 1", None)
    report_to: list[str] | str = help_field("where per-step metrics go besides metrics.jsonl: none, tensorboard, "
                                            "wandb or all (those installed)", "none")
    disable_tqdm: bool = help_field("no progress bar (metrics still go to metrics.jsonl)", False)
    model: ModelConfig = help_field("the base model", factory=ModelConfig)
    data: DataConfig = help_field("prompts and held-out data", factory=DataConfig)
    generation: GenerationConfig = help_field("how completions are sampled", factory=GenerationConfig)

    def __post_init__(self):
        build_sections(self)
        check_section(self, "", self.own_checks)

    def own_checks(self) -> list[tuple[bool, str]]:
        """This config's own key checks (types are right by now); a subclass adds its method's."""
        report_to = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        return [
            (self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.max_wall_s is None or self.max_wall_s > 0, "max_wall_s must be > 0 (or null for no limit)"),
            (self.budget_clock in budget_clocks(),
             f"budget_clock must be {' or '.join(budget_clocks())}, got {self.budget_clock!r}"),
            (self.eval_every >= 1 and self.save_every >= 1, "eval_every and save_every must be >= 1"),
            (self.distributed_timeout_s > 0, f"distributed_timeout_s must be > 0, got {self.distributed_timeout_s}"),
            (bool(self.rewards), "rewards must name at least one reward function"),
            (all(r in REPORT_TO for r in report_to),
             f"report_to must be one or more of {', '.join(REPORT_TO)}, got {self.report_to!r}"),
        ]

    def cross_checks(self) -> list[tuple[bool, str]]:
        """The rules that span sections (config.validate raises the first that fails); a subclass adds its
        method's."""
        return [
            # the Python API resolves rewards from reward_funcs first, so this holds only once they are known
            (self.reward_weights is None or len(self.reward_weights) == len(self.rewards),
             f"reward_weights has {len(self.reward_weights or [])} entries for {len(self.rewards)} reward functions; "
             "give one weight per entry of rewards (or null for all 1)"),
        ]
