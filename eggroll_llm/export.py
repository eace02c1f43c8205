"""Adapters in and out as PEFT LoRA folders (docs/design.md §3): a run's export for PEFT, vLLM and the Hub, and a PEFT
adapter as the starting point of a new run.

PEFT computes W + scaling · lora_B lora_A with scaling = lora_alpha / r. We write lora_B = U (m×r), lora_A = Vᵀ
(r×n) and lora_alpha = r, so scaling is 1 and the folder reproduces ΔW = U Vᵀ exactly. `eggroll-llm export` picks a
rank vLLM accepts (VLLM_LORA_RANKS): a low-rank adapter is padded with zero columns (exact) or, at a lower rank,
truncated by SVD; a dense (`adapter_rank: full`) delta is truncated by SVD; the fraction of energy kept is reported.
`--merged` adds the full model W + ΔW (exact, never truncated) in Hugging Face format under DIR/merged/, so DIR
itself stays a plain adapter folder that `PeftModel.from_pretrained` and vLLM's LoRARequest read as is.

    eggroll-llm export runs/tiny-arith-eggroll --out exports/tiny-arith --merged

torch and safetensors are imported inside the functions that use them, as in cli.py: `eggroll-llm --help` and the
commands that need no tensors start without loading torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .io import atomic_directory, check_output_folder

if TYPE_CHECKING:
    import torch

    from .perturbed import EggrollLinear

# vLLM's MaxLoRARanks (vllm/config/lora.py): the only values its max_lora_rank takes, and a LoRARequest of rank r
# needs max_lora_rank >= r; exporting at one of them lets a server run with max_lora_rank = r exactly.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_FULL_EXPORT_RANK = 64
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PEFT_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")  # PEFT's saved names (adapter name dropped)


class ExportError(ValueError):
    """A run, rank or adapter that cannot be exported or loaded; the message names the problem and the fix."""


def check_export_rank(layers: dict[str, EggrollLinear], rank: int) -> None:
    """Refuse a rank vLLM rejects, or one above min(m, n) of a layer (no such factorisation exists)."""
    accepted = ", ".join(map(str, VLLM_LORA_RANKS))
    if rank not in VLLM_LORA_RANKS:
        raise ExportError(f"export rank {rank} is not one vLLM accepts ({accepted}); pass --rank with one of these")
    sizes = {name: min(layer.out_features, layer.in_features) for name, layer in layers.items()}
    too_small = [name for name, size in sizes.items() if size < rank]
    if too_small:
        largest = max(r for r in VLLM_LORA_RANKS if r <= min(sizes.values()))
        raise ExportError(f"export rank {rank} is above min(m, n) = {sizes[too_small[0]]} of {too_small[0]} "
                          f"({len(too_small)} layer(s) in all); pass --rank {largest} or lower from {accepted}")


def default_export_rank(layers: dict[str, EggrollLinear]) -> int:
    """The smallest accepted rank that holds a low-rank adapter exactly; for a dense delta DEFAULT_FULL_EXPORT_RANK,
    capped by the smallest layer."""
    (adapter_rank,) = {layer.adapter_rank for layer in layers.values()}  # one adapter rank per run
    if adapter_rank == "full":
        smallest = min(min(layer.out_features, layer.in_features) for layer in layers.values())
        return max(r for r in VLLM_LORA_RANKS if r <= min(DEFAULT_FULL_EXPORT_RANK, smallest))
    above = [r for r in VLLM_LORA_RANKS if r >= adapter_rank]
    if not above:
        raise ExportError(f"adapter rank {adapter_rank} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}; "
                          "pass --rank to export a truncated adapter")
    return above[0]


def lowrank_truncate(U: torch.Tensor, V: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-`rank` factors (U' [m, rank], V' [n, rank]) of U Vᵀ (U [m, R], V [n, R], rank < R) and the energy
    kept Σ_top S² / Σ S², without forming the m×n matrix: QR both sides, SVD of the R×R core (Eckart–Young)."""
    import torch

    Q1, R1 = torch.linalg.qr(U.float())                                    # Q1: [m, R]  R1: [R, R]
    Q2, R2 = torch.linalg.qr(V.float())                                    # Q2: [n, R]  R2: [R, R]
    Uc, S, Vch = torch.linalg.svd(R1 @ R2.mT)                              # U Vᵀ = Q1 (R1 R2ᵀ) Q2ᵀ
    root = S[:rank].sqrt()                                                 # singular values split evenly
    total = float(S.pow(2).sum())
    energy = float(S[:rank].pow(2).sum()) / total if total > 0 else 1.0
    return (Q1 @ Uc[:, :rank]) * root, (Q2 @ Vch[:rank].mT) * root, energy


