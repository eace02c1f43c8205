"""Train the embedded tiny-arith base model shipped in eggroll_llm/assets/tiny-arith (docs/design.md §5).

What: a byte-level BPE tokenizer (digits split one per token, so arithmetic is learnable) with a chat template, and a
small Qwen2-architecture causal LM (head_dim 32, as vLLM's CPU attention needs ≥ 32) trained by supervised learning
on tiny-arith train problems, prompt formatted exactly as `eggroll-llm eval` and the trainer format it.

The training answers mix two styles: worked solutions ('15-4=11', '11*3=33', '#### 33') and, for a seeded
`--direct-fraction` of the problems chosen regardless of the problem, a careless answer without working that stops
after the first operation ('#### 11': right on 1-step problems, wrong on 2-step ones). Greedy decoding then answers
without working almost always, although the worked style it also learned is right more often (60% against 42.5% on
validation[:200]). That is the weakness reward-driven fine-tuning fixes in real LLMs (preferring to show the work),
and here it is one low-dimensional choice, the first answer token, that a correctness reward reveals. A model
trained on worked solutions only (`--direct-fraction 0`) errs only by arithmetic slips that neither EGGROLL nor
GRPO fixed in ten minutes (README, "Results").

Why stop early: the model must leave headroom (greedy accuracy of roughly 15-60% on the test split) so that
fine-tuning visibly helps; `--steps` is the knob, and the script prints the test accuracy it reached.

Reproducible from `--seed` on CPU with the defaults (1 thread; about 25 minutes on one core). The learning-rate
schedule does not depend on `--steps` (see `--decay-steps`), so `--eval-every 100` with a long `--steps` saves the
exact models shorter runs end with; the shipped one is step 1300 of such a run. Run:
    python scripts/train_tiny_model.py --out eggroll_llm/assets/tiny-arith
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from eggroll_llm import tiny_arith
from eggroll_llm.data import format_prompt
from eggroll_llm.tiny_arith import SHIPPED_MODEL, sft_answer

SPECIAL = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
                                   model_max_length=512, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_examples(tokenizer, rows, direct_fraction: float, seed: int) -> list[tuple[list[int], int]]:
    """(prompt + answer + eos token ids, prompt length) per row; the loss covers the answer and eos only.

    A seeded `direct_fraction` of the rows, chosen independently of the problem, get the careless answer instead.
    """
    rng = random.Random(f"direct/{seed}")
    out = []
    for row in rows:
        prompt = tokenizer(format_prompt(tokenizer, row["question"]), add_special_tokens=False)["input_ids"]
        text = sft_answer(row, direct=rng.random() < direct_fraction)
        answer = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((prompt + answer, len(prompt)))
    return out


def batches(examples, batch_size: int, pad_id: int, generator: torch.Generator):
    while True:
        for idx in torch.randperm(len(examples), generator=generator).split(batch_size):
            chunk = [examples[i] for i in idx.tolist()]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (ids, prompt_len) in enumerate(chunk):  # right padding for training
                input_ids[row, :len(ids)] = torch.tensor(ids)
                labels[row, prompt_len:len(ids)] = torch.tensor(ids[prompt_len:])
                mask[row, :len(ids)] = 1
            yield input_ids, labels, mask


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows, max_new_tokens: int = 48) -> float:
    from eggroll_llm.engine import SamplingParams
    from eggroll_llm.engine.hf import HFEngine
    from eggroll_llm.rewards import gsm8k_reward

    model.eval()
    prompts = [format_prompt(tokenizer, r["question"]) for r in rows]
    completions = HFEngine(model, tokenizer).generate(prompts, SamplingParams(max_new_tokens=max_new_tokens))
    scores = gsm8k_reward(prompts, [c.text for c in completions], [r["answer"] for r in rows])
    model.train()
    return sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model and tokenizer to")
    parser.add_argument("--seed", type=int, default=SHIPPED_MODEL["seed"], help="fixes data, init and batch order")
    parser.add_argument("--steps", type=int, default=1300, help="optimizer steps (the accuracy knob; 1300 -> the "
                        "shipped model, 40.4%% on the test split)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--decay-steps", type=int, default=1500,
                        help="length of the cosine decay; independent of --steps, so a longer run passes through "
                             "exactly the model a shorter one ends with")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="also score --eval-examples test problems and save a snapshot to OUT/step-N every N "
                             "steps (0: only at the end); picks --steps without retraining")
    parser.add_argument("--direct-fraction", type=float, default=SHIPPED_MODEL["direct_fraction"],
                        help="share of training answers that skip the worked steps (careless: '#### ' + the first "
                             "step's result); 0 trains on worked solutions only")
    parser.add_argument("--train-examples", type=int, default=SHIPPED_MODEL["train_examples"])
    parser.add_argument("--eval-examples", type=int, default=500, help="test problems scored at the end")
    parser.add_argument("--vocab-size", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps results bit-reproducible)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train_rows = tiny_arith.make_split("train", args.train_examples, seed=args.seed)
    tokenizer = build_tokenizer([r["question"] + "\n" + r["answer"] for r in train_rows], args.vocab_size)
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
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tokenizer)}")

    examples = encode_examples(tokenizer, train_rows, args.direct_fraction, args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    decay = args.decay_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(  # 100 warm-up steps, then cosine to 0 at --decay-steps
        optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, decay) / decay)))
    data = batches(examples, args.batch_size, tokenizer.pad_token_id, torch.Generator().manual_seed(args.seed))
    test_rows = tiny_arith.make_split("test", args.eval_examples, seed=0)
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
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            save(model, tokenizer, test_rows, args.out / f"step-{step}")

    save(model, tokenizer, test_rows, args.out)


def save(model, tokenizer, test_rows, out: Path) -> None:
    accuracy = greedy_accuracy(model, tokenizer, test_rows)
    print(f"greedy accuracy on {len(test_rows)} tiny-arith test problems: {accuracy:.3f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    print(f"saved to {out}", flush=True)


if __name__ == "__main__":
    main()
