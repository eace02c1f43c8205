"""`eggroll-llm compare`: runs in, a report out — groups of seeds with 95% intervals, on four budget axes.

Runs are grouped by method and recipe (the config without its run-only keys: seed, output_dir, max_steps, …); the
seeds of a group are its samples. For each group the report gives the mean and 95% t-interval over seeds of the
final and best held-out score, the budget to a target score and the area under the score-vs-budget curve on every
budget axis (wall-clock, completions, generated tokens, estimated FLOPs: budget.py), then the winner per axis, with
"no significant difference" where the intervals overlap. Two single runs evaluated on the same problems also get a
paired per-problem comparison (bootstrap interval and exact McNemar test, from RUN/eval/step-NNNNNN.jsonl).
docs/compare.md explains every figure and the summary.json schema; the statistics live in stats.py.

    eggroll-llm compare runs/eggroll-s0 runs/eggroll-s1 runs/grpo-s0 runs/grpo-s1 --out compare/
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .budget import AXES, Axis, flops_curve
from .compare_report import groups_table, render_report, winners_table, write_plots
from .config import flatten, is_run_only
from .io import atomic_directory, atomic_write_text, check_output_folder
from .runlog import MetricsLog
from .stats import CONFIDENCE, Interval, bootstrap_interval, mcnemar_exact, mean_interval, normalised_area, pick_winner

NOT_A_RUN = "{} is not a run directory ({}); pass folders written by `eggroll-llm train`"
METRICS = {"eval_accuracy": "held-out accuracy", "eval_reward": "held-out reward"}
REPORT_MARKERS = ("report.md", "summary.json")
SCHEMA_VERSION = 2


class RunDirError(ValueError):
    """A folder passed to `compare` that does not hold a readable run."""


class CompareError(ValueError):
    """Runs that cannot be compared, or an output folder `compare` must not write."""


@dataclass
class Run:
    """One run directory: its resolved config and its metrics records, sorted by step."""

    path: Path
    config: dict
    records: list[dict]
    label: str = ""
    group: str = ""
    budgets: dict[str, list[float]] = field(default_factory=dict)  # axis key -> cumulative budget per record

    @property
    def method(self):
        return lookup(self.config, "method")

    def evals(self, metric: str) -> list[tuple[int, dict]]:
        """(record index, record) of the evaluation records, in step order."""
        return [(i, r) for i, r in enumerate(self.records) if metric in r]


def lookup(config: dict, dotted: str):
    """config["model"]["name"] for "model.name"; None where the run's config lacks the key (another trainer)."""
    node = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def load_run(path: str | Path) -> Run:
    """A run directory's config and metrics; raises RunDirError on anything that is not a readable run."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not path.is_dir() or not metrics.is_file():
        raise RunDirError(NOT_A_RUN.format(path, "no metrics.jsonl"))
    if not (path / "config.yaml").is_file():
        raise RunDirError(NOT_A_RUN.format(path, "no config.yaml"))
    config = yaml.safe_load((path / "config.yaml").read_text())
    if not isinstance(config, dict):
        raise RunDirError(NOT_A_RUN.format(path, "config.yaml is not a mapping"))
    try:
        records = MetricsLog(metrics).read()
    except ValueError as err:  # a damaged line before the last: the message names file:line
        raise RunDirError(str(err)) from None
    if not records:
        raise RunDirError(NOT_A_RUN.format(path, "metrics.jsonl is empty: the run stopped before its first "
                                                 "evaluation"))
    missing = [k for k in ("step", "wall_s", "completions", "tokens") if any(k not in r for r in records)]
    if missing:
        raise RunDirError(f"{metrics}: records without {', '.join(missing)}; a run directory's records carry "
                          "step, wall_s, completions and tokens")
    if not any(m in r for r in records for m in METRICS):
        raise RunDirError(f"{metrics} has no evaluation record (eval_accuracy or eval_reward); every run evaluates "
                          "at step 0")
    return Run(path, config, sorted(records, key=lambda r: r["step"]))


def choose_metric(runs: list[Run]) -> str:
    """eval_accuracy when every run has it (tasks with gold answers), else eval_reward when every run has that."""
    for metric in METRICS:
        if all(run.evals(metric) for run in runs):
            return metric
    raise CompareError("the runs share no held-out metric (eval_accuracy or eval_reward): "
                       + "; ".join(f"{r.path} has {', '.join(m for m in METRICS if r.evals(m)) or 'none'}"
                                   for r in runs))


def recipe_of(config: dict) -> dict:
    """The dotted keys that define what a run trains: the config without run-only keys and without the other
    method's section (es.* means nothing to a GRPO run, grpo.* nothing to an EGGROLL run)."""
    from .config import Recipe, other_methods_keys, to_dict, upgrade

    # keys a run's config.yaml lacks (written before they existed) take their defaults, and keys no recipe holds
    # any more are dropped, as loading it would give
    values = {**flatten(to_dict(Recipe())), **flatten(upgrade(config))}
    return {k: v for k, v in values.items()  # seeds of one recipe form a group
            if k != "seed" and not is_run_only(k) and not other_methods_keys(config.get("method"), k)}


