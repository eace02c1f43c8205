"""The `eggroll-llm` command: one subcommand per job, each with --help.

    eggroll-llm eval --model tiny-arith --task tiny-arith --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace

from .config import DRY_RUN_MODES
from .interrupt import Interrupted
from .io import atomic_write_text


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="greedy accuracy of a model (and optional adapter) on a task split",
                              description="Batched greedy generation on a held-out split. tiny-arith and gsm8k: "
                                          "strict (#### N) and flexible (last number) accuracy; countdown: success "
                                          "rate as accuracy; a dataset of your own (--data FILE --rewards NAME): "
                                          "eval_reward, the mean reward training-time evaluation reports.")
    p.add_argument("--model", default="tiny-arith", help="embedded name (tiny-arith, tiny-countdown), local folder or "
                   "Hub id")
    p.add_argument("--adapter", help="PEFT LoRA adapter folder to apply (e.g. a run's adapter/ or an export)")
    p.add_argument("--task", help="tiny-arith (the default without --rewards), gsm8k or countdown; "
                   "leave it out with --data and --rewards for a dataset of your own")
    p.add_argument("--data", help="local jsonl/parquet file or folder (gsm8k default: the Hub dataset openai/gsm8k; "
                   "countdown: rows with nums and target; your own: rows with a prompt column)")
    p.add_argument("--prompt-column", default="prompt", help="your own dataset: the column holding each prompt (text "
                   "or chat messages); every other column reaches the rewards as a keyword")
    p.add_argument("--rewards", nargs="+", metavar="NAME|MODULE:FUNCTION",
                   help="reward functions to report eval_reward with, as a recipe's rewards: built-in names or "
                        "package.module:function (default: countdown for countdown)")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--limit", type=int, help="evaluate the first N examples only")
    p.add_argument("--few-shot", type=int, default=0, help="worked train examples shown before each question")
    p.add_argument("--batch-size", type=int, default=64, help="prompts generated together")
    p.add_argument("--max-new-tokens", type=int, help="default: 64 for tiny-arith, 512 for gsm8k, 256 otherwise")
    p.add_argument("--long-prompts", default="error",
                   help="a prompt that does not fit beside --max-new-tokens in the model's context: error (default) or "
                        "truncate (keep its last tokens, with a warning)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--out", type=Path, help="write per-example JSONL (prompt, completion, and the checks or rewards)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from transformers import AutoConfig

    from .data import QA_TASKS, task_dataset
    from .engine.hf import HFEngine
    from .evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate, evaluate_rewards
    from .inputs import LONG_PROMPTS, PromptSet, prompt_budget
    from .models import default_device, fetchable, load_model, load_tokenizer

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.long_prompts not in LONG_PROMPTS:
        raise ValueError(f"--long-prompts must be one of {', '.join(LONG_PROMPTS)}, got {args.long_prompts!r}")
    task = args.task or (None if args.rewards or args.data else "tiny-arith")
    if task is None and not args.rewards:
        raise ValueError("--data without --task is a dataset of your own, scored by reward functions: pass --rewards "
                         "NAME or package.module:function (or --task gsm8k / countdown for rows of those tasks)")
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    dataset = task_dataset(task, args.split, tokenizer, data_path=args.data, prompt_column=args.prompt_column,
                           limit=args.limit, few_shot=args.few_shot)
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS.get(task, 256)
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    # prompts are checked against the context before the weights load: a refusal costs no loading time
    config = AutoConfig.from_pretrained(fetchable(args.model), trust_remote_code=args.trust_remote_code)
    prompt_set = PromptSet(dataset, tokenizer, f"{args.data or task} {args.split}",
                           prompt_budget(SimpleNamespace(config=config), max_new_tokens), args.long_prompts,
                           settings=("--max-new-tokens", "--long-prompts truncate"))
    model = load_model(args.model, dtype=args.dtype, device=default_device(args.device), adapter=args.adapter,
                       trust_remote_code=args.trust_remote_code)
    engine = HFEngine(model, tokenizer)
    if task in QA_TASKS and not args.rewards:
        result = evaluate(engine, list(dataset["prompt"]), list(dataset["answer"]), max_new_tokens=max_new_tokens,
                          batch_size=args.batch_size, progress=not args.json, prompt_ids=prompt_set.ids)
        records, scores = result.records, result.summary()
    else:
        records, scores = evaluate_rewards(engine, prompt_set, task, args.rewards, max_new_tokens=max_new_tokens,
                                           batch_size=args.batch_size, progress=not args.json)
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in records))
    summary = {"model": args.model, "adapter": args.adapter, "task": task, "split": args.split, **scores}
    if args.json:
        print(json.dumps(summary))
    elif "strict_accuracy" in scores and task in QA_TASKS:
        print(f"{task}/{args.split}: accuracy {scores['accuracy']:.4f} (flexible), "
              f"strict {scores['strict_accuracy']:.4f}, n={scores['n']}")
    else:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k.startswith(("accuracy", "eval_reward")))
        print(f"{task or args.data}/{args.split}: {figures}, n={scores['n']}")
    return 0


def _add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="run a recipe (method: eggroll or grpo) and write a run directory",
                              description="Train from a YAML recipe. Any recipe key can be overridden: "
                                          "--es.sigma 0.002 --output_dir runs/x. `eggroll-llm train --list-keys` "
                                          "prints every key with its default and help. Check a recipe end to end "
                                          "without weights, data or a GPU, in seconds: eggroll-llm train "
                                          "recipes/gsm8k-qwen2.5-0.5b-eggroll.yaml --dry-run tiny")
    p.add_argument("recipe", nargs="?", type=Path, help="recipe YAML (see recipes/)")
    p.add_argument("--dry-run", nargs="?", const="full", choices=DRY_RUN_MODES, metavar="full|tiny",
                   help="one step of a random-init model of the recipe's architecture (no weights downloaded for the "
                        "recipes' models), a 2-example evaluation, output to a new temporary folder unless "
                        "--output_dir is given, gsm8k recipes without data_path on a shipped 16-problem sample; "
                        "'tiny' scales the model down (2 layers, width 64), the population to 4 and completions "
                        "to 8 tokens, to take seconds on a CPU; other overrides still apply")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.add_argument("--list-keys", action="store_true", help="print every recipe key with its default and help")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from .config import DryRun, describe, dry_run_data, load_config, parse_overrides

    if args.list_keys:
        for key, text, default in describe():
            print(f"{key:32} {default!r:>16}  {text}")
        return 0
    if args.recipe is None:
        raise ValueError("train needs a recipe YAML, e.g. eggroll-llm train recipes/tiny-arith-eggroll.yaml")
    overrides = parse_overrides(args.overrides)
    dry_run = DryRun(args.dry_run) if args.dry_run else None  # how the model loads, not part of the recipe
    if dry_run is not None:
        overrides = dry_run.overrides(overrides)
    if args.no_progress:
        overrides["disable_tqdm"] = True
    config = load_config(args.recipe, overrides)
    if dry_run is not None:
        config = dry_run_data(config)
    from .distributed import shutdown
    from .recipe import run_recipe

    output = run_recipe(config, resume=args.resume, dry_run=dry_run)
    shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        from .runlog import stop_note

        adapter = config.es.adapter_rank is not None if config.method == "eggroll" else config.grpo.lora_rank
        kept = "adapter/" if adapter else "model/"
        print(f"{stop_note(output, config.max_steps, config.max_wall_s)}; run written to {output.run_dir} "
              f"(metrics.jsonl, eval/, checkpoints/, {kept})")
    return 0


# subcommand -> (module, function adding its parser): a command imports only its own module, so `eggroll-llm push`
# does not load torch for `compare`'s plots or `bench`'s models.
SUBCOMMANDS = {
    "eval": (__name__, "_add_eval"),
    "train": (__name__, "_add_train"),
    "compare": (".compare", "add_compare_parser"),
    "drift": (".drift", "add_drift_parser"),
    "bench": (".bench", "add_bench_parser"),
    "export": (".export", "add_export_parser"),
    "push": (".push", "add_push_parser"),
    "egg": (".egg.cli", "add_egg_parser"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with a known `command`, only that subcommand's (and only its module imported)."""
    parser = argparse.ArgumentParser(prog="eggroll-llm", description="EGGROLL fine-tuning of causal LMs, and GRPO "
                                     "baselines to compare against. Errors print one line; --debug (anywhere on "
                                     "the command line) shows the traceback instead.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, adder) in SUBCOMMANDS.items():
        if command not in SUBCOMMANDS or command == name:
            getattr(import_module(module, __package__), adder)(subparsers)
    return parser


def dashed_flags(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`argv` with each flag spelled with dashes: flags are `--few-shot`, `--dry-run`, ... everywhere, and the
    underscore spellings (`--dry_run`, `--few_shot`) stay accepted. Recipe overrides (`--es.sigma`, `--output_dir`)
    are left to config.parse_overrides, which takes either spelling too."""
    known = {option for action in _all_actions(parser) for option in action.option_strings}
    out = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        dashed = "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag
        out.append(dashed + sep + value if dashed in known and flag not in known else arg)
    return out


def _all_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        yield action
        for sub in getattr(action, "choices", None) or {}:
            if isinstance(action.choices, dict) and isinstance(action.choices[sub], argparse.ArgumentParser):
                yield from _all_actions(action.choices[sub])


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted `train` run: the same one, with --resume."""
    return shlex.join(["eggroll-llm", *[a for a in argv if a != "--resume"], "--resume"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("EGGROLL_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    argv = dashed_flags(argv, parser)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.parse_args(argv)  # argparse's own error for unknown options
    args.overrides = extra
    if not debug:  # a warning is one line, like an error
        warnings.formatwarning = lambda message, category, *rest, **kw: f"eggroll-llm: warning: {message}\n"
    try:
        return args.func(args)
    except Interrupted as stop:  # the run saved its last completed step
        if int(os.environ.get("RANK", "0")) == 0:  # one line per job, not one per process
            print(f"interrupted at step {stop.step}; continue with: {resume_command(argv)}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        if debug:
            raise
        hint = f"; continue from the last checkpoint with: {resume_command(argv)}" if args.command == "train" else ""
        print(f"eggroll-llm {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # our input errors are ValueError subclasses; OSError for files
        if debug:
            raise
        print(f"eggroll-llm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a multi-process run that lost a process: one line here, the cause in its log
        from .distributed import DistributedError, exit_if_group_broken

        if not isinstance(err, DistributedError) or debug:
            raise
        print(f"eggroll-llm {args.command}: error: {err}", file=sys.stderr)
        exit_if_group_broken(1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
