"""Countdown with EGGROLL through the Python API, on the embedded tiny model: under a minute on a laptop CPU.

Countdown (TinyZero's task, the headline benchmark of "Evolution Strategies at Scale", arXiv 2509.24372): given 3-4
numbers and a target, answer an arithmetic expression that reaches the target, using each number at most once, in
<answer> tags. The embedded model was trained on tiny-arith word problems, not on Countdown, so it scores ~0 here and
this script shows the wiring, not learning: datasets with extra columns (`nums`, `target`) that reach every reward,
chat-message prompts, a custom reward beside the built-in ones, and the run directory it all writes. For a real
model, see recipes/countdown-qwen2.5-0.5b-eggroll.yaml (and its GRPO twin).

    python examples/countdown.py                       # 10 steps, runs/countdown-example
    python examples/countdown.py --steps 2 --output-dir /tmp/countdown
    python examples/countdown.py --steps 20 --resume   # continue the run in runs/countdown-example to step 20
"""

from __future__ import annotations

import argparse

import datasets

from eggroll_llm import EggrollConfig, EggrollTrainer
from eggroll_llm.countdown import countdown_prompt, extract_expression, make_split, parse_expression


def closeness_reward(prompts, completions, nums, target, **kwargs) -> list[float | None]:
    """A custom reward, TRL's signature: partial credit for getting near the target, 1 - |value - target| / target
    (clipped at 0), for any parsable <answer> expression; None (scored 0) where there is none."""
    scores = []
    for completion, goal in zip(completions, target):
        text = completion[-1]["content"]  # chat prompts give chat completions: [{"role": "assistant", ...}]
        expression = extract_expression(text)
        parsed = parse_expression(expression) if expression is not None else None
        if parsed is None or parsed.value is None:
            scores.append(None)
        else:
            scores.append(max(0.0, 1.0 - abs(float(parsed.value) - goal) / goal))
    return scores


def as_chat(row: dict) -> dict:
    return {"prompt": [{"role": "user", "content": countdown_prompt(row["nums"], row["target"])}]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="ES updates (default 10)")
    parser.add_argument("--output-dir", default="runs/countdown-example", help="the run directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    args = parser.parse_args(argv)

    train = datasets.Dataset.from_list(make_split("train", 2000, seed=args.seed)).map(as_chat)
    held_out = datasets.Dataset.from_list(make_split("validation", 32)).map(as_chat)
    config = EggrollConfig(
        output_dir=args.output_dir, seed=args.seed, max_steps=args.steps, eval_every=10, save_every=10,
        reward_weights=[1.0, 0.1, 0.1],
        generation={"max_new_tokens": 48},
        es={"population_size": 16, "members_per_prompt": 16, "prompts_per_member": 4, "sigma": 0.05, "lr": 0.05,
            "adapter_rank": 8},
    )
    trainer = EggrollTrainer(model="tiny-arith", reward_funcs=["countdown", "countdown_format", closeness_reward],
                             train_dataset=train, eval_dataset=held_out, args=config)
    try:
        output = trainer.train(resume_from_checkpoint=args.resume)  # a TrainOutput, as TRL's train()
    except FileExistsError as err:  # the folder holds a run: say so in one line (the fix: --resume)
        raise SystemExit(f"countdown.py: error: {err}") from None
    print(f"step {output.global_step}: eval_reward {output.metrics['eval_reward']:.3f}; run written to "
          f"{output.run_dir}: metrics.jsonl (eval_reward, eval_reward/<function>), eval/, checkpoints/, adapter/")


if __name__ == "__main__":
    main()