def group_runs(runs: list[Run], labels: list[str] | None) -> dict[str, list[Run]]:
    """Runs grouped by recipe in order of first appearance; sets run.group and run.label.

    A group is named by its method, plus the recipe keys that tell it apart from the other groups of that method
    (or by the user's `labels`, one per group). Two runs of one recipe with the same seed are refused: a seed is one
    sample, and counting it twice would narrow the interval for nothing.
    """
    recipes: dict[str, list[Run]] = {}
    for run in runs:
        recipes.setdefault(json.dumps(recipe_of(run.config), sort_keys=True, default=str), []).append(run)
    flats = {key: json.loads(key) for key in recipes}
    if labels is not None and len(labels) != len(recipes):
        raise ValueError(f"--labels names {len(labels)} groups but the runs form {len(recipes)} (runs group by "
                         "method and recipe; the seeds of one recipe are one group): pass one label per group, "
                         "comma-separated, in the order their first run is given")
    names = []
    for key, flat in flats.items():
        rivals = [f for k, f in flats.items() if k != key and f.get("method") == flat.get("method")]
        keys = sorted({k for f in rivals for k in set(f) | set(flat) if f.get(k) != flat.get(k)})
        suffix = f" ({', '.join(f'{k}={flat.get(k)}' for k in keys)})" if keys else ""
        names.append(f"{flat.get('method') or 'run'}{suffix}")
    groups = {}
    for name, members in zip(labels or names, recipes.values()):
        seeds: dict = {}
        for run in members:
            seed = run.config.get("seed")
            if seed in seeds:
                raise CompareError(f"{seeds[seed].path} and {run.path} are the same recipe with the same seed "
                                   f"{seed}: a seed counts once; drop one or compare runs of different seeds")
            seeds[seed] = run
            run.group, run.label = name, f"{name} seed {seed}"
        groups[name] = members
    return groups


def attach_budgets(runs: list[Run]) -> list[str]:
    """Fill run.budgets for every axis all runs support; returns a note when the FLOPs axis is left out."""
    flops, lacking = {}, {}
    for run in runs:
        for axis in AXES[:3]:
            run.budgets[axis.key] = [r[axis.key] for r in run.records]
        flops[run.label], why = flops_curve(run.config, run.records)
        if why:
            lacking.setdefault(why, []).append(run.label)
    if not lacking:
        for run in runs:
            run.budgets["flops"] = flops[run.label]
    return [f"no FLOPs axis: {', '.join(labels)}: {why}" for why, labels in lacking.items()]


def choose_target(runs: list[Run], groups: dict[str, list[Run]], metric: str,
                  explicit: float | None) -> tuple[float | None, float, str]:
    """(target or None, start score, how the target was chosen).

    Default: the lowest of the groups' mean best scores that exceeds the start (the highest step-0 score), so the
    target means "improved as much as the weakest improving group did". None when no group improved on the start.
    """
    start = max(run.evals(metric)[0][1][metric] for run in runs)
    if explicit is not None:
        if explicit <= start:
            warnings.warn(f"--target {explicit} is at or below the start score {start}: every run reaches it before "
                          "training", stacklevel=3)
        return explicit, start, "--target"
    bests = [mean_interval([max(r[metric] for _, r in run.evals(metric)) for run in members]).mean
             for members in groups.values()]
    above = [b for b in bests if b > start]
    if not above:
        return None, start, "no group improved on the start score on average"
    return min(above), start, "the lowest of the groups' mean best scores above the start"


