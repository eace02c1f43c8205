"""`eggroll-llm compare`: turn two or more run directories into one report — a table, plots and a summary.

DESIGN.md §6: EGGROLL and GRPO are compared on equal-budget accounting, read from the keys both trainers write to
metrics.jsonl (runlog.py): wall-clock, completions, tokens, peak memory, and held-out accuracy at fixed intervals.
Time-to-target defaults to the lowest of the runs' best accuracies, so every run reaches it at least once and the
"who gets there first" question always has an answer.

    eggroll-llm compare runs/tiny-arith-eggroll runs/tiny-arith-grpo --out compare/
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml

from .io import atomic_file, atomic_write_text
from .runlog import MetricsLog

NOT_A_RUN = "{} is not a run directory ({}); pass folders written by `eggroll-llm train`"


class RunDirError(ValueError):
    """A folder passed to `compare` that does not hold a readable run."""


def load_run(path: str | Path) -> tuple[dict, list[dict]]:
    """(resolved config, metrics records sorted by step) of a run directory; raises RunDirError on anything else."""
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
    except json.JSONDecodeError as err:
        raise RunDirError(f"{metrics} line {err.lineno}: not JSON ({err.msg}); the run's log is damaged") from err
    if not records:
        raise RunDirError(NOT_A_RUN.format(path, "metrics.jsonl is empty: the run stopped before its first "
                                                 "evaluation"))
    missing = [k for k in ("step", "wall_s", "completions", "tokens") if any(k not in r for r in records)]
    if missing:
        raise RunDirError(f"{metrics}: records without {', '.join(missing)}; expected the keys of DESIGN.md §7")
    if not any("eval_accuracy" in r for r in records):
        raise RunDirError(f"{metrics} has no evaluation record (eval_accuracy); every run evaluates at step 0")
    return config, sorted(records, key=lambda r: r["step"])


def lookup(config: dict, dotted: str):
    """config["model"]["name"] for "model.name"; None where the run's config lacks the key (another trainer)."""
    node = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def make_labels(configs: list[dict], paths: list[Path], labels: list[str] | None) -> list[str]:
    """`method:folder` per run (or the user's labels); repeated labels get #2, #3 so every run stays distinct."""
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"--labels names {len(labels)} runs but {len(paths)} run directories were given; "
                         "pass one label per RUN_DIR, comma-separated")
    base = labels or [f"{lookup(c, 'method') or 'run'}:{p.resolve().name}" for c, p in zip(configs, paths)]
    seen: dict[str, int] = {}
    out = []
    for label in base:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def summarize(config: dict, records: list[dict], target: float) -> dict:
    """The report's numbers for one run. Records are sorted by step; eval records carry eval_accuracy."""
    evals = [r for r in records if "eval_accuracy" in r]
    best = max(evals, key=lambda r: r["eval_accuracy"])  # max() keeps the earliest of equal bests
    reached = next((r for r in evals if r["eval_accuracy"] >= target), None)
    training = [r for r in records if r["step"] > 0]      # step 0 is the evaluation before training
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    memory = [r["peak_mem_mb"] for r in records if "peak_mem_mb" in r]
    updates = [r["updates"] for r in records if "updates" in r]
    last = records[-1]
    return {
        "method": lookup(config, "method"), "task": lookup(config, "data.task"), "model": lookup(config, "model.name"),
        "steps": last["step"], "eval_n": evals[-1].get("eval_n"),
        "final_accuracy": evals[-1]["eval_accuracy"], "final_strict_accuracy": evals[-1].get("eval_strict_accuracy"),
        "best_accuracy": best["eval_accuracy"], "best_wall_s": best["wall_s"], "best_step": best["step"],
        "time_to_target_s": reached["wall_s"] if reached else None,
        "completions_to_target": reached["completions"] if reached else None,
        "wall_s": last["wall_s"], "completions": last["completions"], "tokens": last["tokens"],
        "mean_tokens_per_s": sum(rates) / len(rates) if rates else None,
        "peak_mem_mb": max(memory) if memory else None,
        "updates": updates[-1] if updates else len(training),
    }


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start), same length as `values`."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "—"
    return {"pct": "{:.1%}", "s": "{:.1f} s", "int": "{:,}", "num": "{:,.1f}"}.get(kind, "{}").format(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a label may contain a pipe, which would split the markdown cell


def markdown_table(summaries: dict[str, dict], target: float) -> str:
    """One column per run, one row per quantity (runs are few, quantities many: this reads best)."""
    def reached(s, key, kind):
        return "not reached" if s[key] is None else _fmt(s[key], kind)

    rows = [
        ("method", lambda s: _fmt(s["method"])), ("task", lambda s: _fmt(s["task"])),
        ("model", lambda s: _fmt(s["model"])), ("steps", lambda s: _fmt(s["steps"], "int")),
        ("held-out examples", lambda s: _fmt(s["eval_n"], "int")),
        ("final accuracy", lambda s: _fmt(s["final_accuracy"], "pct")),
        ("best accuracy (at wall-clock)", lambda s: f"{_fmt(s['best_accuracy'], 'pct')} at "
                                                    f"{_fmt(s['best_wall_s'], 's')} (step {s['best_step']})"),
        (f"wall-clock to {target:.1%}", lambda s: reached(s, "time_to_target_s", "s")),
        (f"completions to {target:.1%}", lambda s: reached(s, "completions_to_target", "int")),
        ("wall-clock (total)", lambda s: _fmt(s["wall_s"], "s")),
        ("completions generated", lambda s: _fmt(s["completions"], "int")),
        ("tokens generated", lambda s: _fmt(s["tokens"], "int")),
        ("mean tokens/s", lambda s: _fmt(s["mean_tokens_per_s"], "num")),
        ("peak memory (MB)", lambda s: _fmt(s["peak_mem_mb"], "num")),
        ("optimizer updates", lambda s: _fmt(s["updates"], "int")),
    ]
    lines = ["| | " + " | ".join(_cell(label) for label in summaries) + " |",
             "|---|" + "---|" * len(summaries)]
    lines += [f"| {name} | " + " | ".join(_cell(f(s)) for s in summaries.values()) + " |" for name, f in rows]
    return "\n".join(lines)


def _winners(summaries: dict[str, dict], key: str, best=min) -> tuple[list[str], object]:
    values = {label: s[key] for label, s in summaries.items() if s[key] is not None}
    if not values:
        return [], None
    top = best(values.values())
    return [label for label, v in values.items() if v == top], top


def _names(labels: list[str], singular: str, plural: str) -> str:
    """'**a** reaches' or '**a** and **b** reach (tied)'-style subject + verb."""
    if len(labels) == 1:
        return f"**{labels[0]}** {singular}"
    return " and ".join(f"**{label}**" for label in labels) + f" (tied) {plural}"


def where_each_wins(summaries: dict[str, dict], target: float) -> str:
    """A factual paragraph: first to the target (wall-clock, completions), best final accuracy, throughput, memory."""
    if len(summaries) < 2:
        return "One run only: nothing to compare."
    fastest, seconds = _winners(summaries, "time_to_target_s")
    thrifty, completions = _winners(summaries, "completions_to_target")
    missed = [label for label, s in summaries.items() if s["time_to_target_s"] is None]
    final, accuracy = _winners(summaries, "final_accuracy", max)
    rate, tokens_per_s = _winners(summaries, "mean_tokens_per_s", max)
    memory, mb = _winners(summaries, "peak_mem_mb")
    sentences = [f"{_names(fastest, 'reaches', 'reach')} {target:.1%} held-out accuracy first in wall-clock "
                 f"({seconds:.1f} s)" if fastest else f"No run reaches {target:.1%} held-out accuracy"]
    if thrifty:
        sentences.append(f"{_names(thrifty, 'is', 'are')} the most completion-efficient, reaching it after "
                         f"{completions:,} completions")
    if missed and fastest:
        sentences.append(f"{_names(missed, 'never reaches', 'never reach')} it".replace(" (tied)", ""))
    sentences.append(f"{_names(final, 'has', 'have')} the best final accuracy ({accuracy:.1%})")
    if rate:
        sentences.append(f"{_names(rate, 'generates', 'generate')} the most tokens/s ({tokens_per_s:,.1f})")
    if memory:
        sentences.append(f"{_names(memory, 'has', 'have')} the lowest peak memory ({mb:,.1f} MB)")
    return ". ".join(sentences) + "."


def _save_figure(fig, path: Path) -> None:
    """PNG to a temporary sibling, then rename: a reader never sees half an image."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def write_plots(runs: dict[str, list[dict]], target: float, out: Path) -> list[str]:
    """accuracy_vs_wall.png, accuracy_vs_completions.png, reward.png in `out`; returns their file names."""
    # matplotlib.figure.Figure renders through Agg without pyplot: no global backend switch, no open-figure registry
    # (pyplot would change the backend of a notebook that calls this).
    from matplotlib.figure import Figure

    for x_key, xlabel, name in (("wall_s", "wall-clock (s)", "accuracy_vs_wall.png"),
                                ("completions", "completions generated", "accuracy_vs_completions.png")):
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        for label, records in runs.items():
            evals = [r for r in records if "eval_accuracy" in r]
            ax.plot([r[x_key] for r in evals], [r["eval_accuracy"] for r in evals], marker="o", label=label)
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.1%}")
        ax.set(xlabel=xlabel, ylabel="held-out accuracy", title=f"Held-out accuracy vs {xlabel}")
        ax.grid(alpha=0.3)
        ax.legend()
        _save_figure(fig, out / name)

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for label, records in runs.items():
        trained = [r for r in records if "reward_mean" in r]
        steps, rewards = [r["step"] for r in trained], [r["reward_mean"] for r in trained]
        line, = ax.plot(steps, rewards, alpha=0.3, linewidth=1)
        window = max(1, min(25, len(rewards) // 10))  # light smoothing: ~10% of the run, at most 25 steps
        name = label if window == 1 else f"{label} (rolling mean of {window})"
        ax.plot(steps, rolling_mean(rewards, window), color=line.get_color(), label=name)
    ax.set(xlabel="step", ylabel="mean training reward", title="Training reward")
    ax.grid(alpha=0.3)
    ax.legend()
    _save_figure(fig, out / "reward.png")
    return ["accuracy_vs_wall.png", "accuracy_vs_completions.png", "reward.png"]


def compare(run_dirs: list[str | Path], out: str | Path = "compare", target_accuracy: float | None = None,
            labels: list[str] | None = None) -> dict:
    """Write report.md, the plots and summary.json into `out`; returns the summary (what summary.json holds)."""
    if target_accuracy is not None and not 0.0 <= target_accuracy <= 1.0:
        raise ValueError(f"--target-accuracy is a fraction in [0, 1], got {target_accuracy}; e.g. 0.6 for 60%")
    paths = [Path(p) for p in run_dirs]
    loaded = [load_run(p) for p in paths]                # every folder is checked before anything is written
    names = make_labels([c for c, _ in loaded], paths, labels)
    tasks = {lookup(c, "data.task") for c, _ in loaded}
    # the held-out set a run's accuracies are measured on: its split and how many examples of it
    held_out = {(lookup(c, "data.eval_split"), [r for r in records if "eval_accuracy" in r][-1].get("eval_n"))
                for c, records in loaded}
    if len(tasks) > 1:
        warnings.warn(f"runs are on different tasks ({', '.join(sorted(map(str, tasks)))}): their accuracies are "
                      "not comparable", stacklevel=2)
    elif len(held_out) > 1:
        sets = ", ".join(sorted(f"{n} of {split}" for split, n in held_out))
        warnings.warn(f"runs are evaluated on different held-out sets ({sets}): their accuracies are not comparable; "
                      "use the same data.eval_split and data.eval_limit", stacklevel=2)
    bests = [max(r["eval_accuracy"] for r in records if "eval_accuracy" in r) for _, records in loaded]
    target = min(bests) if target_accuracy is None else target_accuracy
    summaries = {name: {"run_dir": str(path), **summarize(config, records, target)}
                 for name, path, (config, records) in zip(names, paths, loaded)}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = write_plots({name: records for name, (_, records) in zip(names, loaded)}, target, out)
    source = "lowest of the runs' best accuracies" if target_accuracy is None else "--target-accuracy"
    report = ["# Run comparison\n", f"Target accuracy: {target:.1%} ({source}).\n",
              markdown_table(summaries, target), "\n## Curves\n",
              *[f"![{image.removesuffix('.png').replace('_', ' ')}]({image})\n" for image in images],
              "## Where each wins\n", where_each_wins(summaries, target)]
    atomic_write_text(out / "report.md", "\n".join(report) + "\n")
    summary = {"target_accuracy": target, "target_source": source, "runs": summaries}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def add_compare_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="report (table + plots) comparing two or more run directories",
                              description="Reads config.yaml and metrics.jsonl of each run and writes report.md, "
                                          "accuracy_vs_wall.png, accuracy_vs_completions.png, reward.png and "
                                          "summary.json.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="folders written by `eggroll-llm train`")
    p.add_argument("--out", type=Path, default=Path("compare"), help="report folder (default: ./compare, created)")
    p.add_argument("--target-accuracy", type=float, help="accuracy for time-to-target, a fraction (default: the "
                                                         "lowest of the runs' best accuracies)")
    p.add_argument("--labels", help="comma-separated names, one per RUN_DIR (default: method:folder name)")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    summary = compare(args.runs, args.out, args.target_accuracy, labels)
    print(markdown_table(summary["runs"], summary["target_accuracy"]))
    print(f"\nreport written to {Path(args.out) / 'report.md'}")
    return 0
