"""What the Hugging Face Hub sees of a run: the model card of an export, and `eggroll-llm push` that uploads it.

The token comes from where huggingface_hub looks (HF_TOKEN, then the cached `hf auth login`); it is handed to HfApi
and never printed or logged. Every check that needs no network runs first: the folder must be an export (a PEFT
LoRA adapter, or a merged model folder), the repo id well formed, HF_HUB_OFFLINE unset and a token present.

    eggroll-llm push exports/tiny-arith --repo-id USER/tiny-arith-eggroll [--private]
"""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id

from .config import Recipe, to_dict
from .hub import offline, require_hub

HUB_DATASETS = {"gsm8k": "openai/gsm8k"}


class PushError(ValueError):
    """A folder, repo id or environment that cannot push; the message names the problem and the fix."""


def _score_rows(metrics: list[dict], key: str) -> list[tuple[str, dict]]:
    """(label, record) of the base model (step 0), the final and the best held-out evaluation by `key`."""
    evals = [r for r in metrics if key in r]
    if not evals:
        return []
    best = max(evals, key=lambda r: r[key])
    return [("base model", evals[0]), ("final", evals[-1]), ("best", best)]


STRATEGY_TITLES = {"eggroll": "EGGROLL", "openai_es": "full-parameter ES"}


def model_card(config: Recipe, metrics: list[dict], summary: dict, base_model: str, *,
               merged: bool = False) -> ModelCard:
    """The README.md of an export (`merged`: of its merged/ model): base model, method, data, results, settings."""
    from .models import EMBEDDED_MODELS

    task = config.data.task or Path(str(config.data.data_path)).name
    embedded = base_model in EMBEDDED_MODELS  # shipped inside eggroll_llm: loaded by name on any machine
    on_hub = not embedded and not Path(base_model).exists()  # the Hub validates base_model: only a Hub id goes in
    data = ModelCardData(
        base_model=base_model if on_hub else None, library_name="transformers" if merged else "peft",
        license="apache-2.0", pipeline_tag="text-generation", datasets=[HUB_DATASETS[task]] if task in HUB_DATASETS
        else None, tags=["eggroll", "evolution-strategies", task] + ([] if merged else ["lora"]))
    base = (f"`{base_model}`" if on_hub else f"`{base_model}`, the model embedded in eggroll_llm" if embedded
            else f"the local model `{base_model}`")
    key = "eval_accuracy" if any("eval_accuracy" in r for r in metrics) else "eval_reward"
    rows = "\n".join(f"| {label} | {r['step']} | {r[key]:.4f} | {r.get('eval_strict_accuracy', float('nan')):.4f} "
                     f"| {r.get('eval_n', '')} |" for label, r in _score_rows(metrics, key))
    last = metrics[-1] if metrics else {}
    what = ("the full model, its target weights trained in place (full-parameter ES)" if config.es.adapter_rank is None
            else "the base weights with the adapter merged in (W + ΔW, exact)" if merged else
            f"a PEFT LoRA adapter, rank {summary['rank']}, lora_alpha {summary['rank']} (scaling 1)")
    truncated = (f"\nThe adapter is a truncated SVD of the trained update: it keeps {summary['energy_kept']:.4f} of "
                 "its energy in the lowest layer (the merged model keeps all of it).\n"
                 if summary["energy_kept"] < 1 - 1e-6 and not merged else "")
    if merged:
        usage = ('from transformers import AutoModelForCausalLM\n'
                 'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER_OR_REPO")')
    else:
        load = ('from eggroll_llm.models import load_model  # pip install eggroll_llm\n'
                f'base = load_model("{base_model}")' if embedded else 'from transformers import AutoModelForCausalLM\n'
                f'base = AutoModelForCausalLM.from_pretrained("{base_model}")')
        usage = (f'from peft import PeftModel\n{load}\n'
                 'model = PeftModel.from_pretrained(base, "THIS_FOLDER_OR_REPO")\n\n'
                 '# vLLM: LLM(model=..., enable_lora=True, max_lora_rank=...) and\n'
                 '# LoRARequest("eggroll", 1, "THIS_FOLDER") per request')
    settings = yaml.safe_dump({k: to_dict(config)[k] for k in ("method", "seed", "rewards", "es", "generation",
                                                                "data")}, sort_keys=False).strip()
    content = f"""---
{data.to_yaml()}
---

# {task} — {STRATEGY_TITLES.get(config.es.strategy, "ES")} fine-tune of {config.model.name}

This is {what}, trained from {base} with EGGROLL (evolution strategies with low-rank perturbations,
[arXiv 2511.16652](https://arxiv.org/abs/2511.16652)) by `eggroll_llm`: no gradients, only rewards of the
population's greedy completions. {config.es.population_size} members per step, σ {config.es.sigma},
lr {config.es.lr}, noise rank {config.es.rank}, adapter rank {config.es.adapter_rank}.
{truncated}
## Results

{"Held-out accuracy" if key == "eval_accuracy" else "Mean held-out reward"} on {task}/{config.data.eval_split} \
{"(flexible answer match; strict: `#### N` only)" if key == "eval_accuracy" else "(strict: not applicable)"}.

| model | step | {"accuracy" if key == "eval_accuracy" else "reward"} | strict | n |
|---|---|---|---|---|
{rows or "| (no evaluation recorded) | | | | |"}

Training: {last.get('step', 0)} steps, {last.get('completions', 0)} completions,
{last.get('tokens', 0)} generated tokens, {last.get('wall_s', 0):.0f} s of training wall-clock.

## Use

```python
{usage}
```

## Settings (from the run's config.yaml)

```yaml
{settings}
```
"""
    return ModelCard(content)


