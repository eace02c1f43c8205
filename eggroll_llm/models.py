"""Model resolution and loading: embedded short names, local folders and Hub ids, through `from_pretrained`.

Security defaults (brief): weights load from safetensors only (`use_safetensors=True`, never a pickle), and
`trust_remote_code` stays off unless the caller asks for it.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED_MODELS = {"tiny-arith": ASSETS / "tiny-arith"}
DTYPES = ("float32", "bfloat16", "float16")


class ModelError(ValueError):
    """A model name, path or adapter that cannot be loaded; the message says why and what to do."""


def default_device(device: str | None = None) -> str:
    """`device` when given, else cuda when available, else cpu."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def resolve_model(name: str) -> str:
    """An embedded short name, a local model folder or a Hub id -> what `from_pretrained` should receive."""
    if name in EMBEDDED_MODELS:
        return str(EMBEDDED_MODELS[name])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{name} is not a Hugging Face model folder (no config.json); "
                             "pass a folder written by save_pretrained, a Hub id, or an embedded name: "
                             f"{', '.join(EMBEDDED_MODELS)}")
        return str(path)
    if name.count("/") == 1 and all(name.split("/")):
        return name  # a Hub id; from_pretrained reports download problems itself
    close = difflib.get_close_matches(name, list(EMBEDDED_MODELS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelError(f"unknown model {name!r}: not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
                     f"an existing folder, or a Hub id of the form org/name.{hint}")


def model_type(name: str) -> str | None:
    """The architecture name in a local model's config.json, without loading weights (None for Hub ids)."""
    config = Path(resolve_model(name)) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:  # batched generation needs a pad token; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(name: str, *, dtype: str = "float32", device: str = "cpu",
               adapter: str | None = None, trust_remote_code: bool = False):
    """A causal LM in eval mode with frozen weights; `adapter` (a PEFT LoRA folder) is merged in when given."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    source = resolve_model(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except ValueError as err:  # transformers says "Unrecognized configuration class ..." for non-causal-LM configs
        raise ModelError(f"{name} does not load as a causal language model: {str(err).splitlines()[0]}") from err
    except OSError as err:
        raise ModelError(f"cannot load model {name}: {str(err).splitlines()[0]} "
                         "(Hub ids need network access; a local folder needs model.safetensors)") from err
    if adapter is not None:
        model = merge_adapter(model, adapter)
    model.to(device).eval().requires_grad_(False)
    return model


def merge_adapter(model, adapter: str):
    """Apply a PEFT LoRA adapter folder and merge it into the base weights."""
    from peft import PeftModel

    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json); "
                         "pass the folder written by `eggroll-llm export` or a run's adapter/ folder")
    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