def lora_factors(layer: EggrollLinear, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lora_B [m, r], lora_A [r, n], energy kept) of one layer's delta; rank None: the adapter's own rank."""
    import torch.nn.functional as F

    from .adapter import truncate

    if layer.adapter_rank == "full":
        U, V, energy = truncate(layer.delta_weight(), rank or DEFAULT_FULL_EXPORT_RANK)
    elif rank is None or rank == layer.adapter_rank:
        U, V, energy = layer.lora_U, layer.lora_V, 1.0
    elif rank > layer.adapter_rank:  # zero columns: a rank vLLM accepts, the very same ΔW
        pad = (0, rank - layer.adapter_rank)
        U, V, energy = F.pad(layer.lora_U, pad), F.pad(layer.lora_V, pad), 1.0
    else:
        U, V, energy = lowrank_truncate(layer.lora_U, layer.lora_V, rank)
    return U.detach().float().cpu().contiguous(), V.detach().float().cpu().T.contiguous(), energy


def save_lora_folder(folder: str | Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                     base_model: str) -> int:
    """`adapter_config.json` + `adapter_model.safetensors` of module name -> (lora_B [m, r], lora_A [r, n]) into an
    existing folder, lora_alpha = r (PEFT's scaling 1, so the folder holds exactly Σ lora_B lora_A); returns r."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    (r,) = {lora_A.shape[0] for _, lora_A in factors.values()}
    tensors = {}
    for name, (lora_B, lora_A) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = lora_A.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = lora_B.contiguous()
    # Full module names: PEFT matches them exactly, so a regex-chosen subset of layers is reproduced as it is.
    config = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=sorted(factors), base_model_name_or_path=base_model)
    config.save_pretrained(str(folder))
    save_file(tensors, str(Path(folder) / "adapter_model.safetensors"), metadata={"format": "pt"})
    return r


def write_peft_adapter(layers: dict[str, EggrollLinear], folder: Path, base_model: str, rank: int | None) -> dict:
    """A run's adapter as a PEFT LoRA folder (into an existing folder); returns rank and energy kept."""
    factors, energies = {}, []
    for name, layer in layers.items():
        lora_B, lora_A, energy = lora_factors(layer, rank)
        factors[name] = (lora_B, lora_A)
        energies.append(energy)
    r = save_lora_folder(folder, factors, base_model)
    return {"rank": r, "energy_kept": min(energies, default=1.0), "modules": len(layers)}


def export_peft_adapter(layers: dict[str, EggrollLinear], out_dir: str | Path, base_model: str, *,
                        rank: int | None = None, overwrite: bool = False) -> dict:
    """Write a PEFT LoRA folder loadable by `PeftModel.from_pretrained`, atomically.

    Returns {"rank", "energy_kept" (the lowest fraction over layers), "modules"}. rank None keeps the adapter's own
    rank (the trainer's quick adapter/ export); a given rank must be one vLLM accepts and fit every layer.
    """
    if rank is not None:
        check_export_rank(layers, rank)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        return write_peft_adapter(layers, tmp, base_model, rank)


def base_model_id(name: str) -> str:
    """The base model an export names (adapter_config.json, model card): an embedded model's name (it loads by that
    name wherever eggroll_llm is installed), a local model's absolute folder, else the Hub id."""
    from .models import EMBEDDED_MODELS, resolve_model

    if name in EMBEDDED_MODELS:
        return name
    source = resolve_model(name)
    return str(Path(source).resolve()) if Path(source).exists() else source


def require_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir} is not a run directory (no config.yaml); pass the output_dir of an "
                          "`eggroll-llm train` run")
    return run_dir


