"""Recipe loading: unknown keys name the nearest valid key, bad values name the field, overrides apply.

The shipped recipes themselves are checked in test_recipes.py.
"""

import dataclasses

import pytest
import yaml

from eggroll_llm.config import ConfigError, EggrollConfig, describe, load_config, parse_overrides


def test_overrides_nested_and_typed(tmp_path):
    config = load_config(None, ["--es.sigma", "0.002", "--output_dir=runs/x", "--es.adapter_rank", "full",
                                "--es.target_modules", "[q_proj, v_proj]", "--max_wall_s", "30"])
    assert config.es.sigma == 0.002 and config.output_dir == "runs/x"
    assert config.es.adapter_rank == "full" and config.es.target_modules == ["q_proj", "v_proj"]
    assert config.max_wall_s == 30.0 and isinstance(config.max_wall_s, float)
    assert config.es.population_size == EggrollConfig().es.population_size  # untouched keys keep their defaults


def test_exponent_floats_without_a_dot(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("es:\n  lr: 3e-4\n")  # YAML 1.1 would read this as a string
    config = load_config(recipe, ["--grpo.learning_rate", "2e-5"])
    assert (config.es.lr, config.grpo.learning_rate) == (3e-4, 2e-5)
    with pytest.raises(ConfigError, match="es.sigma must be a float"):
        load_config(None, ["--es.sigma", "small"])


def test_override_beats_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 3\nes:\n  sigma: 0.5\n  lr: 0.2\n")
    config = load_config(recipe, ["--es.sigma", "0.1"])
    assert (config.seed, config.es.sigma, config.es.lr) == (3, 0.1, 0.2)


@pytest.mark.parametrize("args, needle", [
    (["--es.sigm", "1"], "did you mean es.sigma"),
    (["--max_stepz", "3"], "did you mean max_steps"),
    (["--es.sigma", "-1"], r"es.sigma must be in \(0, 1\]"),
    (["--es.sigma", "1e9"], r"es.sigma must be in \(0, 1\]"),
    (["--es.sigma", ".inf"], "es.sigma must be a finite number"),
    (["--es.lr", ".nan"], "es.lr must be a finite number"),
    (["--es.weight_decay", "nan"], "es.weight_decay must be a finite number"),
    (["--generation.temperature", ".nan"], "generation.temperature must be a finite number"),
    (["--generation.temperature", "-0.5"], "temperature must be >= 0"),
    (["--generation.top_p", "0"], r"top_p must be in \(0, 1\]"),
    (["--es.fitness", "bogus"], "es.fitness must be one of group_centered, centered_rank, z_score, none"),
    (["--es.lr", "0.5", "--es.weight_decay", "5"], "es.weight_decay must be >= 0 with lr \\* weight_decay < 1"),
    (["--es.momentum", "1.5"], r"es.momentum must lie in \[0, 1\)"),
    (["--data.task", "null"], "set data.data_path"),
    (["--data.task", "mnist"], "data.task must be one of"),
    (["--rewards", "[gsm8k, format]", "--reward_weights", "[1]"], "reward_weights has 1 entries for 2"),
    (["--report_to", "comet"], "report_to must be one or more of"),
    (["--model.dtype", "float64"], "model.dtype must be"),
    (["--es.sigma_scale", "rms"], "es.sigma_scale must be absolute or weight_rms"),
    (["--es.optimizer", "adam", "--es.momentum", "0.9"], "es.momentum is SGD's"),
    (["--es.strategy", "cma"], "es.strategy must be one of eggroll, openai_es"),
    (["--es.samples_per_prompt", "4"], "greedy decoding makes identical"),
    (["--es.aggregate", "best"], "es.aggregate must be one of mean, pass_at_k, majority_vote"),
    (["--es.lr_schedule", "step"], "es.lr_schedule must be one of constant, linear, cosine"),
    (["--es.strategy", "openai_es", "--generation.engine", "vllm"], "needs es.strategy eggroll"),
    (["--es.sigma_scale", "weight_rms", "--generation.engine", "vllm"], "runs on the hf engine"),
    (["--es.rank", "0"], "es.rank must be >= 1"),
    (["--es.population_size", "31", "--es.members_per_prompt", "31"], "odd"),
    (["--es.members_per_prompt", "12"], "must divide"),
    (["--seed", "abc"], "seed must be an int"),
    (["--es.adapter_rank", "half"], "adapter_rank"),
    (["--method", "ppo"], "method must be eggroll or grpo"),
    (["--generation.gpu_memory_utilization", "0"], "gpu_memory_utilization must be in"),
    (["--method", "grpo", "--generation.engine", "vllm"], "GRPO samples with TRL's GRPOTrainer"),
    (["--es.sigma"], "needs a value"),
    (["--es.target_modules", "'(unclosed'"], r"es.target_modules '\(unclosed' is not a valid regular expression"),
    (["--rewards", "{a: 1}"], "rewards must be a list of str"),
    (["sigma"], "unexpected argument"),
])
def test_bad_values_name_the_problem(args, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, args)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("es: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    nested = tmp_path / "nested.yaml"
    nested.write_text("es:\n  lr_rate: 0.1\n")
    with pytest.raises(ConfigError, match="es.lr_rate; did you mean es.lr"):
        load_config(nested)


def test_parse_overrides_builds_nested_dict():
    assert parse_overrides(["--a.b.c", "1", "--d=x"]) == {"a": {"b": {"c": 1}}, "d": "x"}


def test_describe_covers_every_field_with_help():
    rows = describe()
    keys = {key for key, _, _ in rows}
    assert {"es.sigma", "grpo.num_generations", "data.task", "max_wall_s"} <= keys
    assert all(text for _, text, _ in rows), "every recipe key needs a help string"


def test_python_api_values_are_checked_like_recipe_values():
    with pytest.raises(ConfigError, match="max_steps must be an int, got '10'"):
        EggrollConfig(max_steps="10")
    with pytest.raises(ConfigError, match="data.eval_limit must be an int"):
        EggrollConfig(data={"eval_limit": 2.5})
    with pytest.raises(ConfigError, match="generation.top_p must be a float"):
        EggrollConfig(generation=dict(top_p="high"))
    with pytest.raises(ConfigError, match="model must be a ModelConfig or a dict of its keys"):
        EggrollConfig(model="tiny-arith")
    assert isinstance(EggrollConfig(max_wall_s=5).max_wall_s, float)  # an int where a float is due is a float


def test_a_single_reward_name_is_a_list_of_one():
    assert load_config(None, ["--rewards", "gsm8k"]).rewards == ["gsm8k"]
    assert EggrollConfig(rewards="format").rewards == ["format"]


def test_each_section_checks_itself_where_it_is_built_and_validate_keeps_the_cross_section_rules():
    from eggroll_llm.config import DataConfig, GenerationConfig, GRPOSection, ModelConfig, Recipe, validate

    with pytest.raises(ConfigError, match=r"generation.top_p must be in \(0, 1\]"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="grpo.num_generations must be >= 2"):
        GRPOSection(num_generations=1)
    with pytest.raises(ConfigError, match="set data.data_path"):
        DataConfig(task=None)
    with pytest.raises(ConfigError, match="model.dtype must be float32, bfloat16 or float16"):
        ModelConfig(dtype="float64")
    with pytest.raises(ConfigError, match="generation.temperature must be a finite number"):
        GenerationConfig(temperature=float("nan"))
    assert GRPOSection(prompts_per_step=3, num_generations=4).completions == 12
    # each section is fine alone; together they are not: validate says why
    grpo_on_vllm = Recipe(method="grpo", generation={"engine": "vllm"})
    with pytest.raises(ConfigError, match="GRPO samples with TRL's GRPOTrainer"):
        validate(grpo_on_vllm)


def test_reward_weights_are_matched_to_the_rewards_once_they_are_known():
    """The Python API gives the rewards as reward_funcs: EggrollConfig(reward_weights=[1, .1, .1]) alone is fine."""
    from eggroll_llm.config import validate

    assert EggrollConfig(reward_weights=[1.0, 0.1, 0.1]).reward_weights == [1.0, 0.1, 0.1]
    with pytest.raises(ConfigError, match="reward_weights has 3 entries for 1 reward functions"):
        validate(EggrollConfig(reward_weights=[1.0, 0.1, 0.1]))


def test_a_recipe_resolves_into_its_methods_trainer_config_and_back():
    """method: eggroll -> EggrollConfig (no grpo section); method: grpo -> GRPOBaselineConfig under TRL's names; a
    run records either as the recipe it came from."""
    from eggroll_llm.config import GRPOBaselineConfig, to_dict

    section = {"prompts_per_step": 3, "num_generations": 4, "gradient_accumulation_steps": 2, "learning_rate": 1e-5,
               "beta": 0.04, "lora_rank": 8}
    grpo_recipe = load_config(None, {"method": "grpo", "grpo": section})
    grpo = grpo_recipe.trainer_config()
    assert isinstance(grpo, GRPOBaselineConfig) and grpo.method == "grpo"
    assert (grpo.per_device_train_batch_size, grpo.gradient_accumulation_steps) == (6, 2)  # 12 completions per update
    assert grpo.generation_batch_size == 12 and grpo.section() == grpo_recipe.grpo
    assert (grpo.learning_rate, grpo.num_generations, grpo.beta, grpo.lora_rank) == (1e-5, 4, 0.04, 8)
    assert not hasattr(grpo, "es") and to_dict(grpo) == to_dict(grpo_recipe)
    eggroll_recipe = load_config(None, ["--es.sigma", "0.05", "--max_steps", "7"])
    eggroll = eggroll_recipe.trainer_config()
    assert isinstance(eggroll, EggrollConfig) and not hasattr(eggroll, "grpo")
    assert (eggroll.es.sigma, eggroll.max_steps) == (0.05, 7) and to_dict(eggroll) == to_dict(eggroll_recipe)


def test_grpo_baseline_config_names_are_trls():
    """Every GRPO hyper-parameter of GRPOBaselineConfig that TRL knows carries TRL's GRPOConfig name."""
    trl = pytest.importorskip("trl")
    from eggroll_llm.config import GRPOBaselineConfig, RunArgs

    own = {f.name for f in dataclasses.fields(GRPOBaselineConfig)} - {f.name for f in dataclasses.fields(RunArgs)}
    assert own - {f.name for f in dataclasses.fields(trl.GRPOConfig)} == {"lora_rank"}  # PEFT's LoraConfig r


def test_a_trainer_takes_its_own_config_or_a_recipe_of_its_method():
    from eggroll_llm.config import GRPOBaselineConfig, Recipe, trainer_args

    assert isinstance(trainer_args(Recipe(method="grpo"), GRPOBaselineConfig), GRPOBaselineConfig)
    config = EggrollConfig(max_steps=3)
    assert trainer_args(config, EggrollConfig) is config
    with pytest.raises(ConfigError, match="args.method is 'grpo'; this trainer runs method: eggroll"):
        trainer_args(Recipe(method="grpo"), EggrollConfig)
    with pytest.raises(ConfigError, match="args must be a GRPOBaselineConfig"):
        trainer_args(config, GRPOBaselineConfig)


@pytest.mark.parametrize("section, values, needle", [
    ("ModelConfig", {"dtype": "int8"}, "model.dtype must be float32, bfloat16 or float16"),
    ("DataConfig", {"eval_limit": 0}, "data.eval_limit must be >= 1"),
    ("GenerationConfig", {"engine": "tgi"}, "generation.engine must be hf or vllm"),
    ("ESConfig", {"sigma": 0.0}, r"es.sigma must be in \(0, 1\]"),
    ("ESConfig", {"lr": -1.0}, "es.lr must be > 0"),
    ("ESConfig", {"population_size": 6, "members_per_prompt": 4}, "es.members_per_prompt 4 must divide"),
    ("GRPOSection", {"gradient_accumulation_steps": 3}, "grpo.gradient_accumulation_steps 3 must divide the 64"),
    ("GRPOBaselineConfig", {"per_device_train_batch_size": 6, "num_generations": 4},
     "= 6 completions per update must be a multiple of num_generations 4"),
    ("GRPOBaselineConfig", {"beta": -0.1}, "beta must be >= 0"),
    ("EggrollConfig", {"max_steps": 0}, "max_steps must be >= 1"),
    ("EggrollConfig", {"es": {"rank": 0}}, "es.rank must be >= 1"),
    ("Recipe", {"method": "ppo"}, "method must be eggroll or grpo"),
])
def test_each_section_refuses_a_bad_value_where_it_is_built_in_one_line(section, values, needle):
    import eggroll_llm.config as config

    with pytest.raises(ConfigError, match=needle) as raised:
        getattr(config, section)(**values)
    assert "\n" not in str(raised.value)


def test_es_section_bounds_are_the_ones_eggroll_es_checks():
    """es.sigma and the optimizer settings are checked by the functions EggrollES uses: one bound each."""
    import torch

    from eggroll_llm.config import ESConfig
    from eggroll_llm.es import EggrollES

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    for bad in ({"sigma": -0.5}, {"sigma": 2.0}, {"momentum": 1.0}, {"lr": 0.5, "weight_decay": 4.0}):
        with pytest.raises(ConfigError) as from_config:
            ESConfig(**bad)
        with pytest.raises(ValueError) as from_es:
            EggrollES(model, **{"population_size": 4, "sigma": 0.1, "lr": 0.1, **bad})
        assert str(from_config.value) == f"es.{from_es.value}"


def test_a_config_yaml_with_the_old_dry_run_flags_still_loads(tmp_path):
    """Earlier releases wrote model.dry_run_random_init / dry_run_shrink into config.yaml: such runs still load, and
    compare groups them with runs written without the flags."""
    from eggroll_llm.compare import recipe_of
    from eggroll_llm.config import to_dict

    old = to_dict(load_config(None, ["--seed", "1"]))
    old["model"].update(dry_run_random_init=False, dry_run_shrink=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    config = load_config(tmp_path / "config.yaml")
    assert config.seed == 1 and not hasattr(config.model, "dry_run_random_init")  # not a recipe key any more
    assert recipe_of(old) == recipe_of(to_dict(load_config(None)))
