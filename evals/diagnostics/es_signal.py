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
from eggroll_llm.es import EggrollES, population_layout
from eggroll_llm.models import load_model, load_tokenizer
from eggroll_llm.rewards import gsm8k_reward


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


def base_estimates(model, tokenizer, prompts, answers, *, target, members: int, per_member: int, sigma: float,
                   temperature: float, max_new_tokens: int, steps: int, first_row: int = 0, seed_offset: int = 0):
    """ES gradient estimates at the base model, one per step with fresh prompts and noise (rank-1 antithetic members,
    all answering the same `per_member` train prompts, rows first_row + step·per_member onward). Wraps `model`'s
    target layers (None: every linear in the blocks) in EGGROLL layers with a dense delta, so each estimate is exact.

    Yields (completion texts, scores [members, per_member], estimate: the delta of every layer, flattened in name
    order)."""
    es = EggrollES(model, population_size=members, sigma=sigma, lr=1.0, rank=1, adapter_rank="full", seed=1,
                   target_modules=target)
    layers = es.layers
    engine = HFEngine(model, tokenizer, population=es.population)
    member_ids, slots = population_layout(members, members, per_member)
    for k in range(steps):
        rows = [first_row + k * per_member + s for s in slots.tolist()]
        es.ask()  # step k
        for layer in layers.values():
            layer.delta.zero_()  # every estimate is taken at the base model
        sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed_offset + k)
        texts = [c.text for c in engine.generate([prompts[i] for i in rows], sampling, member_ids=member_ids.tolist())]
        scores = torch.tensor(gsm8k_reward(None, texts, [answers[i] for i in rows])).view(members, -1)
        es.tell(scores, slots.view(members, -1))
        yield texts, scores, torch.cat([layers[n].delta.flatten() for n in sorted(layers)])


def mean_pairwise_cosine(estimates: list[torch.Tensor]) -> float:
    """Mean cosine over all pairs of estimates: the part they share is the true ascent direction."""
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(estimates, 2)]
    return sum(cos) / max(len(cos), 1)


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

    estimates = []
    for k, (_, scores, estimate) in enumerate(base_estimates(
            model, tokenizer, prompts, answers, target=None, members=args.members, per_member=args.prompts,
            sigma=args.sigma, temperature=args.temperature, max_new_tokens=args.max_new_tokens, steps=args.estimates)):
        estimates.append(estimate)
        print(f"estimate {k}: member reward {scores.mean():.3f}", flush=True)

    reference = torch.cat([sft[n].flatten() for n in sorted(sft)])  # the same layers, in the estimates' order
    with_sft = [float(torch.nn.functional.cosine_similarity(g, reference, dim=0)) for g in estimates]
    print(f"mean pairwise cosine {mean_pairwise_cosine(estimates):.4f}; cosine with the supervised direction "
          f"{[round(c, 4) for c in with_sft]} (mean {sum(with_sft) / len(with_sft):.4f})")


if __name__ == "__main__":
    main()
