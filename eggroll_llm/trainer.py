"""The EGGROLL trainer for causal LMs: prompts → population generation → rewards → fitness → fold → log/eval/save.

docs/design.md §1: every step, N members (antithetic pairs share low-rank noise of opposite sign) answer prompts
under their own perturbation in ONE batched generation; TRL-style reward functions score the completions; the ES
core (`es.EggrollES`) shapes fitness per prompt (paper §6.3) and folds the fitness-weighted noise into the fp32
adapters. Layout: members come in groups of `members_per_prompt`; each group answers the same `prompts_per_member`
prompts, so fitness compares members on equal questions. Launched on several processes (distributed.py), each
generates and scores its shard of the rows and only the scores are exchanged; the main process logs, checkpoints
and exports.

Shaped like TRL's GRPOTrainer:

    trainer = EggrollTrainer(model="tiny-arith", reward_funcs=[my_reward], train_dataset=train_ds,
                             eval_dataset=eval_ds, args=EggrollConfig(output_dir="runs/x", max_steps=50))
    output = trainer.train()            # TrainOutput; trainer.train(resume_from_checkpoint=True) continues a run
    trainer.state.log_history           # the per-step records of metrics.jsonl, as TRL keeps them
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import checkpoint_step, list_checkpoints, load_checkpoint, save_checkpoint
from .config import DataConfig, DryRun, EggrollConfig, Recipe, to_dict, trainer_args
from .distributed import init_processes, shard_rows, shard_seed
from .engine import SamplingParams, get_engine
from .es import EggrollES, population_layout
from .evaluate import held_out_metrics
from .export import base_model_id, export_peft_adapter, load_peft_adapter, save_merged_model
from .inputs import (
    PromptSet,
    RewardSet,
    hide_progress_bars,
    model_and_tokenizer,
    prompt_budget,
    run_config,
    wants_accuracy,
)
from .interrupt import Interrupted, StopSignals
from .io import fsync_file, writing
from .levers import SIGMA_FLOOR, aggregate_samples, answer_extractor, schedule_factor
from .models import default_device
from .rundir import prepare_run_dir
from .runlog import (
    BUDGET_CLOCKS,
    MetricsLog,
    RunTotals,
    TrainerState,
    TrainOutput,
    open_trackers,
    peak_memory_mb,
    train_output,
    trainer_state,
)


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


class EggrollTrainer:
    """EGGROLL fine-tuning of a causal LM against reward functions, TRL GRPOTrainer-style.

    model: an embedded name (tiny-arith), a local folder or a Hub id (loaded with args.model's dtype and device), or a
    loaded transformers causal LM (its target linear layers are wrapped in place). reward_funcs: callables
    `fn(prompts, completions, **columns) -> list[float | None]`, built-in names, or `package.module:function` paths,
    summed with args.reward_weights. train_dataset / eval_dataset: datasets.Dataset with a `prompt` column (text or
    chat messages); every other column reaches every reward function as a keyword list. processing_class: the
    tokenizer (default: loaded from the model's name). data_source: the recipe `data:` section the datasets were
    built from (`eggroll-llm train` passes it); None, the default, records the datasets' descriptions instead
    (inputs.run_config). args: an EggrollConfig (or a Recipe with method: eggroll). args.disable_tqdm also hides the
    model-loading and dataset bars of transformers/datasets. dry_run: a config.DryRun to start from a random-init
    model of the named model's architecture (`eggroll-llm train --dry_run`); the run directory records it.
    """

    def __init__(self, model, reward_funcs, train_dataset, eval_dataset=None,
                 args: EggrollConfig | Recipe | None = None, processing_class=None,
                 data_source: DataConfig | None = None, dry_run: DryRun | None = None):
        args = trainer_args(args or EggrollConfig(), EggrollConfig)
        if dry_run is not None:
            dry_run.check(args)
        self.dry_run = dry_run
        if args.disable_tqdm:
            hide_progress_bars()
        self.rewards = RewardSet(reward_funcs, args.reward_weights)
        self.args = args = run_config(args, model, self.rewards, train_dataset, eval_dataset, data_source)
        self.accuracy = wants_accuracy(self.rewards, args.data)
        self.state = TrainerState()
        self.processes = init_processes(args.distributed_timeout_s,
                                        cpu=default_device(args.model.device).startswith("cpu"))
        self.device = self.processes.device(args.model.device)
        self.model, self.tokenizer = model_and_tokenizer(model, processing_class, args, self.device, dry_run)
        fit = dict(max_prompt_tokens=prompt_budget(self.model, args.generation.max_new_tokens),
                   long_prompts=args.data.long_prompts)
        self.train_set = PromptSet(train_dataset, self.tokenizer, "train_dataset", **fit)
        self.eval_set = (PromptSet(eval_dataset, self.tokenizer, "eval_dataset", **fit) if eval_dataset is not None
                         else None)
        es, gen = args.es, args.generation
        self.row_shards = shard_rows(es.population_size, es.prompts_per_member, es.antithetic,
                                     self.processes.world_size)
        self.es = EggrollES.from_config(self.model, es, args.seed)
        self.per_member = es.scoring == "per_member" or (es.scoring == "auto" and es.strategy == "openai_es")
        self.answer_of = (answer_extractor(es.answer_fn, args.data.task) if es.aggregate == "majority_vote"
                          else None)
        options = ({"gpu_memory_utilization": gen.gpu_memory_utilization, "seed": args.seed,
                    "trust_remote_code": args.model.trust_remote_code} if gen.engine == "vllm"
                   else {"max_batch_tokens": gen.max_batch_tokens})
        self.engine = get_engine(gen.engine, self.model, self.tokenizer, population=self.es.population, **options)

    def evaluate(self, step: int | None = None) -> dict:
        """Greedy held-out metrics of the current adapter (eval_reward, and eval_accuracy when the run asks for it:
        inputs.wants_accuracy); with `step`, the per-problem records go to the run's eval/step-NNNNNN.jsonl."""
        if self.eval_set is None:
            return {}
        path = None if step is None else Path(self.args.output_dir) / "eval" / f"step-{step:06d}.jsonl"
        return held_out_metrics(self.engine, self.eval_set, self.rewards, processes=self.processes,
                                max_new_tokens=self.args.generation.max_new_tokens, accuracy=self.accuracy,
                                records_path=path)

    def train(self, resume_from_checkpoint: bool = False) -> TrainOutput:
        """Run (or with resume_from_checkpoint, continue) the run; returns a TrainOutput (the step reached, the last
        record, the run directory, and whether max_steps or max_wall_s ended it). `self.state.log_history` then
        holds every record of metrics.jsonl.

        A SIGINT or SIGTERM ends the current step, saves it and raises interrupt.Interrupted (see interrupt.py).
        """
        run_dir, lock = prepare_run_dir(self.args, resume_from_checkpoint, write=self.processes.is_main,
                                        dry_run=self.dry_run)
        trackers = open_trackers(self.args.report_to, run_dir, to_dict(self.args)) if self.processes.is_main else []
        log = MetricsLog(run_dir / "metrics.jsonl", trackers)
        try:
            with StopSignals() as stop:
                self._loop(run_dir, log, resume_from_checkpoint, stop)
        finally:
            log.close()
            if lock is not None:
                lock.release()
            self.state = trainer_state(log)
        return train_output(run_dir, self.state.log_history, self.args.max_steps)

    def _loop(self, run_dir: Path, log: MetricsLog, resume: bool, stop: StopSignals) -> None:
        args, es, processes = self.args, self.args.es, self.processes
        state, checkpoints = RunTotals(), list_checkpoints(run_dir)
        start_from = checkpoints[-1] if resume and checkpoints else None
        # also the barrier that keeps the main process from writing metrics.jsonl before every process checked run_dir
        processes.agree(checkpoint_step(start_from), "the checkpoint to start from",
                        "every process must see the same run directory (a filesystem they all share)")
        if start_from is not None:
            tensors, saved = load_checkpoint(start_from)
            self.es.load_state_dict(tensors)
            state = RunTotals.from_dict(saved)
            if processes.is_main:
                log.truncate_after(state.step)
        else:
            if processes.is_main:  # a fresh start (or a resume before the first checkpoint) begins an empty log
                log.truncate_after(-1)
            if args.model.adapter is not None:  # continue from an existing adapter (docs/design.md §3)
                load_peft_adapter(self.es.layers, args.model.adapter)

        # what one data-parallel step would all-reduce instead: an fp32 gradient of every target
        allreduce_bytes = 4 * sum(t.param.numel() for t in self.es.targets.values())
        last_eval = {}  # the latest held-out metrics, shown on the progress bar
        if state.step == 0:
            last_eval = self.evaluate(0)
            record = {**state.record(), **self._sizes(), **last_eval, **processes.traffic(allreduce_bytes)}
            if processes.is_main:
                log.log(record)
        members, slots = population_layout(es.population_size, es.members_per_prompt, es.prompts_per_member)
        prompts_per_step = int(slots.max()) + 1
        mine = self.row_shards[processes.rank]                          # this process's rows of the layout
        gen, clock = args.generation, BUDGET_CLOCKS[args.budget_clock]
        by_time = args.max_wall_s is not None  # the bar counts toward the limit that ends the run: seconds or steps
        # the budget is written in, not read from tqdm's total, which tqdm drops once n runs past it
        seconds = f"{{l_bar}}{{bar}}| {{n:.0f}}/{args.max_wall_s or 0:.0f} s of training [{{elapsed}}{{postfix}}]"
        bar = tqdm(total=args.max_wall_s if by_time else args.max_steps,
                   initial=round(state.wall_s, 1) if by_time else state.step, desc="eggroll",
                   unit="s" if by_time else "step", disable=args.disable_tqdm or not processes.is_main,
                   bar_format=seconds if by_time else None)
        while state.step < args.max_steps and (args.max_wall_s is None or state.wall_s < args.max_wall_s):
            start = clock()
            population = self.es.ask()
            levers = self._schedules(state.step)
            chosen = prompt_indices(len(self.train_set), state.step, prompts_per_step, args.seed)
            K = es.samples_per_prompt                                   # rows: K consecutive samples per slot
            prompts, prompt_ids, columns = self.train_set.select(
                [chosen[s] for s in slots[mine].repeat_interleave(K).tolist()])
            sampling = SamplingParams(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
                                      seed=args.seed * 1_000_003 + state.step)
            completions = self._generate(prompt_ids, sampling, members[mine].repeat_interleave(K), mine.start * K)
            scores, _ = self.rewards(prompts, self.train_set.completions([c.text for c in completions]),
                                     [c.token_ids for c in completions], columns)
            if K > 1:  # one score per (member, prompt): es.aggregate over its K samples
                answers = None if self.answer_of is None else [self.answer_of(c.text) for c in completions]
                scores = aggregate_samples(scores, K, es.aggregate, answers)
            # every process needs every row's score (per-prompt means, global std): gather them, then shape alike
            counts = [sum(c.num_tokens for c in completions), self.engine.last_stats.prompt_tokens]
            scores, (new_tokens, prompt_tokens) = processes.gather_rows(scores, counts, self.row_shards)
            # scores: [N * J] member-major -> [N, J]; slots name the prompt each score belongs to
            N = population.population_size
            update = self.es.tell(scores.view(N, -1), slots.view(N, -1))
            step_s = processes.main_value(clock() - start, "the step time")  # one clock decides stops
            state = state.advance(step_s, len(members) * K, new_tokens, prompt_tokens)
            record = {**state.record(), "reward_mean": float(scores.mean()), "reward_std": float(scores.std()),
                      "update_norm": update["update_norm"], **levers, "step_s": round(step_s, 3),
                      "tokens_per_s": round(new_tokens / step_s, 1),
                      "peak_mem_mb": round(peak_memory_mb(self.device), 1)}
            out_of_time = args.max_wall_s is not None and state.wall_s >= args.max_wall_s
            finished = state.step >= args.max_steps or out_of_time
            stopping = processes.any(stop.requested is not None, "the stop request")  # every process stops alike
            if state.step % args.eval_every == 0 or finished:
                last_eval = self.evaluate(state.step)
                record.update(last_eval)
            saving = state.step % args.save_every == 0 or finished or stopping
            if saving:
                processes.check_in_sync(self.es.state_dict(), state.step)
            record.update(processes.traffic(allreduce_bytes))
            if processes.is_main:
                log.log(record)
                if saving:
                    self.save(run_dir, state)
            if stopping:
                raise Interrupted(state.step, stop.requested or signal.SIGTERM)
            bar.update(round(step_s, 1) if by_time else 1)
            shown = last_eval.get("eval_accuracy", last_eval.get("eval_reward", float("nan")))
            bar.set_postfix(step=state.step, reward=f"{record['reward_mean']:.3f}", eval=f"{shown:.3f}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
        bar.total = bar.n  # the run is over, whichever limit ended it: the bar ends full
        bar.close()

    def _generate(self, prompt_ids: list, sampling: SamplingParams, members: torch.Tensor, first_row: int) -> list:
        """Completions of this process's rows (`first_row`: the step's index of its first row). Batched: one
        generation of every member's perturbed model. Per member (full-rank strategies, Qiu et al. 2025): each
        member's noise written into the weights in turn, the plain model generating that member's rows, the exact
        centre restored afterwards."""
        if not self.per_member:
            return self.engine.generate(prompt_ids, dataclasses.replace(sampling, seed=shard_seed(sampling.seed,
                                                                                                  first_row)),
                                        member_ids=members.tolist())
        out = []
        with self.es.members() as apply:
            for member in members.unique_consecutive().tolist():
                rows = (members == member).nonzero().squeeze(1).tolist()
                apply(member)
                seed = shard_seed(sampling.seed, first_row + rows[0])  # rows of different members: other uniforms
                out += self.engine.generate([prompt_ids[i] for i in rows], dataclasses.replace(sampling, seed=seed))
        return out

    def _schedules(self, step: int) -> dict:
        """σ and lr of the update of `step` (es.sigma_schedule, es.lr_schedule, es.warmup_steps); their values."""
        es, total = self.args.es, self.args.max_steps
        sigma = es.sigma * schedule_factor(es.sigma_schedule, step, total, 0, SIGMA_FLOOR)
        lr = es.lr * schedule_factor(es.lr_schedule, step, total, es.warmup_steps)
        self.es.set_sigma(sigma)
        self.es.set_lr(lr)
        return {"sigma": sigma, "lr": lr}

    def save(self, run_dir: Path, state: RunTotals) -> None:
        """A resumable checkpoint of `state`, and what the run trained (main process): the adapter as a PEFT folder in
        adapter/, or (in place) the merged model in model/."""
        # the log's records up to this step reach the disk before the checkpoint that a resume continues after
        with writing("the metrics log", run_dir / "metrics.jsonl"):
            fsync_file(run_dir / "metrics.jsonl")
        save_checkpoint(run_dir, state.step, self.es.state_dict(), asdict(state))
        if self.es.in_place:
            with writing(f"the model of step {state.step}", run_dir / "model"):
                save_merged_model(self.model, self.tokenizer, run_dir / "model", self.args.model.name)
            return
        with writing(f"the adapter of step {state.step}", run_dir / "adapter"):
            export_peft_adapter(self.es.layers, run_dir / "adapter", base_model_id(self.args.model.name),
                                overwrite=True)

    def _sizes(self) -> dict:
        """Parameter counts for budget estimates (compare's FLOPs axis): the base model, and what ES trains."""
        return {"model_params": sum(p.numel() for p in self.model.parameters()),
                "trainable_params": self.es.trained_numel()}