def export_kind(folder: Path) -> str:
    """"adapter" (PEFT LoRA) or "model" (merged, Hugging Face format); anything else is refused."""
    if (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file():
        return "adapter"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return "model"
    raise PushError(f"{folder} is not an export: it has neither adapter_config.json + adapter_model.safetensors "
                    "(a PEFT LoRA adapter) nor config.json + *.safetensors (a merged model); write one with "
                    "`eggroll-llm export RUN_DIR --out DIR` and push DIR")


def push_export(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None) -> str:
    """Create `repo_id` (if needed) and upload `folder` to it, on branch `revision`; returns the repo's URL."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder; pass the --out folder of `eggroll-llm export`")
    export_kind(folder)
    validate_repo_id(repo_id)  # HFValidationError, a ValueError, names what is wrong with the id
    if "/" not in repo_id:
        raise PushError(f"--repo-id {repo_id!r} needs its owner: USER/NAME or ORG/NAME")
    if offline():
        raise PushError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it (e.g. `unset HF_HUB_OFFLINE`) "
                        "on a machine with network access and push again")
    token = get_token()
    if token is None:
        raise PushError("no Hugging Face token found (HF_TOKEN unset and no cached login); run `hf auth login` or "
                        "set HF_TOKEN to a token with write access")
    require_hub(f"pushing to {repo_id}", "push from a machine with network access", cache=False)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                          commit_message=f"Upload EGGROLL export ({folder.name})")
    except HfHubHTTPError as err:  # the message carries the status and the Hub's reason, never the token
        raise PushError(f"the Hub refused the push to {repo_id}: {err}; check that your token may write to that "
                        "namespace") from err
    except Exception as err:  # the connection broke mid-push; its type depends on huggingface_hub's HTTP client
        raise PushError(f"the push to {repo_id} failed on the network ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'no detail'}); check the connection and push "
                        "again (an interrupted upload leaves no partial commit)") from err
    return str(url)


def add_push_parser(subparsers) -> None:
    p = subparsers.add_parser("push", help="upload an export folder to the Hugging Face Hub",
                              description="Create the Hub repo (if needed) and upload DIR: a PEFT adapter written by "
                                          "`eggroll-llm export` (with merged/ if exported with --merged), or a "
                                          "merged model folder. Token: HF_TOKEN or `hf auth login`.")
    p.add_argument("dir", type=Path, help="folder written by `eggroll-llm export` (or its merged/ subfolder)")
    p.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME of the model repo")
    p.add_argument("--private", action="store_true",
                   help="create the repo private (an existing repo keeps its setting)")
    p.add_argument("--revision", help="branch to upload to (created from main if missing); default: main")
    p.set_defaults(func=_run_push)


def _run_push(args) -> int:
    url = push_export(args.dir, args.repo_id, private=args.private, revision=args.revision)
    print(f"pushed {args.dir} to {url}" + (f" (branch {args.revision})" if args.revision else ""))
    return 0