def save_merged_model(model, tokenizer, folder: str | Path, model_name: str, card=None) -> None:
    """A plain model (an in-place run's, or one with its adapters merged) as a Hugging Face folder: safetensors
    weights, the tokenizer and a model card, written atomically."""
    with atomic_directory(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            card.save(tmp / "README.md")


def load_run(run_dir: str | Path):
    """(config, model, layers, trainer_state) of a run: its base model with the latest checkpoint's state, population
    rows None (the model that evaluation sees): EGGROLL layers holding the adapter, or (an in-place run, layers
    empty) the trained weights themselves."""
    from .checkpoint import list_checkpoints, load_checkpoint
    from .config import load_config
    from .es import EggrollES
    from .models import default_device, load_model
    from .rundir import recorded_dry_run

    run_dir = require_run_dir(run_dir)
    config = load_config(run_dir / "config.yaml")
    if config.method != "eggroll":
        raise ExportError(f"{run_dir} is a {config.method} run: its adapter/ or model/ folder is already in PEFT / "
                          "Hugging Face format; push that folder directly")
    if recorded_dry_run(run_dir) is not None:
        raise ExportError(f"{run_dir} trained a random-init model (a --dry_run): its base weights exist nowhere else, "
                          "so an adapter of it is of no use; export a run of a real model")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ExportError(f"{run_dir} has no checkpoint (checkpoints/step-*/), so no adapter to export; train (or "
                          "--resume) it until it saves one: every save_every steps and at the end")
    model = load_model(config.model.name, dtype=config.model.dtype, device=default_device(config.model.device),
                       trust_remote_code=config.model.trust_remote_code)
    es = EggrollES.from_config(model, config.es, config.seed)
    tensors, state = load_checkpoint(checkpoints[-1])
    es.load_state_dict(tensors)
    return config, model, es.layers, state


def merge_into_base(model, layers: dict[str, EggrollLinear]) -> None:
    """Swap every EggrollLinear back for its nn.Linear holding W + ΔW (in W's dtype): the plain model (a transformers
    model, or any nn.Module such as an nn.Sequential)."""
    import torch

    from .models import untie_output_head

    with torch.no_grad():
        for name, layer in layers.items():
            if hasattr(model, "get_input_embeddings"):  # a transformers model: its output head may be tied
                untie_output_head(model, layer.base)  # a no-op unless this is an output head tied to the embeddings
            weight = layer.base.weight
            weight.copy_(weight.float() + layer.delta_weight().to(weight.device))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer.base)


def export_run(run_dir: str | Path, out: str | Path, *, rank: int | None = None, merged: bool = False,
               force: bool = False) -> dict:
    """Export a run's latest checkpoint to `out`: PEFT LoRA folder + model card, and with `merged` the full model
    under out/merged/. All of it is written in a temporary folder renamed into place: an error leaves no `out`."""
    from .models import load_tokenizer
    from .push import model_card
    from .runlog import MetricsLog

    out, run_dir = Path(out), require_run_dir(run_dir)
    # before any loading: only an earlier export may be replaced, and only with --force
    from .config import load_config

    in_place = load_config(run_dir / "config.yaml").es.adapter_rank is None
    check_output_folder(out, kind="model export" if in_place else "PEFT export",
                        markers=("config.json", "model.safetensors") if in_place else ADAPTER_FILES,
                        protected=[run_dir], force=force, error=ExportError)
    config, model, layers, state = load_run(run_dir)
    base_model = base_model_id(config.model.name)
    metrics = [r for r in MetricsLog(run_dir / "metrics.jsonl").read() if r["step"] <= state["step"]]
    if in_place:  # what trained is the model itself
        if rank is not None:
            raise ExportError(f"{run_dir} trained its weights in place (es.adapter_rank null), so there is no adapter "
                              "to cut to a rank: drop --rank (the export is the full model)")
        tokenizer = load_tokenizer(config.model.name, trust_remote_code=config.model.trust_remote_code)
        card = model_card(config, metrics, {"rank": None, "energy_kept": 1.0}, base_model, merged=True)
        save_merged_model(model, tokenizer, out, config.model.name, card)
        return {"out": str(out), "merged": str(out), "step": state["step"], "in_place": True}
    rank = default_export_rank(layers) if rank is None else rank
    check_export_rank(layers, rank)
    with atomic_directory(out, overwrite=True) as tmp:  # check_output_folder allowed replacing it
        summary = write_peft_adapter(layers, tmp, base_model, rank)
        model_card(config, metrics, summary, base_model).save(tmp / "README.md")
        if merged:
            merge_into_base(model, layers)
            model.save_pretrained(tmp / "merged")
            load_tokenizer(config.model.name, trust_remote_code=config.model.trust_remote_code
                           ).save_pretrained(tmp / "merged")
            model_card(config, metrics, summary, base_model, merged=True).save(tmp / "merged" / "README.md")
    return {**summary, "out": str(out), "merged": str(out / "merged") if merged else None, "step": state["step"]}


