"""Train the embedded tiny-countdown base model shipped in eggroll_llm/assets/tiny-countdown (docs/results.md).

What: the tokenizer and model recipe of scripts/train_tiny_model.py (byte-level BPE, digits one per token, chat
template; Qwen2 architecture, head_dim 32), trained by supervised learning on Countdown problems of the project's
generator (eggroll_llm/countdown.py, 3-4 numbers in [1, 100], targets in [1, 100]), each prompt formatted exactly as
`eggroll-llm eval --task countdown` and the trainers format it (data.task_dataset).

The training answer is a short worked search, then the expression in <answer> tags:
    <think>91 90 82 6. 91>75 -90=1, 1<75 +82=83, 83>75 -6=77</think>
    <answer>91-90+82-6</answer>
It sorts the numbers, starts from the largest and takes the others in decreasing order, subtracting while the
running value is above the target and adding while it is below, and stops early once it hits the target
(`worked_search`, in eggroll_llm/tiny_countdown.py, which `eggroll-llm drift` also reads). This
greedy search solves 63% of the test split; it is the careful mode. For a seeded `--careless-fraction` of the
problems, chosen regardless of the problem, the answer is careless: it stops after at most two operations
(`careless=True`), one operation short on 4-number problems and the same as the careful answer on 3-number ones.
Greedy decoding then stops short on 4-number problems, although the model also learned to go on; the decision is
one token (',' or '</think>' after the second operation) that a correctness reward reveals, the counterpart of
tiny-arith's careless answers (scripts/train_tiny_model.py).

Held-out text of the same distribution (careless share included) on problems training never sees is
`eggroll_llm.tiny_countdown.pretraining_held_out`, the model's default off-task set for `eggroll-llm drift`.

Reproducible from `--seed` on CPU with the defaults (1 thread). Run:
    OMP_NUM_THREADS=1 python scripts/train_tiny_countdown.py --out eggroll_llm/assets/tiny-countdown
    python scripts/train_tiny_countdown.py --score eggroll_llm/assets/tiny-countdown --eval-examples 500
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_tiny_model import batches, build_tokenizer  # noqa: E402  (the sibling script: same tokenizer, same batches)

from eggroll_llm import countdown  # noqa: E402
from eggroll_llm.data import render_prompt  # noqa: E402
from eggroll_llm.tiny_countdown import CARELESS_FRACTION, careless_flags, worked_search  # noqa: E402


def prompt_text(tokenizer, row: dict) -> str:
    """The prompt as `eggroll-llm eval --task countdown` and the trainers render it (data.task_dataset)."""
    return render_prompt(tokenizer, [{"role": "user", "content": countdown.countdown_prompt(row["nums"],
                                                                                            row["target"])}])


def encode_examples(tokenizer, rows, careless_fraction: float, seed: int) -> list[tuple[list[int], int]]:
    """(prompt + answer + eos token ids, prompt length) per row; the loss covers the answer and eos only."""
    out = []
    for row, careless in zip(rows, careless_flags(len(rows), careless_fraction, seed)):
        prompt = tokenizer(prompt_text(tokenizer, row), add_special_tokens=False)["input_ids"]
        answer = tokenizer(worked_search(row["nums"], row["target"], careless),
                           add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((prompt + answer, len(prompt)))
    return out


@torch.no_grad()
def success_rates(model, tokenizer, rows, max_new_tokens: int = 128) -> tuple[float, float]:
    """(greedy success, success when forced into the careful mode) on `rows`.

    Forced: where a greedy answer closed </think> while numbers were left and the target not reached, the text up
    to there continues with ', ' instead and decodes greedily again (the careful mode's next step)."""
    from eggroll_llm.engine import SamplingParams
    from eggroll_llm.engine.hf import HFEngine

    model.eval()
    engine, sampling = HFEngine(model, tokenizer), SamplingParams(max_new_tokens=max_new_tokens)
    prompts = [prompt_text(tokenizer, r) for r in rows]
    texts = [c.text for c in engine.generate(prompts, sampling)]
    forced = list(texts)
    short = [i for i, text in enumerate(texts) if _stopped_short(text, rows[i])]
    if short:
        heads = [texts[i].split("</think>", 1)[0] + ", " for i in short]
        tails = engine.generate([prompts[i] + head for i, head in zip(short, heads)], sampling)
        for i, head, tail in zip(short, heads, tails):
            forced[i] = head + tail.text
    model.train()
    score = [countdown.is_correct(t, r["nums"], r["target"]) for t, r in zip(texts, rows)]
    score_forced = [countdown.is_correct(t, r["nums"], r["target"]) for t, r in zip(forced, rows)]
    return sum(score) / len(rows), sum(score_forced) / len(rows)


def _stopped_short(text: str, row: dict) -> bool:
    """A worked search closed after fewer operations than the numbers allow, off the target."""
    if "</think>" not in text:
        return False
    steps = text.split("</think>", 1)[0].count("=")
    last = text.split("</think>", 1)[0].rsplit("=", 1)[-1]
    return steps < len(row["nums"]) - 1 and last.strip() != str(row["target"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder to write the model and tokenizer to")
    parser.add_argument("--score", type=Path, metavar="MODEL_DIR",
                        help="train nothing: print the greedy and forced-careful success of a saved model on the "
                             "first --eval-examples problems of --split")
    parser.add_argument("--split", default="test", help="split --score reads (test or validation)")
    parser.add_argument("--seed", type=int, default=0, help="fixes data, init and batch order")
    parser.add_argument("--steps", type=int, default=700, help="optimizer steps (700 -> the shipped model)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--decay-steps", type=int, default=700,
                        help="length of the cosine decay; independent of --steps (see scripts/train_tiny_model.py)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also score the test problems and save a snapshot to OUT/step-N every N steps")
    parser.add_argument("--careless-fraction", type=float, default=CARELESS_FRACTION,
                        help="share of training answers that stop after at most two operations")
    parser.add_argument("--train-examples", type=int, default=20000)
    parser.add_argument("--eval-examples", type=int, default=200, help="test problems scored at the end")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps results bit-reproducible)")
    args = parser.parse_args()
    if args.score is not None:
        from eggroll_llm.models import load_model, load_tokenizer

        rows = countdown.make_split(args.split, args.eval_examples, seed=0)
        greedy, careful = success_rates(load_model(str(args.score)), load_tokenizer(str(args.score)), rows)
        print(f"countdown {args.split}[:{len(rows)}]: greedy success {greedy:.3f}, forced careful {careful:.3f}")
        return
    if args.out is None:
        parser.error("--out is required to train (or --score MODEL_DIR)")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_rows = countdown.make_split("train", args.train_examples, seed=args.seed)
    flags = careless_flags(len(train_rows), args.careless_fraction, args.seed)
    corpus = [countdown.countdown_prompt(r["nums"], r["target"]) + "\n" + worked_search(r["nums"], r["target"], c)
              for r, c in zip(train_rows, flags)]
    tokenizer = build_tokenizer(corpus, args.vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 32,
        num_key_value_heads=max(1, args.hidden // 64),
        head_dim=32, max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    examples = encode_examples(tokenizer, train_rows, args.careless_fraction, args.seed)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
          f"longest example {max(len(ids) for ids, _ in examples)} tokens", flush=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    decay = args.decay_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(  # 100 warm-up steps, then cosine to 0 at --decay-steps
        optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, decay) / decay)))
    data = batches(examples, args.batch_size, tokenizer.pad_token_id, torch.Generator().manual_seed(args.seed))
    test_rows = countdown.make_split("test", args.eval_examples, seed=0)
    model.train()
    start = time.time()
    for step in range(1, args.steps + 1):
        input_ids, labels, mask = next(data)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            save(model, tokenizer, test_rows, args.out / f"step-{step}")
    save(model, tokenizer, test_rows, args.out)


def save(model, tokenizer, test_rows, out: Path) -> None:
    greedy, careful = success_rates(model, tokenizer, test_rows)
    print(f"countdown test[:{len(test_rows)}]: greedy success {greedy:.3f}, forced careful {careful:.3f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    print(f"saved to {out}", flush=True)


if __name__ == "__main__":
    main()
