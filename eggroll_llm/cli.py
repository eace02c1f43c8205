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
from pathlib import Path

from .bench import add_bench_parser
from .compare import add_compare_parser
from .config import DRY_RUN_MODES
from .export import add_export_parser
from .interrupt import Interrupted
from .io import atomic_write_text
from .push import add_push_parser


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="greedy accuracy of a model (and optional adapter) on a task split",
                              description="Batched greedy generation on a held-out split; prints strict (#### N) and "
                                          "flexible (last number) accuracy.")
    p.add_argument("--model", default="tiny-arith", help="embedded name (tiny-arith), local folder or Hub id")
    p.add_argument("--adapter", help="PEFT LoRA adapter folder to apply (e.g. a run's adapter/ or an export)")
    p.add_argument("--task", default="tiny-arith", help="tiny-arith or gsm8k")
    p.add_argument("--data", help="local jsonl/parquet file or folder (gsm8k); default: the Hub dataset openai/gsm8k")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--limit", type=int, help="evaluate the first N examples only")
    p.add_argument("--few-shot", type=int, default=0, help="worked train examples shown before each question")
    p.add_argument("--batch-size", type=int, default=64, help="prompts generated together")
    p.add_argument("--max-new-tokens", type=int, help="default: 64 for tiny-arith, 512 for gsm8k")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--out", type=Path, help="write per-example JSONL (prompt, completion, extracted, gold, correct)")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from .data import build_prompts, load_task
    from .engine.hf import HFEngine
    from .evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate
    from .models import default_device, load_model, load_tokenizer

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    dataset = load_task(args.task, args.split, args.data, limit=args.limit)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_model(args.model, dtype=args.dtype, device=default_device(args.device), adapter=args.adapter,
                       trust_remote_code=args.trust_remote_code)
    prompts = build_prompts(tokenizer, dataset, few_shot=args.few_shot, task=args.task, data_path=args.data)
    max_new_tokens = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(args.task, 256)
    result = evaluate(HFEngine(model, tokenizer), prompts, list(dataset["answer"]), max_new_tokens=max_new_tokens,
                      batch_size=args.batch_size, progress=not args.json)
    if args.out:
        atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in result.records))
    summary = {"model": args.model, "adapter": args.adapter, "task": args.task, "split": args.split,
               **result.summary()}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.task}/{args.split}: accuracy {result.accuracy:.4f} (flexible), "
              f"strict {result.strict_accuracy:.4f}, n={result.n}")
    return 0


def _add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="run a recipe (method: eggroll or grpo) and write a run directory",
                              description="Train from a YAML recipe. Any recipe key can be overridden: "
                                          "--es.sigma 0.002 --output_dir runs/x. `eggroll-llm train --list-keys` "
                                          "prints every key with its default and help. Check a recipe end to end "
                                          "without weights or a GPU: eggroll-llm train "
                                          "recipes/gsm8k-qwen2.5-0.5b-eggroll.yaml --dry_run tiny "
                                          "--data.data_path DIR_WITH_GSM8K_JSONL")
    p.add_argument("recipe", nargs="?", type=Path, help="recipe YAML (see recipes/)")
    p.add_argument("--dry_run", "--dry-run", nargs="?", const="full", choices=DRY_RUN_MODES, metavar="full|tiny",
                   help="one step of a random-init model of the recipe's architecture (no weights downloaded for the "
                        "recipes' models), a 2-example evaluation, output to a new temporary folder unless "
                        "--output_dir is given; 'tiny' scales the model down (2 layers, width 64) to fit a CPU; other "
                        "overrides still apply (--es.population_size 4 --es.members_per_prompt 2 "
                        "--generation.max_new_tokens 8 make it take seconds)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl)")
    p.add_argument("--list-keys", action="store_true", help="print every recipe key with its default and help")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from .config import describe, dry_run_overrides, load_config, parse_overrides

    if args.list_keys:
        for key, text, default in describe():
            print(f"{key:32} {default!r:>16}  {text}")
        return 0
    if args.recipe is None:
        raise ValueError("train needs a recipe YAML, e.g. eggroll-llm train recipes/tiny-arith-eggroll.yaml")
    overrides = parse_overrides(args.overrides)
    if args.dry_run:
        overrides = dry_run_overrides(args.dry_run, overrides)
    if args.no_progress:
        overrides["disable_tqdm"] = True
    config = load_config(args.recipe, overrides)
    from .distributed import shutdown
    from .recipe import run_recipe

    run_dir = run_recipe(config, resume=args.resume)
    shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        adapter = config.es.adapter_rank is not None if config.method == "eggroll" else config.grpo.lora_rank
        kept = "adapter/" if adapter else "model/"
        print(f"run written to {run_dir} (metrics.jsonl, eval/, checkpoints/, {kept})")
    return 0


def _add_drift(subparsers) -> None:
    from .drift import add_drift_parser  # no torch at import: --help stays fast

    add_drift_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eggroll-llm", description="EGGROLL fine-tuning of causal LMs, and GRPO "
                                     "baselines to compare against. Errors print one line; --debug (anywhere on "
                                     "the command line) shows the traceback instead.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_eval(subparsers)
    _add_train(subparsers)
    add_compare_parser(subparsers)
    _add_drift(subparsers)
    add_bench_parser(subparsers)
    add_export_parser(subparsers)
    add_push_parser(subparsers)
    return parser


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted `train` run: the same one, with --resume."""
    return shlex.join(["eggroll-llm", *[a for a in argv if a != "--resume"], "--resume"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("EGGROLL_DEBUG"))
    argv = [a for a in argv if a != "--debug"]
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command != "train":
        build_parser().parse_args(argv)  # argparse's own error for unknown options
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
