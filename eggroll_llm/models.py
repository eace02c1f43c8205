"""Model resolution and loading: embedded short names, local folders and Hub ids, through `from_pretrained`.

Security defaults (brief): weights load from safetensors only (`use_safetensors=True`, never a pickle), and
`trust_remote_code` stays off unless the caller asks for it.
"""

from __future__ import annotations

import difflib
import json
import warnings
from pathlib import Path

from .config import DTYPES  # the one list; config.ModelConfig checks a recipe's dtype against it

ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED_MODELS = {"tiny-arith": ASSETS / "tiny-arith", "tiny-countdown": ASSETS / "tiny-countdown"}

# Architectures built offline with random weights (`train --dry_run`, `bench --arch`): the published shapes of the
# models the GSM8K recipes name (each one's config.json on the Hub), and a mid-size Qwen2 for CPU benchmarks.
ARCHS = {
    "qwen2-100m": dict(model_type="qwen2", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=True,
                       max_position_embeddings=4096),
    "qwen2-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "qwen2-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "llama3-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                      tie_word_embeddings=True, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=5e5,
                      rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                        original_max_position_embeddings=8192)),
}
HUB_ARCHS = {  # base and instruct releases share their architecture
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen2-0.5b", "Qwen/Qwen2.5-0.5B": "qwen2-0.5b",
    "Qwen/Qwen2.5-1.5B-Instruct": "qwen2-1.5b", "Qwen/Qwen2.5-1.5B": "qwen2-1.5b",
    "meta-llama/Llama-3.2-1B-Instruct": "llama3-1b", "meta-llama/Llama-3.2-1B": "llama3-1b",
}
# A scaled-down copy of any of them for CPU tests: same model class (Qwen2's q/k/v bias, Llama 3's rope scaling,
# grouped KV heads, tied embeddings), 2 layers, width 64, head_dim 32.
SHRUNK = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
              head_dim=32)


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
    if looks_local(name):
        raise ModelError(f"model folder {name} does not exist; check the path, or give a Hub id (org/name) or an "
                         f"embedded name: {', '.join(EMBEDDED_MODELS)}")
    if name.count("/") == 1 and all(name.split("/")):
        return name  # a Hub id; from_pretrained reports download problems itself
    close = difflib.get_close_matches(name, list(EMBEDDED_MODELS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ModelError(f"unknown model {name!r}: not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
                     f"an existing folder, or a Hub id of the form org/name.{hint}")


def looks_local(name: str) -> bool:
    """Whether `name` can only be a path, never a Hub id (./x, ../x, /x, ~/x, a Windows drive, or not a valid id)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "/", "~")) or Path(name).is_absolute():
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def fetchable(name: str) -> str:
    """`resolve_model(name)`, checked to be loadable now: a Hub id needs the Hub to answer (hub.require_hub)."""
    from .hub import require_hub

    source = resolve_model(name)
    if not Path(source).exists():
        require_hub(f"model {name}", "pass a local model folder (written by save_pretrained) or an embedded name")
    return source


def model_type(name: str) -> str | None:
    """The architecture name in a local model's config.json, without loading weights (None for Hub ids)."""
    config = Path(resolve_model(name)) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def arch_config(name: str, *, shrink: bool = False, **overrides):
    """The transformers config of a recorded architecture (an ARCHS name or a Hub id in HUB_ARCHS), built offline.

    `shrink` swaps in SHRUNK's depth and width; `overrides` replace any field (vocab_size, token ids ...).
    """
    from transformers import AutoConfig

    key = HUB_ARCHS.get(name, name)
    if key not in ARCHS:
        raise ModelError(f"no recorded architecture for {name!r}; recorded: {', '.join([*ARCHS, *HUB_ARCHS])}")
    values = {**ARCHS[key], **(SHRUNK if shrink else {}), **overrides}
    return AutoConfig.for_model(values.pop("model_type"), **values)


def random_init_model(name: str, *, shrink: bool = False, dtype: str = "float32", device: str = "cpu", seed: int = 0,
                      trust_remote_code: bool = False):
    """(model, tokenizer): random weights in the architecture of `name`, for dry runs.

    A name recorded in ARCHS / HUB_ARCHS (the recipes' models) is built offline and paired with the embedded
    tokenizer, so nothing downloads; any other name's own config and tokenizer are read (a local folder, or the
    Hub). `shrink` scales the model down to SHRUNK and its vocabulary to the tokenizer's; full size keeps the real
    vocabulary, so memory use is the real model's (ids the embedded tokenizer lacks decode to nothing).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if name in HUB_ARCHS or name in ARCHS:
        tokenizer = load_tokenizer("tiny-arith")
        # the embedded tokenizer's special ids must exist in the random model, whatever the real model uses
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
        config = arch_config(name, shrink=shrink, **ids, **({"vocab_size": len(tokenizer)} if shrink else {}))
    else:
        try:
            config = AutoConfig.from_pretrained(fetchable(name), trust_remote_code=trust_remote_code,
                                                **(SHRUNK if shrink else {}))
            tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise ModelError(f"cannot read the config of {name} for a random-init dry run: {str(err).splitlines()[0]}; "
                             f"these architectures build offline: {', '.join(HUB_ARCHS)}") from err
    torch.manual_seed(seed)  # the random init is part of a dry run: the caller's seed fixes it
    with torch.device(device):  # initialise in place: a full-size model need not pass through CPU memory
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype),
                                                 trust_remote_code=trust_remote_code)
    return model.eval().requires_grad_(False), tokenizer


def load_base(spec, device: str, seed: int, dry_run=None):
    """(model, tokenizer) a run starts from, for the run config's `model` section (config.ModelConfig): the named
    model, or for a `dry_run` (config.DryRun) a random-init model of its architecture (see `random_init_model`)."""
    if dry_run is not None:
        return random_init_model(spec.name, shrink=dry_run.shrink, dtype=spec.dtype, device=device, seed=seed,
                                 trust_remote_code=spec.trust_remote_code)
    return (load_model(spec.name, dtype=spec.dtype, device=device, trust_remote_code=spec.trust_remote_code),
            load_tokenizer(spec.name, trust_remote_code=spec.trust_remote_code))


def base_tokenizer(spec, dry_run=None):
    """The tokenizer `load_base(spec, ..., dry_run)` pairs with its model, without loading the model."""
    if dry_run is not None and (spec.name in HUB_ARCHS or spec.name in ARCHS):
        return load_tokenizer("tiny-arith")  # recorded architectures run with the embedded tokenizer
    return load_tokenizer(spec.name, trust_remote_code=spec.trust_remote_code)


def load_tokenizer(name: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fetchable(name), trust_remote_code=trust_remote_code)
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
    source = fetchable(name)
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


def untie_output_head(model, head) -> None:
    """Give the output head `head` (an nn.Linear) its own copy of a weight it shares with the input embeddings.

    Merging a delta into a tied head would change the embeddings too (a different model from the one trained,
    where only the head's output moved); the config then says the two are untied, so a saved model keeps both."""
    import torch

    embeddings = model.get_input_embeddings()
    if embeddings is not None and head.weight is embeddings.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False


def merge_adapter(model, adapter: str):
    """Apply a PEFT LoRA adapter folder and merge it into the base weights (an adapted output head is untied from
    the input embeddings first, see `untie_output_head`)."""
    from peft import PeftModel

    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json); "
                         "pass the folder written by `eggroll-llm export` or a run's adapter/ folder")
    with warnings.catch_warnings():
        # PEFT's own calls into transformers use an old name; nothing a user can change
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        # PEFT warns that an adapter on a tied output head complicates merging: untie_output_head below handles it
        warnings.filterwarnings("ignore", message=r"Model has `tie_word_embeddings=True`", category=UserWarning)
        peft_model = PeftModel.from_pretrained(model, str(folder))  # wraps the target modules of `model` in place
    head = model.get_output_embeddings()
    if hasattr(head, "base_layer"):  # the adapter targets the output head
        untie_output_head(model, head.base_layer)
    return peft_model.merge_and_unload()
