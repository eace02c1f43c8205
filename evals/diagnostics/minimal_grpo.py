"""A minimal on-policy GRPO without TRL, to tell a TRL-integration bug from the task's own behaviour.

The usual minimal setting: 8 prompts × 8 sampled completions per update, group-normalised advantages, AdamW, full
fine-tuning; held-out greedy accuracy on validation[:200] every 10 updates
(evals/results/tiny-arith-probes-1to2-steps.json, "hand_written_grpo").

    python evals/diagnostics/minimal_grpo.py --model tiny-arith --lr 3e-4 --steps 40
"""

from __future__ import annotations

import argparse

import torch

from eggroll_llm.data import build_prompts, load_task
from eggroll_llm.engine import SamplingParams
from eggroll_llm.engine.hf import HFEngine
from eggroll_llm.evaluate import held_out_metrics
from eggroll_llm.models import load_model, load_tokenizer
from eggroll_llm.rewards import gsm8k_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-arith")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device="cpu").requires_grad_(True)
    train, held = load_task("tiny-arith", "train", seed=0), load_task("tiny-arith", "validation", limit=200)
    prompts = build_prompts(tokenizer, train, seed=0, task="tiny-arith")
    held_prompts = build_prompts(tokenizer, held, seed=0, task="tiny-arith")
    engine = HFEngine(model, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def accuracy() -> float:
        return held_out_metrics(engine, held_prompts, list(held["answer"]),
                                max_new_tokens=args.max_new_tokens)["eval_accuracy"]

    print(f"step 0 held-out {accuracy():.3f}", flush=True)
    P, G = args.prompts, args.generations
    for step in range(args.steps):
        rows = [step * P + i for i in range(P) for _ in range(G)]
        batch = [prompts[i] for i in rows]
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=step)
        completions = engine.generate(batch, sampling)
        rewards = torch.tensor(gsm8k_reward(batch, [c.text for c in completions], [train[i]["answer"] for i in rows]))
        groups = rewards.view(P, G)
        advantages = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).flatten()
        model.train()
        optimizer.zero_grad()
        for k, completion in enumerate(completions):  # one sequence at a time: no padding to get wrong
            if advantages[k] == 0:
                continue
            prompt_ids = tokenizer(batch[k], add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + list(completion.token_ids)])
            logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float() / args.temperature
            logps = torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt_ids):, None]).squeeze(1)
            (-(advantages[k] * logps).sum() / (P * G * 16)).backward()  # ~16 tokens per completion
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.eval()
        if (step + 1) % 10 == 0:
            print(f"step {step + 1} sampled reward {rewards.mean():.3f} held-out {accuracy():.3f}", flush=True)


if __name__ == "__main__":
    main()