def add_export_parser(subparsers) -> None:
    accepted = ", ".join(map(str, VLLM_LORA_RANKS))
    p = subparsers.add_parser("export", help="write a run's adapter as a PEFT LoRA folder (PEFT, vLLM, the Hub)",
                              description="Export the latest checkpoint of an EGGROLL run: adapter_config.json, "
                                          "adapter_model.safetensors and a model card (README.md); with --merged "
                                          "also the full model in Hugging Face format under OUT/merged/.")
    p.add_argument("run_dir", type=Path, help="run directory written by `eggroll-llm train` (method: eggroll)")
    p.add_argument("--out", type=Path, required=True, help="folder to write; refused if it exists, unless --force")
    p.add_argument("--rank", type=int, help=f"LoRA rank, one of {accepted} (vLLM's set); default: the adapter's "
                                            "rank rounded up (zero-padded, exact), or 64 (capped by the smallest "
                                            "layer) for a full-rank run. A lower rank is a truncated SVD; the "
                                            "energy kept is printed")
    p.add_argument("--merged", action="store_true", help="also write W + ΔW (exact) and the tokenizer to OUT/merged/")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    result = export_run(args.run_dir, args.out, rank=args.rank, merged=args.merged, force=args.force)
    if result.get("in_place"):
        print(f"wrote {result['out']}: the full model of step {result['step']} (weights trained in place, "
              "safetensors) with its tokenizer and model card")
        return 0
    print(f"wrote {result['out']}: PEFT LoRA adapter of step {result['step']}, rank {result['rank']}, "
          f"{result['modules']} modules, energy kept {result['energy_kept']:.4f} (lowest layer)")
    if result["merged"]:
        print(f"wrote {result['merged']}: merged model (base weights + ΔW, exact) with its tokenizer")
    return 0


def _adapter_folder(source: str) -> Path:
    """A local adapter folder, or the two adapter files of a Hub repo fetched through huggingface_hub."""
    path = Path(source).expanduser()
    if not path.exists():
        if source.count("/") != 1 or source.startswith((".", "/", "~")):
            raise ExportError(f"adapter {source!r} is neither an existing folder nor a Hub id of the form org/name")
        from huggingface_hub import snapshot_download

        from .hub import require_hub

        require_hub(f"adapter {source}", "pass a local adapter folder")
        path = Path(snapshot_download(source, allow_patterns=list(ADAPTER_FILES)))
    missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
    if missing:
        raise ExportError(f"{source} is not a PEFT LoRA adapter with safetensors weights (missing "
                          f"{', '.join(missing)}); pass a folder written by `eggroll-llm export` or PEFT's "
                          "save_pretrained (pickled adapter_model.bin files are not read)")
    return path


def _check_lora_config(config: dict, source: str) -> None:
    """Refuse what U Vᵀ cannot hold; vLLM refuses most of the same (bias, DoRA, modules_to_save)."""
    refusals = [
        (config.get("peft_type") != "LORA", f"is a {config.get('peft_type')} adapter, not LoRA"),
        (config.get("bias", "none") != "none", f"trains biases (bias: {config.get('bias')}); ΔW = U Vᵀ has none"),
        (bool(config.get("use_dora")), "is a DoRA adapter (use_dora): its magnitude vectors are no U Vᵀ"),
        (bool(config.get("lora_bias")), "adds a bias to lora_B (lora_bias)"),
        (bool(config.get("modules_to_save")), f"saves whole modules ({config.get('modules_to_save')})"),
        (bool(config.get("alpha_pattern")), "sets per-module lora_alpha (alpha_pattern)"),
        (bool(config.get("fan_in_fan_out")), "targets transposed Conv1D weights (fan_in_fan_out)"),
        (bool(config.get("layer_replication")), "replicates layers (layer_replication)"),
    ]
    for refused, reason in refusals:
        if refused:
            raise ExportError(f"cannot start from adapter {source}: it {reason}; start from a plain LoRA adapter "
                              "(bias none, no DoRA, no modules_to_save)")


