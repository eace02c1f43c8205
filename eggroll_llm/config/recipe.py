"""A recipe: the YAML file `eggroll-llm train` runs, and what a run directory's config.yaml records.

A recipe names its `method` (eggroll or grpo) and holds the run keys, the rewards, the shared sections (model, data,
generation) and each method's own section (`es:`, `grpo:`). `Recipe.trainer_config()` resolves it into the config
of its method's trainer: `EggrollConfig` or `GRPOBaselineConfig`; `to_dict` writes any of the three back as the
recipe it stands for. Every key maps 1:1 to a dataclass field; defaults live only in those dataclasses.

    eggroll-llm train recipes/tiny-arith-grpo.yaml --grpo.num_generations 4
    load_config("recipes/tiny-arith-grpo.yaml").trainer_config()  # -> GRPOBaselineConfig
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from .eggroll import EggrollConfig, es_field
from .es import ESConfig
from .fields import ConfigError, build, help_field, merge, parse_overrides, raise_first
from .grpo import GRPOBaselineConfig, GRPOSection
from .run import RunArgs
from .sections import LEGACY_MODEL_KEYS

METHODS = {"eggroll": EggrollConfig, "grpo": GRPOBaselineConfig}
OWN_SECTION = {"eggroll": "es", "grpo": "grpo"}  # the section only that method reads


def other_methods_keys(method: str | None, dotted_key: str) -> bool:
    """Whether a dotted recipe key lies in a section that another method reads (es.* for a GRPO run, grpo.* for an
    EGGROLL run): it says nothing about what a run of `method` trains."""
    section = dotted_key.split(".")[0]
    return method in OWN_SECTION and section in OWN_SECTION.values() and section != OWN_SECTION[method]


@dataclass
class Recipe(RunArgs):
    """A recipe file: `method`, the run keys and shared sections, and both methods' sections (the other method's is
    ignored). Nested sections accept their dataclass or a plain dict."""

    method: str = help_field("eggroll (this toolkit) or grpo (TRL baseline)", "eggroll")
    es: ESConfig = es_field()
    grpo: GRPOSection = help_field("GRPO baseline hyper-parameters (TRL's GRPOTrainer; used when method: grpo)",
                                   factory=GRPOSection)

    def own_checks(self) -> list[tuple[bool, str]]:
        return [(self.method in METHODS, f"method must be {' or '.join(METHODS)}, got {self.method!r}"),
                *super().own_checks()]

    def trainer_config(self) -> EggrollConfig | GRPOBaselineConfig:
        """The config of this recipe's method's trainer: the shared keys, and the method's own section."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunArgs)}
        if self.method == "grpo":
            return GRPOBaselineConfig(**shared, **self.grpo.trainer_fields())
        return EggrollConfig(**shared, es=self.es)

    def cross_checks(self) -> list[tuple[bool, str]]:
        return self.trainer_config().cross_checks()

    @classmethod
    def of(cls, config: Recipe | EggrollConfig | GRPOBaselineConfig) -> Recipe:
        """The recipe a trainer config stands for (the other method's section at its defaults)."""
        if isinstance(config, Recipe):
            return config
        shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(RunArgs)}
        if isinstance(config, GRPOBaselineConfig):
            return cls(method="grpo", **shared, grpo=config.section())
        return cls(method="eggroll", **shared, es=config.es)


def trainer_args(args, cls: type[EggrollConfig] | type[GRPOBaselineConfig]):
    """A trainer's `args`: its own config as given, a Recipe of its method resolved, anything else refused."""
    if isinstance(args, Recipe):
        if args.method != cls.method:
            raise ConfigError(f"args.method is {args.method!r}; this trainer runs method: {cls.method} (the other "
                              f"method's trainer runs {args.method} recipes)")
        return args.trainer_config()
    if not isinstance(args, cls):
        raise ConfigError(f"args must be a {cls.__name__} (or a Recipe with method: {cls.method}), got "
                          f"{type(args).__name__}")
    return args


def upgrade(values: dict) -> dict:
    """A recipe or config.yaml mapping without the keys earlier releases wrote that no field holds now (the dry-run
    flags of `model:`, see sections.LEGACY_MODEL_KEYS): old run directories load, resume and compare unchanged."""
    model = values.get("model")
    if not isinstance(model, dict) or not any(k in model for k in LEGACY_MODEL_KEYS):
        return values
    return {**values, "model": {k: v for k, v in model.items() if k not in LEGACY_MODEL_KEYS}}


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Recipe:
    """A recipe YAML (or the defaults) with overrides applied, validated."""
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist; see recipes/ for examples")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {path} is not valid YAML: {err}") from err
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    recipe = build(Recipe, upgrade(merge(values, extra)) if isinstance(values, dict) else values)
    validate(recipe)
    return recipe


def validate(config: Recipe | EggrollConfig | GRPOBaselineConfig) -> None:
    """The rules that span sections, raised before any work starts (and before anything is written); each section
    checks its own values where it is built (__post_init__)."""
    raise_first(config.cross_checks())


def to_dict(config: Recipe | EggrollConfig | GRPOBaselineConfig) -> dict:
    """The recipe `config` stands for, as a plain mapping, `method` first: what config.yaml records."""
    values = dataclasses.asdict(Recipe.of(config))
    return {"method": values.pop("method"), **values}


def describe(cls=Recipe, prefix: str = "") -> list[tuple[str, str, object]]:
    """(key, help, default) for every field, nested keys dotted: the reference table of recipe keys."""
    rows = []
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name != "method"):  # method first, as in a recipe
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", f.metadata.get("help", ""), default))
    return rows
