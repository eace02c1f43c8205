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
import itertools
import json

import torch

from eggroll_llm.data import build_prompts, load_task
from eggroll_llm.engine import SamplingParams
from eggroll_llm.engine.hf import HFEngine
from eggroll_llm.es import ESUpdater
from eggroll_llm.fitness import shape_fitness
from eggroll_llm.models import load_model, load_tokenizer
from eggroll_llm.perturbed import Population, attach_eggroll
from eggroll_llm.rewards import gsm8k_reward
from eggroll_llm.trainer import population_layout


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
    population = Population(population_size=args.members, sigma=args.sigma, rank=1, antithetic=True, seed=1)
    layers = attach_eggroll(model, population, args.target, "full")
    updater = ESUpdater(layers, population, lr=1.0)
    engine = HFEngine(model, tokenizer, population=population)
    members, slots = population_layout(args.members, args.members, args.prompts)
    correlations, estimates = [], []
    for step in range(args.steps):
        population.set_step(step)
        rows = [args.first_prompt + args.prompts * step + s for s in slots.tolist()]
        sampling = SamplingParams(max_new_tokens=48, temperature=args.temperature, seed=3 + step)
        texts = [c.text for c in engine.generate([prompts[i] for i in rows], sampling, member_ids=members.tolist())]
        scores = torch.tensor(gsm8k_reward(None, texts, [answers[i] for i in rows])).view(args.members, -1)
        worked = torch.tensor([not t.lstrip().startswith("####") for t in texts], dtype=torch.float32)
        worked = worked.view(args.members, -1)
        for layer in layers.values():
            layer.delta.zero_()  # every estimate is taken at the base model
        updater.step(shape_fitness(scores, slots.view(args.members, -1), "group_centered"))
        estimates.append(torch.cat([layer.delta.flatten() for layer in layers.values()]))
        correlations.append(float(torch.corrcoef(torch.stack([worked.mean(1), scores.mean(1)]))[0, 1]))
        print(json.dumps({"step": step, "worked": round(float(worked.mean()), 3),
                          "member_reward": round(float(scores.mean()), 3),
                          "corr_worked_reward": round(correlations[-1], 3)}), flush=True)
    cosines = [float(torch.nn.functional.cosine_similarity(a, b, dim=0))
               for a, b in itertools.combinations(estimates, 2)]
    print(json.dumps({"target": args.target or "blocks", "sigma": args.sigma, "temperature": args.temperature,
                      "mean_corr_worked_reward": round(sum(correlations) / len(correlations), 3),
                      "mean_pairwise_cosine": round(sum(cosines) / max(len(cosines), 1), 4)}))


if __name__ == "__main__":
    main()