def _lora_pairs(tensors: dict[str, torch.Tensor], source: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (lora_A [r, n], lora_B [m, r]) in fp32, from PEFT's saved key names."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None:
            raise ExportError(f"adapter {source} holds {key}, not a LoRA weight of a linear layer "
                              "(base_model.model.<module>.lora_A/lora_B.weight); only LoRA on nn.Linear can seed "
                              "EGGROLL")
        pairs.setdefault(match[1], {})[match[2]] = tensor.float()
    broken = [name for name, pair in pairs.items() if len(pair) != 2]
    if broken:
        raise ExportError(f"adapter {source} has lora_A without lora_B (or the reverse) for {', '.join(broken[:3])}")
    return {name: (pair["A"], pair["B"]) for name, pair in pairs.items()}


def load_peft_adapter(layers: dict[str, EggrollLinear], source: str | Path) -> dict:
    """Set every layer's adapter from a PEFT LoRA adapter (a folder or a Hub id): U = lora_B · scaling, V = lora_Aᵀ.

    scaling = lora_alpha / r, or lora_alpha / √r with use_rslora, as PEFT applies it. Zero rank-1 terms (an export
    padded to a vLLM rank) are dropped, then U, V are zero-padded to the layers' adapter_rank; a higher rank is
    refused. Full-rank layers get delta = scaling · lora_B lora_A. Layers the adapter does not cover are zeroed, so
    the model is exactly base + adapter. Everything is checked before any layer changes.
    """
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    source = str(source)
    folder = _adapter_folder(source)
    config = json.loads((folder / "adapter_config.json").read_text())
    _check_lora_config(config, source)
    pairs = _lora_pairs(load_file(str(folder / "adapter_model.safetensors")), source)
    unknown = sorted(set(pairs) - set(layers))
    if unknown:
        raise ExportError(f"adapter {source} targets modules this run does not: {', '.join(unknown[:4])}"
                          f"{' …' if len(unknown) > 4 else ''}; widen es.target_modules to cover them, or start "
                          "from an adapter of this base model")
    values, ranks = {}, [0]
    for name, (lora_A, lora_B) in pairs.items():
        layer = layers[name]
        if lora_A.shape[1] != layer.in_features or lora_B.shape[0] != layer.out_features:
            raise ExportError(f"adapter {source} does not fit {name}: lora_B {tuple(lora_B.shape)} · lora_A "
                              f"{tuple(lora_A.shape)} vs a {layer.out_features}×{layer.in_features} layer; "
                              "it was trained on another base model")
        r = lora_A.shape[0]
        scaling = config["lora_alpha"] / (r ** 0.5 if config.get("use_rslora") else r)
        keep = (lora_B.abs().amax(0) > 0) & (lora_A.abs().amax(1) > 0)          # non-zero rank-1 terms
        U, V = lora_B[:, keep] * scaling, lora_A[keep].T                         # [m, k], [n, k]
        ranks.append(U.shape[1])
        if layer.adapter_rank == "full":
            values[name] = (U @ V.T,)
        elif U.shape[1] > layer.adapter_rank:
            raise ExportError(f"adapter {source} has rank {U.shape[1]} at {name}, above es.adapter_rank "
                              f"{layer.adapter_rank}; set es.adapter_rank to at least {U.shape[1]} (or 'full')")
        else:
            pad = (0, layer.adapter_rank - U.shape[1])
            values[name] = (F.pad(U, pad), F.pad(V, pad))
    with torch.no_grad():  # copy_ bumps the buffers' versions, so the layers recast their cached adapters
        for name, layer in layers.items():
            buffers = [layer.delta] if layer.adapter_rank == "full" else [layer.lora_U, layer.lora_V]
            for i, buffer in enumerate(buffers):
                if name in values:
                    buffer.copy_(values[name][i])
                else:
                    buffer.zero_()
    return {"source": str(folder), "modules": len(pairs), "rank": max(ranks)}
