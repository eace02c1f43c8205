"""The sections every method shares: `model:` (what starts the run), `data:` (the prompts and held-out set) and
`generation:` (how completions are produced). Each checks its own values where it is built (`__post_init__`).

    EggrollConfig(model={"name": "tiny-arith"}, data={"eval_limit": 50}, generation={"max_new_tokens": 32})
"""

from __future__ import annotations

from dataclasses import dataclass

from .fields import check_section, help_field

DTYPES = ("float32", "bfloat16", "float16")
# What recipes of earlier releases could hold in `model:` and no section holds now: `train --dry_run` sets how the
# model loads (config.dry_run.DryRun), which is not part of the recipe. Loading such a config drops them.
LEGACY_MODEL_KEYS = ("dry_run_random_init", "dry_run_shrink")


@dataclass
class ModelConfig:
    name: str = help_field("embedded name (tiny-arith, tiny-countdown), local folder or Hub id", "tiny-arith")
    dtype: str = help_field("compute dtype of the frozen base weights: float32, bfloat16 or float16", "float32")
    device: str | None = help_field("cpu, cuda, cuda:1 ...; default: cuda when available, else cpu", None)
    trust_remote_code: bool = help_field("allow model code from the Hub (off unless you ask)", False)
    adapter: str | None = help_field("PEFT LoRA adapter (folder or Hub id) to start from: lora_B·scaling and lora_Aᵀ "
                                     "become U and V (eggroll only; on --resume the checkpoint's adapter is used)",
                                     None)

    def __post_init__(self):
        check_section(self, "model.", lambda: [
            (self.dtype in DTYPES, f"model.dtype must be {', '.join(DTYPES[:-1])} or {DTYPES[-1]}, got {self.dtype!r}"),
        ])


@dataclass
class DataConfig:
    task: str | None = help_field("built-in task: tiny-arith (generated), gsm8k, countdown (generated, or data_path "
                                  "with nums/target columns); null: your own dataset at data_path, with a prompt "
                                  "column", "tiny-arith")
    data_path: str | None = help_field("local jsonl/json/parquet/csv file or folder, or a Hub dataset id; gsm8k "
                                       "default: openai/gsm8k; needed when task is null", None)
    prompt_column: str = help_field("task null: the column holding each prompt (text, or a list of chat messages); "
                                    "every other column reaches the reward functions as a keyword", "prompt")
    train_split: str = help_field("split the training prompts come from", "train")
    eval_split: str = help_field("held-out split for periodic evaluation", "validation")
    eval_limit: int = help_field("held-out examples per evaluation", 200)
    few_shot: int = help_field("worked train examples shown before each question (tiny-arith, gsm8k)", 0)
    long_prompts: str = help_field("a prompt that does not fit beside generation.max_new_tokens in the model's "
                                   "context: error (refused before the run starts) or truncate (keep its last "
                                   "tokens; EGGROLL only)", "error")
    train_dataset: dict | None = help_field("set by the trainer, not by recipes: the description (fingerprint, "
                                            "num_rows, columns) of a train_dataset given as a Python object", None)
    eval_dataset: dict | None = help_field("set by the trainer: the description of an eval_dataset given as an "
                                           "object", None)

    def __post_init__(self):
        from ..data import TASK_BUILDERS  # the tasks the data layer can build (data.py imports `datasets`: lazily)

        check_section(self, "data.", lambda: [
            (self.task in TASK_BUILDERS, f"data.task must be one of {', '.join(map(str, TASK_BUILDERS))} (null: your "
                                         f"own dataset at data.data_path), got {self.task!r}"),
            (self.task is not None or self.data_path is not None or self.train_dataset is not None,
             "data.task is null, so the prompts come from your own dataset: set data.data_path to a local file or "
             "folder or a Hub dataset id"),
            (self.eval_limit >= 1, f"data.eval_limit must be >= 1, got {self.eval_limit}"),
            (self.few_shot >= 0, f"data.few_shot must be >= 0, got {self.few_shot}"),
            (self.long_prompts in ("error", "truncate"),
             f"data.long_prompts must be error or truncate, got {self.long_prompts!r}"),
        ])


@dataclass
class GenerationConfig:
    engine: str = help_field("generation backend: hf (plain PyTorch) or vllm (members as LoRA adapters; needs the "
                             "vllm extra: pip install 'eggroll_llm[vllm]')", "hf")
    max_new_tokens: int = help_field("completion budget per prompt", 64)
    temperature: float = help_field("0 = greedy (the paper's choice: exploration comes from parameter noise)", 0.0)
    top_p: float = help_field("nucleus sampling threshold when temperature > 0", 1.0)
    max_batch_tokens: int = help_field("hf engine: memory budget of one micro-batch, rows x (prompt + new tokens)",
                                       65536)
    gpu_memory_utilization: float = help_field("vllm engine: fraction of GPU memory vLLM may claim; the trainer's "
                                               "own copy of the model needs the rest", 0.5)

    def __post_init__(self):
        check_section(self, "generation.", lambda: [
            (self.engine in ("hf", "vllm"), f"generation.engine must be hf or vllm, got {self.engine!r}"),
            (self.max_new_tokens >= 1, "generation.max_new_tokens must be >= 1"),
            (self.temperature >= 0, f"generation.temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (0 < self.top_p <= 1, f"generation.top_p must be in (0, 1] (1 = off), got {self.top_p}"),
            (self.max_batch_tokens >= 1, f"generation.max_batch_tokens must be >= 1, got {self.max_batch_tokens}"),
            (0 < self.gpu_memory_utilization <= 1,
             f"generation.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"),
        ])
