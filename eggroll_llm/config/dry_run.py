"""`train --dry_run [full|tiny]`: check a recipe end to end in seconds, without its weights, data or a GPU.

A dry run is a way of loading, not part of the recipe: `DryRun` goes to the trainer beside the config (and from there
to model loading, models.load_base), and a run directory records it in its own file, dry_run.json, so config.yaml
holds only the recipe. What a dry run changes in the recipe itself (one step, a 2-example evaluation, a temporary
run directory; `tiny`: a small population and short completions) comes as overrides, so it is recorded as any
other setting.

    eggroll-llm train recipes/gsm8k-qwen2.5-0.5b-eggroll.yaml --dry_run tiny
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .fields import ConfigError, merge, raise_first

DRY_RUN_MODES = ("full", "tiny")
# `--dry_run tiny` also shrinks the work of the step, so every recipe's CPU check takes seconds
TINY_DRY_RUN = {"generation": {"max_new_tokens": 8},
                "es": {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 1},
                "grpo": {"prompts_per_step": 2, "num_generations": 2, "gradient_accumulation_steps": 1}}
# GSM8K-format problems written for this project (12 train, 4 test): a dry run's data when a gsm8k recipe names none
GSM8K_SAMPLE = Path(__file__).parent.parent / "assets" / "gsm8k-sample"


@dataclass(frozen=True)
class DryRun:
    """How a dry run loads the model: a random-init model of model.name's architecture instead of its weights (no
    download for the recipes' models: models.ARCHS); mode `tiny` scales it down to 2 layers of width 64, same model
    class (a CPU-sized check)."""

    mode: str = "full"

    def __post_init__(self):
        if self.mode not in DRY_RUN_MODES:
            raise ConfigError(f"--dry_run takes {' or '.join(DRY_RUN_MODES)}, got {self.mode!r}")

    @property
    def shrink(self) -> bool:
        return self.mode == "tiny"

    def check(self, config) -> None:
        """Refuse a config this dry run cannot load (before anything is written)."""
        raise_first([
            (config.generation.engine != "vllm",
             "generation.engine: vllm loads the base weights from model.name, so it cannot run the random-init model "
             "of a dry run; use generation.engine: hf"),
        ])

    def overrides(self, overrides: dict) -> dict:
        """What this dry run changes in a recipe, under the user's own `overrides` (which still win).

        One step, a 2-example held-out evaluation, a checkpoint, and a fresh temporary run directory unless
        --output_dir is given (`tiny`: with a small population and 8-token completions, TINY_DRY_RUN): it checks that
        the recipe, data, trainer and output wiring work end to end, not what the recipe learns.
        """
        dry = {"max_steps": 1, "max_wall_s": None, "eval_every": 1, "save_every": 1, "data": {"eval_limit": 2}}
        if self.shrink:
            dry = merge(dry, TINY_DRY_RUN)
        if "output_dir" not in overrides:
            dry["output_dir"] = tempfile.mkdtemp(prefix="eggroll-dry-run-")
        return merge(dry, overrides)


def dry_run_overrides(mode: str, overrides: dict) -> dict:
    """What `train --dry_run MODE` changes in a recipe, under the user's own `overrides` (DryRun.overrides)."""
    return DryRun(mode).overrides(overrides)


def dry_run_data(config):
    """A dry run of a gsm8k recipe that names no data reads the shipped GSM8K_SAMPLE: no Hub, no data flag."""
    if config.data.task != "gsm8k" or config.data.data_path is not None:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, data_path=str(GSM8K_SAMPLE)))
