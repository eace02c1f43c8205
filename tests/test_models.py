"""models.py: model names resolve to what from_pretrained should read (embedded, local folder, Hub id), paths are
never taken for Hub ids, and the recorded architectures build offline at full and shrunk size."""

import json

import pytest
import torch

from eggroll_llm.models import (
    EMBEDDED_MODELS,
    ModelError,
    arch_config,
    default_device,
    load_model,
    looks_local,
    resolve_model,
)


def test_names_resolve_to_the_embedded_model_a_folder_or_a_hub_id(tmp_path):
    assert resolve_model("tiny-arith") == str(EMBEDDED_MODELS["tiny-arith"])
    assert resolve_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("name, message", [
    ("./nothere", "model folder ./nothere does not exist"),
    ("../a/b", "model folder ../a/b does not exist"),
    ("/abs/model", "model folder /abs/model does not exist"),
    ("sub/dir/model", "model folder sub/dir/model does not exist"),
    ("tiny-arithm", "unknown model 'tiny-arithm'.*Did you mean 'tiny-arith'"),
])
def test_a_missing_path_or_unknown_name_is_refused_without_the_hub(name, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(name)


def test_a_folder_without_a_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path))


def test_looks_local_uses_the_hub_id_rules():
    assert not looks_local("org/name") and not looks_local("name")
    assert looks_local("./x") and looks_local("~/x") and looks_local("a/b/c") and looks_local("a//b")


def test_recorded_architectures_build_offline_and_shrink():
    full, small = arch_config("Qwen/Qwen2.5-0.5B-Instruct"), arch_config("Qwen/Qwen2.5-0.5B", shrink=True)
    assert full.model_type == small.model_type == "qwen2"
    assert full.num_hidden_layers > small.num_hidden_layers == 2
    with pytest.raises(ModelError, match="no recorded architecture for 'org/unknown'"):
        arch_config("org/unknown")


def test_the_embedded_model_loads_frozen_in_eval_mode():
    model = load_model("tiny-arith")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ModelError, match="unknown dtype 'float64'"):
        load_model("tiny-arith", dtype="float64")
    assert default_device("cpu") == "cpu"
