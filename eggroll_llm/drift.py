"""`eggroll-llm drift`: what each run changed in its base model, what it forgot, and how two runs' solutions relate.

Per run (drift_weights.py): ‖ΔW‖_F, ‖ΔW‖_F / ‖W‖_F, moved fraction and effective rank of ΔW = final − base. Off-task
drift (off_task.py for the text): the mean per-token KL(base ‖ tuned) over the base model's greedy continuations of
off-task prompts, and the change in language-model loss on off-task text. Between two runs of one base: the cosine of
their ΔW and the linear path θ(α) = θ_A + α(θ_B − θ_A), α ∈ {0, 0.25, 0.5, 0.75, 1}, with held-out task accuracy
(the runs' own evaluation set) and off-task KL at each point: a dip inside the path is a loss barrier. This follows
the measurements of Abdi et al. 2026 (arXiv 2601.20861) and Hoy et al. 2026 (arXiv 2604.01499); docs/compare.md,
"Drift", explains every figure and drift.json's schema. torch is imported inside the functions, as in export.py, so
`eggroll-llm --help` does not load it.

    eggroll-llm drift runs/eggroll-s0 runs/es-s0 runs/grpo-s0 --out drift/
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .io import atomic_directory, atomic_write_text, check_output_folder
from .off_task import DEFAULT_ROWS, OffTaskSet, off_task_set

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .drift_weights import RunDelta

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
DRIFT_MARKERS = ("drift.json",)
BATCH = 32


def with_final(base: nn.Module, finals: list[tuple[dict[str, Tensor], float]]) -> nn.Module:
    """A copy of `base` whose parameters are torch.lerp(θ_A, θ_B, α) for finals [(θ_A values, ·), (θ_B values, α)] —
    exactly θ_A at α = 0 and θ_B at α = 1 — or θ_A itself for one run; a parameter a run left alone is base's."""
    import torch

    from .models import untie_output_head

    model = copy.deepcopy(base)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_name = next((n for n, m in model.named_modules() if m is head), None) if head is not None else None
    names = set().union(*(values for values, _ in finals))
    with torch.no_grad():
        for name in sorted(names):
            if head_name is not None and name.rpartition(".")[0] == head_name:
                untie_output_head(model, head)  # a tuned output head is not the embedding table
            p = model.get_parameter(name)
            start = finals[0][0].get(name, p.detach().float())
            if len(finals) == 1:
                value = start
            else:
                end, alpha = finals[1][0].get(name, p.detach().float()), finals[1][1]
                value = torch.lerp(start, end, alpha)
            p.copy_(value.to(p.dtype))
    return model


