"""Run configuration: typed dataclasses with one help string per field, split by what they describe.

- `fields`: how a section is typed, built from YAML or overrides, and checked (ConfigError, one line);
- `sections`: `model:`, `data:`, `generation:`, which every method shares;
- `es`: the `es:` section, EGGROLL's hyper-parameters; `grpo`: the `grpo:` section and `GRPOBaselineConfig`;
- `run`: the run keys both trainers share (RunArgs) and the one list of run-only keys;
- `eggroll`: `EggrollConfig`, what EggrollTrainer takes;
- `recipe`: `Recipe`, the YAML file (method + sections + run keys): load, validate, resolve, write back;
- `dry_run`: `DryRun`, how `train --dry_run` loads the model (not part of the recipe).

    eggroll-llm train recipes/tiny-arith-eggroll.yaml --es.sigma 0.01 --max_steps 50
    EggrollConfig(output_dir="runs/x", max_steps=50, es={"sigma": 0.01})
"""

from .dry_run import DRY_RUN_MODES, GSM8K_SAMPLE, TINY_DRY_RUN, DryRun, dry_run_data, dry_run_overrides
from .eggroll import EggrollConfig
from .es import ESConfig
from .fields import ConfigError, flatten, parse_overrides
from .grpo import GRPOBaselineConfig, GRPOSection
from .recipe import (
    Recipe,
    describe,
    load_config,
    other_methods_keys,
    to_dict,
    trainer_args,
    upgrade,
    validate,
)
from .run import REPORT_TO, RUN_ONLY_KEYS, RunArgs, is_run_only
from .sections import DTYPES, DataConfig, GenerationConfig, ModelConfig

__all__ = [
    "DRY_RUN_MODES", "DTYPES", "GSM8K_SAMPLE", "REPORT_TO", "RUN_ONLY_KEYS", "TINY_DRY_RUN", "ConfigError",
    "DataConfig", "DryRun", "ESConfig", "EggrollConfig", "GRPOBaselineConfig", "GRPOSection", "GenerationConfig",
    "ModelConfig", "Recipe", "RunArgs", "describe", "dry_run_data", "dry_run_overrides", "flatten", "is_run_only",
    "load_config", "other_methods_keys", "parse_overrides", "to_dict", "trainer_args", "upgrade", "validate",
]