def summarize_run(run: Run, metric: str, target: float | None, spans: dict[str, float]) -> dict:
    """The report's numbers for one run; `spans` is the common budget range [0, span] per axis."""
    evals = run.evals(metric)
    scores = [r[metric] for _, r in evals]
    _, best = max(evals, key=lambda e: e[1][metric])  # max() keeps the earliest of equal bests
    reached = next((i for i, r in evals if target is not None and r[metric] >= target), None)
    last = run.records[-1]
    rates = [r["tokens_per_s"] for r in run.records if "tokens_per_s" in r]
    memory = [r["peak_mem_mb"] for r in run.records if "peak_mem_mb" in r]
    updates = [r["updates"] for r in run.records if "updates" in r]
    return {
        "run_dir": str(run.path), "group": run.group, "seed": run.config.get("seed"), "method": run.method,
        "task": lookup(run.config, "data.task"), "model": lookup(run.config, "model.name"), "steps": last["step"],
        "eval_n": evals[-1][1].get("eval_n"), "start": scores[0], "final": scores[-1],
        "final_strict_accuracy": evals[-1][1].get("eval_strict_accuracy"),
        "best": best[metric], "best_step": best["step"], "best_wall_s": best["wall_s"],
        "to_target": {k: None if reached is None else b[reached] for k, b in run.budgets.items()},
        "area": {k: normalised_area([b[i] for i, _ in evals], scores, spans[k]) if spans[k] > 0 else None
                 for k, b in run.budgets.items()},
        "totals": {k: b[-1] for k, b in run.budgets.items()},
        "mean_tokens_per_s": sum(rates) / len(rates) if rates else None,
        "peak_mem_mb": max(memory) if memory else None,
        "updates": updates[-1] if updates else sum(r["step"] > 0 for r in run.records),
    }


def summarize_group(members: list[dict]) -> dict:
    """Mean and 95% interval over a group's seeds of every per-run figure (Interval objects, see stats.py).

    Budget to target: the interval is over the seeds that reached it (`reached` of `runs`); `censored` counts the
    others at their total budget, a lower bound on what they would have needed, and decides the winner per axis.
    """
    def over(get) -> Interval:
        return mean_interval([v for v in map(get, members) if v is not None])

    to_target = {}
    for k in members[0]["totals"]:
        hit = [m["to_target"][k] for m in members if m["to_target"][k] is not None]
        to_target[k] = {"reached": len(hit), "runs": len(members), "interval": mean_interval(hit),
                        "censored": over(lambda m: m["to_target"][k] if m["to_target"][k] is not None
                                         else m["totals"][k])}
    return {
        "method": members[0]["method"], "seeds": [m["seed"] for m in members], "n": len(members),
        "eval_n": sorted({m["eval_n"] for m in members}, key=str),
        "start": over(lambda m: m["start"]), "final": over(lambda m: m["final"]), "best": over(lambda m: m["best"]),
        "to_target": to_target,
        "area": {k: over(lambda m: m["area"][k]) for k in members[0]["area"]},
        "totals": {k: over(lambda m: m["totals"][k]) for k in members[0]["totals"]},
        "mean_tokens_per_s": over(lambda m: m["mean_tokens_per_s"]), "peak_mem_mb": over(lambda m: m["peak_mem_mb"]),
        "updates": over(lambda m: m["updates"]),
    }


def winners(groups: dict[str, dict], axes: list[Axis], target: float | None, paired: dict | None) -> dict:
    """Winner per budget axis (area under the curve; budget to target) and on the final score."""
    table = {}
    for axis in axes:
        area = pick_winner({g: s["area"][axis.key] for g, s in groups.items()}, higher=True)
        if target is None:
            first = {"leader": None, "winner": None, "verdict": "no target: no group improved"}
        else:
            complete = {g for g, s in groups.items() if s["to_target"][axis.key]["reached"] == s["n"]}
            first = pick_winner({g: s["to_target"][axis.key]["censored"] for g, s in groups.items()}, higher=False,
                                eligible=complete)
            if not complete and len(groups) > 1:
                first["verdict"] = "no group reaches the target on every seed"
        table[axis.key] = {"area": area, "to_target": first}
    final = pick_winner({g: s["final"] for g, s in groups.items()}, higher=True)
    if paired and paired["available"] and final["verdict"] == "one seed: not tested":
        final.update(winner=final["leader"] if paired["significant"] else None,
                     verdict="significant (paired)" if paired["significant"] else "no significant difference (paired)")
    table["final"] = final
    return table