class OffTaskProbe:
    """The base model's greedy continuations of the off-task prompts, fixed once; then KL(base ‖ tuned) per token
    over them and the language-model loss on the off-task targets, for any tuned model."""

    def __init__(self, base: nn.Module, tokenizer, off_task: OffTaskSet, max_new_tokens: int):
        from .engine.hf import HFEngine
        from .evaluate import greedy_completions

        self.base, self.off_task = base, off_task
        prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in off_task.rows]
        continuations = greedy_completions(HFEngine(base, tokenizer), prompts, max_new_tokens=max_new_tokens)
        # (ids, first scored position): KL on the continuation tokens, loss on the completion (or the whole text)
        self.kl_rows = [(p + list(c.token_ids), len(p)) for p, c in zip(prompts, continuations) if c.token_ids]
        self.loss_rows = []
        for p, row in zip(prompts, off_task.rows):
            if row["completion"] is None:
                self.loss_rows.append((p, 1))
            else:
                target = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
                self.loss_rows.append((p + target + [tokenizer.eos_token_id], len(p)))
        self.pad = tokenizer.pad_token_id
        self.base_loss = self.loss(base)

    def _batches(self, rows):
        import torch

        """Right-padded batches: (input_ids, attention_mask, scored mask [b, L-1] of the positions predicting a
        scored token)."""
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), self.pad)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            scored = torch.zeros((len(chunk), width - 1), dtype=torch.bool)
            for i, (row, first) in enumerate(chunk):
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
                scored[i, first - 1:len(row) - 1] = True  # position t predicts token t + 1
            yield ids, mask, scored

    def _log_probs(self, model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
        import torch

        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
        return torch.log_softmax(logits.float(), -1).cpu()                      # [b, L-1, vocab]

    def kl(self, model: nn.Module) -> float:
        """Mean over continuation tokens of KL(p_base ‖ p_model) at each position."""
        total, count = 0.0, 0
        for ids, mask, scored in self._batches(self.kl_rows):
            lp_base, lp = self._log_probs(self.base, ids, mask), self._log_probs(model, ids, mask)
            kl = (lp_base.exp() * (lp_base - lp)).sum(-1)                           # [b, L-1]
            total, count = total + float(kl[scored].sum()), count + int(scored.sum())
        return total / count if count else 0.0

    def loss(self, model: nn.Module) -> float:
        """Mean negative log-likelihood per target token of the off-task targets."""
        total, count = 0.0, 0
        for ids, mask, scored in self._batches(self.loss_rows):
            lp = self._log_probs(model, ids, mask)
            nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            total, count = total + float(nll[scored].sum()), count + int(scored.sum())
        return total / count if count else 0.0


class TaskProbe:
    """The runs' held-out evaluation (their config's eval split and limit, or `eval_limit`), as their trainer ran it."""

    def __init__(self, config, tokenizer, eval_limit: int | None):
        from dataclasses import replace

        from .inputs import PromptSet, RewardSet, wants_accuracy
        from .recipe import recipe_datasets

        if eval_limit is not None:
            config = replace(config, data=replace(config.data, eval_limit=eval_limit))
        _, held_out = recipe_datasets(config, tokenizer)
        self.tokenizer, self.max_new_tokens = tokenizer, config.generation.max_new_tokens
        self.eval_set = PromptSet(held_out, tokenizer, "eval_dataset")
        self.rewards = RewardSet(config.rewards, config.reward_weights)
        self.with_accuracy = wants_accuracy(self.rewards, config.data)  # as the run's own evaluations

    def accuracy(self, model: nn.Module) -> float:
        """eval_accuracy where the task has gold answers, else eval_reward."""
        from .engine.hf import HFEngine
        from .evaluate import held_out_metrics

        metrics = held_out_metrics(HFEngine(model, self.tokenizer), self.eval_set, self.rewards,
                                   max_new_tokens=self.max_new_tokens, accuracy=self.with_accuracy)
        return metrics.get("eval_accuracy", metrics["eval_reward"])


def check_same_base(paths: list[Path], configs: list) -> None:
    """Refuse runs of different base models, or of different tasks (one held-out set for the interpolation)."""
    from .drift_weights import DriftError

    if len({str(c.model.name) for c in configs}) > 1:
        listed = ", ".join(f"{p}: {c.model.name}" for p, c in zip(paths, configs))
        raise DriftError(f"the runs have different base models ({listed}); drift compares runs of one base model: "
                         "pass runs trained from the same model")
    tasks = {str(c.data.task) for c in configs}
    if len(tasks) > 1:
        raise DriftError(f"the runs are on different tasks ({', '.join(sorted(tasks))}); the interpolation's accuracy "
                         "needs one held-out set: pass runs of one task")


def recorded_accuracy(run: RunDelta) -> float | None:
    """The run's own held-out score at the step its weights are from (metrics.jsonl)."""
    evals = [r for r in run.records if "eval_accuracy" in r or "eval_reward" in r]
    at = [r for r in evals if run.step is None or r["step"] <= run.step]
    if not at:
        return None
    last = at[-1]
    return last.get("eval_accuracy", last.get("eval_reward"))


def _names(runs: list[RunDelta]) -> list[str]:
    names = [r.path.name or str(r.path) for r in runs]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def drift(run_dirs: list[str | Path], out: str | Path | None = None, *, off_task: str | Path | None = None,
          eval_limit: int | None = None, off_task_rows: int = DEFAULT_ROWS,
          pairs: bool | list[tuple[int, int]] = True, interpolate: bool = True, force: bool = False,
          progress: bool = True) -> dict:
    """drift.json's content for `run_dirs` (one base model); written with plots into `out` when given.

    `pairs`: the pairs of runs (indices into `run_dirs`) to relate, every pair when True, none when False;
    `interpolate` False gives them their cosine only, with "interpolation" None (what compare --drift needs).
    `eval_limit`: held-out problems per evaluation (default: the runs' own eval_limit). `off_task_rows`: rows of an
    embedded model's built-in off-task set (a file's rows are all used).
    """
    from tqdm.auto import tqdm

    from .config import load_config
    from .drift_weights import DriftError, cosine, delta_stats, run_delta, shared_names
    from .models import load_model, load_tokenizer

    paths = [Path(p) for p in run_dirs]
    if out is not None:
        check_output_folder(Path(out), kind="drift report", markers=DRIFT_MARKERS, protected=paths, force=force,
                            error=DriftError)
    configs = []
    for path in paths:
        if not (path / "config.yaml").is_file():
            raise DriftError(f"{path} is not a run directory (no config.yaml); pass folders written by "
                             "`eggroll-llm train`")
        configs.append(load_config(path / "config.yaml"))
    check_same_base(paths, configs)
    spec = configs[0].model
    tokenizer = load_tokenizer(spec.name, trust_remote_code=spec.trust_remote_code)
    off = off_task_set(spec.name, tokenizer, off_task, off_task_rows)  # a bad file fails before a model loads
    base = load_model(spec.name, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code)
    runs = [run_delta(p, base) for p in paths]
    probe = OffTaskProbe(base, tokenizer, off, configs[0].generation.max_new_tokens)
    task = TaskProbe(configs[0], tokenizer, eval_limit)
    labels = _names(runs)
    if pairs is True:
        pairs = list(itertools.combinations(range(len(runs)), 2))
    todo = len(runs) + (len(pairs or []) * (len(ALPHAS) - 2) if interpolate else 0)
    bar = tqdm(total=todo, desc="drift", unit="model", disable=not progress, leave=False)

    def measure(model: nn.Module) -> dict:
        result = {"eval_accuracy": task.accuracy(model), "off_task_kl": probe.kl(model),
                  "off_task_loss_change": probe.loss(model) - probe.base_loss}
        bar.update(1)
        return result

    per_run, measured = {}, {}
    for label, run in zip(labels, runs):
        stats = delta_stats(run.delta, base)
        measured[label] = measure(with_final(base, [(run.final, 0.0)]))
        per_run[label] = {"run_dir": str(run.path), "method": run.method, "seed": run.config.seed, "step": run.step,
                          **{k: v for k, v in stats.items() if k != "modules"}, **measured[label],
                          "recorded_eval_accuracy": recorded_accuracy(run), "modules": stats["modules"]}
    pair_list = []
    for i, j in pairs or []:
        (la, a), (lb, b) = (labels[i], runs[i]), (labels[j], runs[j])
        path = [] if interpolate else None
        if interpolate:
            for alpha in ALPHAS:
                ends = {0.0: measured[la], 1.0: measured[lb]}
                point = ends.get(alpha) or measure(with_final(base, [(a.final, 0.0), (b.final, alpha)]))
                path.append({"alpha": alpha, "eval_accuracy": point["eval_accuracy"],
                             "off_task_kl": point["off_task_kl"]})
        pair_list.append({"a": la, "b": lb, **cosine(a.delta, b.delta, shared_names(base)), "interpolation": path})
    bar.close()
    result = {"base_model": str(spec.name), "runs": per_run, "pairs": pair_list,
              "off_task": {"source": off.source, "rows": len(off.rows)},
              "eval": {"split": configs[0].data.eval_split, "n": len(task.eval_set)}}
    if out is not None:
        from .drift_plots import write_drift_plots

        with atomic_directory(Path(out), overwrite=True) as tmp:
            write_drift_plots(result, tmp)
            atomic_write_text(tmp / "drift.json", json.dumps(result, indent=2) + "\n")
    return result


def add_drift_parser(subparsers) -> None:
    p = subparsers.add_parser("drift", help="what runs changed in their base model and what they forgot (off-task "
                                            "KL), update geometry and the interpolation between runs",
                              description="For runs of one base model: ‖ΔW‖, moved fraction and effective rank of "
                                          "each run's change; off-task KL(base ‖ tuned) and LM-loss change; for each "
                                          "pair of runs the cosine of their ΔW and accuracy / off-task KL along the "
                                          "straight line between them. Writes OUT/drift.json and plots "
                                          "(docs/compare.md, 'Drift').")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories written by `eggroll-llm train`")
    p.add_argument("--out", type=Path, required=True, help="folder for drift.json and the plots; an existing one must "
                                                           "hold a previous drift report, replaced only with --force")
    p.add_argument("--off-task", "--off_task", dest="off_task", type=Path,
                   help="off-task text: jsonl (text or prompt field, optional completion) or txt (a text a line); "
                        "default for embedded models: held-out text of their own pretraining distribution")
    p.add_argument("--eval_limit", "--eval-limit", dest="eval_limit", type=int,
                   help="held-out problems per task evaluation (default: the runs' data.eval_limit)")
    p.add_argument("--force", action="store_true", help="replace OUT when it holds a previous drift report")
    p.set_defaults(func=run_drift)


def run_drift(args) -> int:
    if args.eval_limit is not None and args.eval_limit < 1:
        raise ValueError(f"--eval_limit must be >= 1, got {args.eval_limit}")
    result = drift(args.runs, args.out, off_task=args.off_task, eval_limit=args.eval_limit, force=args.force)
    for label, r in result["runs"].items():
        rank = "—" if r["effective_rank"] is None else f"{r['effective_rank']:g}"
        print(f"{label}: {r['method']}, accuracy {r['eval_accuracy']:.3f}, ‖ΔW‖ {r['delta_norm']:.4g} "
              f"(relative {r['relative_delta_norm'] or 0:.3g}), moved {r['moved_fraction']:.3g}, rank {rank}, "
              f"off-task KL {r['off_task_kl']:.4g}, loss change {r['off_task_loss_change']:+.4g}")
    for pair in result["pairs"]:
        accs = " ".join(f"{p['eval_accuracy']:.3f}" for p in pair["interpolation"] or [])
        cos = "—" if pair["cosine"] is None else f"{pair['cosine']:.3f}"
        print(f"{pair['a']} ↔ {pair['b']}: cosine {cos}, accuracy along α=0..1: {accs}")
    print(f"drift written to {Path(args.out) / 'drift.json'}")
    return 0
