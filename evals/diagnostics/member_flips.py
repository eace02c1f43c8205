"""Does the fitness see the answer style? (tiny-arith-probes-careless-model.json, "member_flips_by_target")

At the shipped model (no adapter), 32 rank-1 antithetic members answer 16 train prompts per step, greedy by default.
For each step this prints the share of rows answered with working (the completion does not start with '####'),
the mean member reward, and the correlation over members of their worked share with their mean reward; at the end,
that correlation averaged over the steps and the mean cosine between the steps' ES gradient estimates (dense delta,
each taken at the base model: the part they share is the ascent direction).

    python evals/diagnostics/member_flips.py --target lm_head --sigma 0.05
    python evals/diagnostics/member_flips.py --sigma 0.02          # every linear layer in the blocks
"""

from __future__ import annotations

import argparse
import json

import torch
from es_signal import base_estimates, mean_pairwise_cosine  # this folder: run as python evals/diagnostics/...

from eggroll_llm.data import build_prompts, load_task
from eggroll_llm.models import load_model, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-arith")
    parser.add_argument("--target", default=None, help="es.target_modules (default: every linear in the blocks)")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=16, help="prompts every member answers per step")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--first-prompt", type=int, default=1000, help="train row of the first prompt")
    args = parser.parse_args()
    torch.set_num_threads(1)

    tokenizer, model = load_tokenizer(args.model), load_model(args.model, device="cpu")
    train = load_task("tiny-arith", "train", seed=0)
    prompts, answers = build_prompts(tokenizer, train, seed=0, task="tiny-arith"), list(train["answer"])
    correlations, estimates = [], []
    for step, (texts, scores, estimate) in enumerate(base_estimates(
            model, tokenizer, prompts, answers, target=args.target, members=args.members, per_member=args.prompts,
            sigma=args.sigma, temperature=args.temperature, max_new_tokens=48, steps=args.steps,
            first_row=args.first_prompt, seed_offset=3)):
        worked = torch.tensor([not t.lstrip().startswith("####") for t in texts], dtype=torch.float32)
        worked = worked.view(args.members, -1)
        estimates.append(estimate)
        correlations.append(float(torch.corrcoef(torch.stack([worked.mean(1), scores.mean(1)]))[0, 1]))
        print(json.dumps({"step": step, "worked": round(float(worked.mean()), 3),
                          "member_reward": round(float(scores.mean()), 3),
                          "corr_worked_reward": round(correlations[-1], 3)}), flush=True)
    print(json.dumps({"target": args.target or "blocks", "sigma": args.sigma, "temperature": args.temperature,
                      "mean_corr_worked_reward": round(sum(correlations) / len(correlations), 3),
                      "mean_pairwise_cosine": round(mean_pairwise_cosine(estimates), 4)}))


if __name__ == "__main__":
    main()