def paired_comparison(a: Run, b: Run, metric: str) -> dict:
    """Per-problem difference a − b at both runs' final evaluation, from RUN/eval/step-NNNNNN.jsonl.

    The interval is a percentile bootstrap over problems; for accuracy the verdict is the exact McNemar test on
    the problems exactly one run solves (p < 0.05), for a reward the bootstrap interval excluding 0.
    """
    steps = [run.evals(metric)[-1][1]["step"] for run in (a, b)]
    files = [run.path / "eval" / f"step-{step:06d}.jsonl" for run, step in zip((a, b), steps)]
    missing = [str(f) for f in files if not f.is_file()]
    base = {"runs": [a.label, b.label], "steps": steps}
    if missing:
        return {**base, "available": False, "why": f"no per-problem records at the final evaluation "
                                                   f"({', '.join(missing)})"}
    rows = [[json.loads(line) for line in f.read_text().splitlines() if line.strip()] for f in files]
    if len(rows[0]) != len(rows[1]) or any((x["index"], x.get("gold")) != (y["index"], y.get("gold"))
                                           for x, y in zip(*rows)):
        return {**base, "available": False, "why": f"the final evaluations are not on the same problems "
                                                   f"({len(rows[0])} and {len(rows[1])} records)"}
    key = "correct" if metric == "eval_accuracy" else "reward"
    first, second = ([float(r[key]) for r in run_rows] for run_rows in rows)
    diffs = [x - y for x, y in zip(first, second)]
    low, high = bootstrap_interval(diffs)
    out = {**base, "available": True, "n": len(diffs), "difference": sum(diffs) / len(diffs), "low": low,
           "high": high, "significant": low > 0 or high < 0}
    if key == "correct":
        only_first = sum(x > y for x, y in zip(first, second))
        only_second = sum(y > x for x, y in zip(first, second))
        p = mcnemar_exact(only_first, only_second)
        out.update(only_first=only_first, only_second=only_second, mcnemar_p=p, significant=p < 0.05)
    return out


def check_comparable(runs: list[Run], metric: str) -> list[str]:
    """Refuse runs of different tasks; warn (and return the note) when held-out sets differ."""
    tasks = {str(lookup(run.config, "data.task")) for run in runs}
    if len(tasks) > 1:
        raise CompareError(f"runs are on different tasks ({', '.join(sorted(tasks))}): their scores are not "
                           "comparable; compare runs of one task")
    held_out = {(lookup(run.config, "data.eval_split"), run.evals(metric)[-1][1].get("eval_n")) for run in runs}
    if len(held_out) > 1:
        sets = ", ".join(sorted(f"{n} of {split}" for split, n in held_out))
        note = (f"runs are evaluated on different held-out sets ({sets}): their scores are not comparable; use the "
                "same data.eval_split and data.eval_limit")
        warnings.warn(note, stacklevel=3)
        return [note]
    return []


