"""How much signal does one EGGROLL step carry? (evals/results/tiny-arith-probes-1to2-steps.json, "gradient_signal")

Draws K independent ES gradient estimates at the base model (different prompts and noise each, dense adapter so g
is exact) and prints their mean pairwise cosine (the part they share is the true ascent direction) and each one's
cosine with the supervised direction, -∇ NLL of the gold answers of 512 other training problems.

    python evals/diagnostics/es_signal.py --model tiny-arith --members 32 --prompts 8 --sigma 0.02 --estimates 6
"""

from __future__ import annotations

import argparse
import itertools

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


def supervised_direction(model, tokenizer, prompts, answers) -> dict[str, torch.Tensor]:
    """-∇ (mean NLL of answer + eos tokens) for every linear weight inside the blocks."""
    weights = {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    model.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    for start in range(0, len(prompts), 64):
        chunk = range(start, min(start + 64, len(prompts)))
        ids = [tokenizer(prompts[k], add_special_tokens=False)["input_ids"] for k in chunk]
        full = [p + tokenizer(answers[k], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for p, k in zip(ids, chunk)]
        width = max(map(len, full))
        input_ids = torch.full((len(full), width), tokenizer.pad_token_id)
        labels = torch.full((len(full), width), -100)
        mask = torch.zeros((len(full), width), dtype=torch.long)
        for row, (seq, prompt) in enumerate(zip(full, ids)):  # right padding; loss on the answer only
            input_ids[row, :len(seq)] = torch.tensor(seq)
            labels[row, len(prompt):len(seq)] = torch.tensor(seq[len(prompt):])
            mask[row, :len(seq)] = 1
        model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
    out = {n: -w.grad.detach().clone() for n, w in weights.items()}
    model.requires_grad_(False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-arith")
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8, help="prompts every member answers")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--estimates", type=int, default=6)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(1)

    tokenizer, model = load_tokenizer(args.model), load_model(args.model, device="cpu")
    train = load_task("tiny-arith", "train", seed=0)
    prompts, answers = build_prompts(tokenizer, train, seed=0, task="tiny-arith"), list(train["answer"])
    sft = supervised_direction(model, tokenizer, prompts[10_000:10_512], answers[10_000:10_512])

    population = Population(population_size=args.members, sigma=args.sigma, rank=1, antithetic=True, seed=1)
    layers = attach_eggroll(model, population, None, "full")
    updater = ESUpdater(layers, population, lr=1.0)
    engine = HFEngine(model, tokenizer, population=population)
    members, slots = population_layout(args.members, args.members, args.prompts)
    estimates = []
    for k in range(args.estimates):
        rows = [k * args.prompts + s for s in slots.tolist()]
        population.set_step(k)
        for layer in layers.values():
            layer.delta.zero_()  # every estimate is taken at the base model
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=k)
        completions = engine.generate([prompts[i] for i in rows], sampling, member_ids=members.tolist())
        scores = torch.tensor(gsm8k_reward(None, [c.text for c in completions], [answers[i] for i in rows]))
        updater.step(shape_fitness(scores.view(args.members, -1), slots.view(args.members, -1), "group_centered"))
        estimates.append(torch.cat([layers[n].delta.flatten() for n in sorted(layers)]))
        print(f"estimate {k}: member reward {scores.mean():.3f}", flush=True)

    reference = torch.cat([sft[n].flatten() for n in sorted(layers)])
    cos = torch.nn.functional.cosine_similarity
    pairwise = [float(cos(a, b, dim=0)) for a, b in itertools.combinations(estimates, 2)]
    with_sft = [float(cos(g, reference, dim=0)) for g in estimates]
    print(f"mean pairwise cosine {sum(pairwise) / len(pairwise):.4f}; cosine with the supervised direction "
          f"{[round(c, 4) for c in with_sft]} (mean {sum(with_sft) / len(with_sft):.4f})")


if __name__ == "__main__":
    main()
