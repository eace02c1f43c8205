"""The EGGROLL trainer for causal LMs: prompts → population generation → rewards → fitness → fold → log/eval/save.

DESIGN.md §1: every step, N members (antithetic pairs share low-rank noise of opposite sign) answer prompts under
their own perturbation in ONE batched generation; TRL-style reward functions score the completions; fitness is
centred per prompt (paper §6.3) and the fitness-weighted noise is folded into the fp32 adapters. Layout: members
come in groups of `members_per_prompt`; each group answers the same `prompts_per_member` prompts, so fitness
compares members on equal questions. Launched on several processes (distributed.py), each generates and scores
its shard of the rows and only the scores are exchanged; the main process logs, checkpoints and exports.

    eggroll-llm train recipes/tiny-arith-eggroll.yaml
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from .checkpoint import checkpoint_step, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig, to_dict
from .data import build_prompts, load_task
from .distributed import init_processes, shard_rows, shard_seed
from .engine import SamplingParams, get_engine
from .es import ESUpdater
from .evaluate import held_out_metrics
from .export import base_model_id, export_peft_adapter, load_peft_adapter
from .fitness import check_scores, shape_fitness
from .io import atomic_write_text
from .models import default_device, load_model, load_tokenizer, random_init_model
from .perturbed import Population, attach_eggroll
from .rewards import get_reward_function
from .runlog import MetricsLog, RunTotals, peak_memory_mb


def prompt_indices(num_examples: int, step: int, count: int, seed: int) -> list[int]:
    """The `count` training examples of `step`: consecutive slices of a fresh seeded permutation per epoch.

    A pure function of (step, seed), so a resumed run sees exactly the prompts an uninterrupted one would.
    """
    out, orders = [], {}
    for position in range(step * count, (step + 1) * count):
        epoch, offset = divmod(position, num_examples)
        if epoch not in orders:  # one permutation per epoch touched, not one per prompt
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            orders[epoch] = torch.randperm(num_examples, generator=generator)
        out.append(int(orders[epoch][offset]))
    return out


def population_layout(population_size: int, members_per_prompt: int, prompts_per_member: int):
    """Member id and prompt slot of every generated row, member-major: ([N * J], [N * J]).

    Group g = members [g·M, (g+1)·M) answers prompt slots [g·J, (g+1)·J); antithetic partners (2k, 2k+1) always
    fall in the same group because M is even.
    """
    members = torch.arange(population_size).repeat_interleave(prompts_per_member)
    group = members // members_per_prompt
    slots = group * prompts_per_member + torch.arange(prompts_per_member).repeat(population_size)
    return members, slots


def prepare_run_dir(config: TrainConfig, resume: bool, write: bool = True) -> Path:
    run_dir = Path(config.output_dir)
    if (run_dir / "metrics.jsonl").exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another "
                              "--output_dir")
    if resume and (run_dir / "config.yaml").is_file():
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        ignore = {"max_steps", "max_wall_s", "eval_every", "save_every", "distributed_timeout_s"}
        changed = sorted(k for k, v in to_dict(config).items() if k not in ignore and saved.get(k) != v)
        if changed:
            raise ValueError(f"cannot resume {run_dir} with a different recipe (changed: {', '.join(changed)}); "
                             "resume with the recipe the run was started with")
    if write:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    return run_dir


def load_base(config: TrainConfig, device: str):
    """(model, tokenizer) a run starts from: the recipe's model, or with model.dry_run_random_init a random-init
    model of the same architecture (no download for the recipes' models; see `models.random_init_model`)."""
    spec = config.model
    if spec.dry_run_random_init:
        return random_init_model(spec.name, shrink=spec.dry_run_shrink, dtype=spec.dtype, device=device,
                                 seed=config.seed, trust_remote_code=spec.trust_remote_code)
    return (load_model(spec.name, dtype=spec.dtype, device=device, trust_remote_code=spec.trust_remote_code),
            load_tokenizer(spec.name, trust_remote_code=spec.trust_remote_code))


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) an EGGROLL training run, on every process of a launched job; returns the run directory."""
    es, gen = config.es, config.generation
    processes = init_processes(config.distributed_timeout_s,
                               cpu=default_device(config.model.device).startswith("cpu"))
    row_shards = shard_rows(es.population_size, es.prompts_per_member, es.antithetic, processes.world_size)
    run_dir = prepare_run_dir(config, resume, write=processes.is_main)
    device = processes.device(config.model.device)
    model, tokenizer = load_base(config, device)
    population = Population(population_size=es.population_size, sigma=es.sigma, rank=es.rank,
                            antithetic=es.antithetic, seed=config.seed, noise_reuse=es.noise_reuse)
    layers = attach_eggroll(model, population, es.target_modules, es.adapter_rank)
    updater = ESUpdater(layers, population, lr=es.lr, momentum=es.momentum, weight_decay=es.weight_decay)
    options = ({"gpu_memory_utilization": gen.gpu_memory_utilization, "seed": config.seed,
                "trust_remote_code": config.model.trust_remote_code} if gen.engine == "vllm"
               else {"max_batch_tokens": gen.max_batch_tokens})
    engine = get_engine(gen.engine, model, tokenizer, population=population, **options)
    reward_fns = [get_reward_function(name) for name in config.rewards]

    data = config.data
    train_set = load_task(data.task, data.train_split, data.data_path, seed=config.seed)
    eval_set = load_task(data.task, data.eval_split, data.data_path, limit=data.eval_limit)
    shared = dict(few_shot=data.few_shot, seed=config.seed, task=data.task, data_path=data.data_path)
    train_prompts, train_answers = build_prompts(tokenizer, train_set, **shared), list(train_set["answer"])
    eval_prompts, eval_answers = build_prompts(tokenizer, eval_set, **shared), list(eval_set["answer"])

    log, state, checkpoints = MetricsLog(run_dir / "metrics.jsonl"), RunTotals(), list_checkpoints(run_dir)
    start_from = checkpoints[-1] if resume and checkpoints else None
    # also the barrier that keeps the main process from writing metrics.jsonl before every process checked run_dir
    processes.agree(checkpoint_step(start_from), "the checkpoint to start from",
                    "every process must see the same run directory (a filesystem they all share)")
    if start_from is not None:
        optimizer_state, saved = load_checkpoint(start_from, layers)
        updater.load_state_dict(optimizer_state)
        state = RunTotals.from_dict(saved)
        if processes.is_main:
            log.truncate_after(state.step)
    else:
        if processes.is_main:  # a fresh start (or a resume before the first checkpoint) begins an empty log
            log.truncate_after(-1)
        if config.model.adapter is not None:  # continue from an existing adapter (DESIGN.md §3)
            load_peft_adapter(layers, config.model.adapter)

    def held_out() -> dict:
        return held_out_metrics(engine, eval_prompts, eval_answers, max_new_tokens=gen.max_new_tokens,
                                processes=processes)

    # what one data-parallel step would all-reduce instead: an fp32 gradient of every target matrix
    allreduce_bytes = 4 * sum(layer.base.weight.numel() for layer in layers.values())
    last_eval = {}  # the latest held-out metrics, shown on the progress bar
    if state.step == 0:
        last_eval = held_out()
        record = {**state.record(), **last_eval, **processes.traffic(allreduce_bytes)}
        if processes.is_main:
            log.log(record)
    members, slots = population_layout(es.population_size, es.members_per_prompt, es.prompts_per_member)
    prompts_per_step = int(slots.max()) + 1
    mine = row_shards[processes.rank]                              # this process's rows of the layout
    bar = tqdm(total=config.max_steps, initial=state.step, desc="eggroll", unit="step",
               disable=not progress or not processes.is_main)
    while state.step < config.max_steps and (config.max_wall_s is None or state.wall_s < config.max_wall_s):
        start = time.perf_counter()
        chosen = prompt_indices(len(train_prompts), state.step, prompts_per_step, config.seed)
        rows = [chosen[s] for s in slots[mine].tolist()]         # dataset index of this process's rows
        sampling = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                                  seed=shard_seed(config.seed * 1_000_003 + state.step, mine.start))
        population.set_step(state.step)
        row_prompts = [train_prompts[i] for i in rows]
        completions = engine.generate(row_prompts, sampling, member_ids=members[mine].tolist())
        texts = [c.text for c in completions]
        scores = sum(check_scores(fn(row_prompts, texts, answer=[train_answers[i] for i in rows]), len(rows),
                                  fn.__name__) for fn in reward_fns)
        # every process needs every row's score (per-prompt means, global std): gather them, then shape identically
        scores, new_tokens = processes.gather_rows(scores, sum(c.num_tokens for c in completions), row_shards)
        # scores: [N * J] member-major -> [N, J]; slots name the prompt each score belongs to
        fitness = shape_fitness(scores.view(es.population_size, -1), slots.view(es.population_size, -1), es.fitness)
        update = updater.step(fitness)
        step_s = processes.main_value(time.perf_counter() - start, "the step time")  # one clock decides stops
        state = state.advance(step_s, len(members), new_tokens)
        record = {**state.record(), "reward_mean": float(scores.mean()), "reward_std": float(scores.std()),
                  "update_norm": update["update_norm"], "step_s": round(step_s, 3),
                  "tokens_per_s": round(new_tokens / step_s, 1), "peak_mem_mb": round(peak_memory_mb(device), 1)}
        out_of_time = config.max_wall_s is not None and state.wall_s >= config.max_wall_s
        finished = state.step >= config.max_steps or out_of_time
        if state.step % config.eval_every == 0 or finished:
            last_eval = held_out()
            record.update(last_eval)
        saving = state.step % config.save_every == 0 or finished
        if saving:
            processes.check_in_sync(layers, state.step)
        record.update(processes.traffic(allreduce_bytes))
        if processes.is_main:
            log.log(record)
            if saving:
                save_checkpoint(run_dir, state.step, layers, updater.state_dict(), asdict(state))
                export_peft_adapter(layers, run_dir / "adapter", base_model_id(config.model.name), overwrite=True)
        bar.update(1)
        accuracy = last_eval.get("eval_accuracy", float("nan"))
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", acc=f"{accuracy:.3f}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
    bar.close()
    return run_dir