def compare(run_dirs: list[str | Path], out: str | Path = "compare", target: float | None = None,
            labels: list[str] | None = None, force: bool = False, drift: bool = False,
            off_task: str | Path | None = None, eval_limit: int | None = None) -> dict:
    """Write report.md, the plots and summary.json into `out`; returns the summary (what summary.json holds).

    `drift`: also what each run changed and forgot (compare_drift.py; `off_task` and `eval_limit` as in drift.py),
    under summary["drift"] and runs.*.drift."""
    paths, out = [Path(p) for p in run_dirs], Path(out)
    check_output_folder(out, kind="compare report", markers=REPORT_MARKERS, protected=paths, force=force,
                        error=CompareError)
    runs = [load_run(p) for p in paths]                # every folder is checked before anything is written
    metric = choose_metric(runs)
    if target is not None and metric == "eval_accuracy" and not 0.0 <= target <= 1.0:
        raise ValueError(f"--target is an accuracy, a fraction in [0, 1], got {target}; e.g. 0.6 for 60%")
    notes = check_comparable(runs, metric)
    groups = group_runs(runs, labels)
    notes += attach_budgets(runs)
    axes = [axis for axis in AXES if axis.key in runs[0].budgets]
    spans = {axis.key: min(run.budgets[axis.key][run.evals(metric)[-1][0]] for run in runs) for axis in axes}
    target, start, source = choose_target(runs, groups, metric, target)
    per_run = {run.label: summarize_run(run, metric, target, spans) for run in runs}
    per_group = {g: summarize_group([per_run[run.label] for run in members]) for g, members in groups.items()}
    single = [g for g, s in per_group.items() if s["n"] == 1]
    if single:
        notes.append(f"one seed in {', '.join(single)}: no interval, so differences involving "
                     f"{'it' if len(single) == 1 else 'them'} are untested; rerun with more seeds")
    two_singles = len(runs) == 2 and len(groups) == 2
    paired = paired_comparison(runs[0], runs[1], metric) if two_singles else None
    if paired and not paired["available"]:
        notes.append(f"no paired comparison: {paired['why']}")
    summary = {
        "schema_version": SCHEMA_VERSION, "metric": metric, "metric_name": METRICS[metric],
        "confidence": CONFIDENCE, "start": start, "target": target, "target_source": source,
        "axes": {a.key: {"name": a.name, "unit": a.unit, "span": [0.0, spans[a.key]]} for a in axes},
        "groups": per_group, "winners": winners(per_group, axes, target, paired), "paired": paired,
        "runs": per_run, "notes": notes,
    }
    if drift:
        from .compare_drift import attach_drift, drift_winners

        summary["drift"] = attach_drift(per_run, groups, off_task=off_task, eval_limit=eval_limit)
        summary["drift"]["winners"] = drift_winners(summary["drift"]["groups"])
    summary = json.loads(json.dumps(summary, default=lambda iv: iv.as_dict()))
    with atomic_directory(out, overwrite=True) as tmp:  # a failure leaves the previous report (or nothing)
        images = write_plots({g: [(run.records, run.budgets) for run in members] for g, members in groups.items()},
                             metric, axes, target, tmp)
        if drift:
            from .compare_drift import write_drift_plot

            images.append(write_drift_plot(summary, tmp))
        atomic_write_text(tmp / "report.md", render_report(summary, images))
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def add_compare_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="report comparing runs: groups of seeds with 95%% intervals, winner "
                                              "per budget axis",
                              description="Reads config.yaml, metrics.jsonl and eval/step-*.jsonl of each run, groups "
                                          "runs by method and recipe (seeds of one recipe form a group), and writes "
                                          "report.md, plots and summary.json (docs/compare.md explains them).")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="folders written by `eggroll-llm train`")
    p.add_argument("--out", type=Path, default=Path("compare"),
                   help="report folder (default: ./compare); an existing one must hold a previous report, and is "
                        "replaced only with --force")
    p.add_argument("--force", action="store_true", help="replace --out when it holds a previous compare report")
    p.add_argument("--target", "--target-accuracy", type=float, dest="target",
                   help="score for budget-to-target (an accuracy as a fraction, e.g. 0.6); default: the lowest of "
                        "the groups' mean best scores above the start")
    p.add_argument("--drift", action="store_true",
                   help="also what each run changed and forgot: off-task KL, ‖ΔW‖, effective rank, the cosine of "
                        "ΔW across a group's seeds, and who forgets less (docs/compare.md, 'Drift')")
    p.add_argument("--off-task", "--off_task", dest="off_task", type=Path,
                   help="with --drift: off-task text, jsonl (text or prompt field) or txt (default for embedded "
                        "models: held-out text of their own pretraining distribution)")
    p.add_argument("--eval_limit", "--eval-limit", dest="eval_limit", type=int,
                   help="with --drift: held-out problems per evaluation (default: the runs' data.eval_limit)")
    p.add_argument("--labels", help="comma-separated names, one per group in order of first appearance (default: "
                                    "method, plus the recipe keys that tell groups of one method apart)")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    if (args.off_task or args.eval_limit is not None) and not args.drift:
        raise ValueError("--off-task and --eval_limit measure drift: add --drift")
    summary = compare(args.runs, args.out, args.target, labels, force=args.force, drift=args.drift,
                      off_task=args.off_task, eval_limit=args.eval_limit)
    print(groups_table(summary), winners_table(summary), sep="\n\n")
    print(f"\nreport written to {Path(args.out) / 'report.md'}")
    return 0
