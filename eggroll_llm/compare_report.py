"""What `eggroll-llm compare` writes from a summary: report.md's tables and text, and the plots.

compare.py computes the summary (the content of summary.json); this module only presents it, so report.md and
summary.json can never disagree. docs/compare.md shows how to read both.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .io import atomic_file
from .stats import CONFIDENCE, t_quantile

AXIS_KIND = {"wall_s": "s", "completions": "int", "tokens": "int", "flops": "sci"}


def _fmt(value, kind: str = "") -> str:
    if value is None:
        return "—"
    return {"pct": "{:.1%}", "s": "{:.1f} s", "int": "{:,.0f}", "num": "{:,.1f}", "score": "{:.3f}",
            "sci": "{:.3g}"}.get(kind, "{}").format(value)


def _cell(text) -> str:
    return str(text).replace("|", "\\|")  # a label may contain a pipe, which would split the markdown cell


def score_kind(summary: dict) -> str:
    return "pct" if summary["metric"] == "eval_accuracy" else "score"


def fmt_interval(interval: dict, kind: str) -> str:
    """'60.0% ± 24.8%' (mean ± half-width of the 95% interval), the value alone for one seed, '—' for none."""
    if not interval["n"]:
        return "—"
    if interval["half_width"] is None:
        return _fmt(interval["mean"], kind)
    return f"{_fmt(interval['mean'], kind)} ± {_fmt(interval['half_width'], kind)}"


def fmt_to_target(entry: dict, kind: str) -> str:
    if not entry["reached"]:
        return f"not reached (0/{entry['runs']})"
    text = fmt_interval(entry["interval"], kind)
    return text if entry["runs"] == 1 else f"{text} ({entry['reached']}/{entry['runs']} reached)"


def _table(columns: list[str], rows: list[tuple[str, list[str]]]) -> str:
    lines = ["| | " + " | ".join(map(_cell, columns)) + " |", "|---|" + "---|" * len(columns)]
    return "\n".join(lines + [f"| {_cell(name)} | " + " | ".join(map(_cell, cells)) + " |" for name, cells in rows])


def _target_text(summary: dict) -> str:
    return "the target" if summary["target"] is None else _fmt(summary["target"], score_kind(summary))


def groups_table(summary: dict) -> str:
    """One column per group, one row per figure: mean ± 95% interval over the group's seeds."""
    groups, kind, name = summary["groups"], score_kind(summary), summary["metric_name"]
    rows = [("method", [_fmt(g["method"]) for g in groups.values()]),
            ("seeds", [", ".join(map(str, g["seeds"])) + (" (one seed: no interval)" if g["n"] == 1 else "")
                       for g in groups.values()]),
            ("held-out examples", [", ".join(map(str, g["eval_n"])) for g in groups.values()])]
    for key, label in (("start", "start"), ("final", "final"), ("best", "best")):
        rows.append((f"{label} {name}", [fmt_interval(g[key], kind) for g in groups.values()]))
    for key, axis in summary["axes"].items():
        if summary["target"] is None:
            cells = ["no target: no group improved"] * len(groups)
        else:
            cells = [fmt_to_target(g["to_target"][key], AXIS_KIND[key]) for g in groups.values()]
        rows.append((f"{axis['name']} to {_target_text(summary)}", cells))
    for key, axis in summary["axes"].items():
        rows.append((f"mean {name} over {axis['name']} 0–{_fmt(axis['span'][1], AXIS_KIND[key])}",
                     [fmt_interval(g["area"][key], kind) for g in groups.values()]))
    for key, axis in summary["axes"].items():
        rows.append((f"{axis['name']} (total)", [fmt_interval(g["totals"][key], AXIS_KIND[key])
                                                 for g in groups.values()]))
    rows += [("mean tokens/s", [fmt_interval(g["mean_tokens_per_s"], "num") for g in groups.values()]),
             ("peak memory (MB)", [fmt_interval(g["peak_mem_mb"], "num") for g in groups.values()]),
             ("optimizer updates", [fmt_interval(g["updates"], "int") for g in groups.values()])]
    return _table(list(groups), rows)


def verdict_text(entry: dict) -> str:
    if entry["winner"]:
        return f"**{entry['winner']}**" + (" (paired test)" if "paired" in entry["verdict"] else "")
    if entry["leader"] and entry["verdict"].startswith("no significant difference"):
        return f"{entry['verdict']} ({entry['leader']} ahead)"
    if entry["leader"]:
        return f"{entry['leader']} ahead ({entry['verdict']})"
    return entry["verdict"]


def winners_table(summary: dict) -> str:
    """Winner per budget axis: by the mean score over the common budget, and by the budget to the target."""
    lines = [f"| budget axis | higher mean {summary['metric_name']} over the budget | first to "
             f"{_target_text(summary)} |", "|---|---|---|"]
    for key, axis in summary["axes"].items():
        entry = summary["winners"][key]
        lines.append(f"| {axis['name']} | {_cell(verdict_text(entry['area']))} | "
                     f"{_cell(verdict_text(entry['to_target']))} |")
    lines.append(f"| final {summary['metric_name']} | {_cell(verdict_text(summary['winners']['final']))} | |")
    return "\n".join(lines)


def paired_text(paired: dict, kind: str) -> str:
    first, second = paired["runs"]
    sign = "{:+.1f} points" if kind == "pct" else "{:+.3f}"
    scale = 100 if kind == "pct" else 1
    text = (f"**{first}** − **{second}** on the {paired['n']} problems of their final evaluations (steps "
            f"{paired['steps'][0]} and {paired['steps'][1]}): {sign.format(scale * paired['difference'])}, 95% "
            f"bootstrap interval [{sign.format(scale * paired['low'])}, {sign.format(scale * paired['high'])}] over "
            "problems.")
    if "mcnemar_p" in paired:
        text += (f" {paired['only_first']} problems are solved by {first} only and {paired['only_second']} by "
                 f"{second} only: exact McNemar p = {paired['mcnemar_p']:.3g}.")
    return text + (" The difference is significant." if paired["significant"] else
                   " No significant difference.")


def runs_table(summary: dict) -> str:
    runs, kind, name = summary["runs"], score_kind(summary), summary["metric_name"]
    rows = [("group", [r["group"] for r in runs.values()]), ("seed", [_fmt(r["seed"]) for r in runs.values()]),
            ("steps", [_fmt(r["steps"], "int") for r in runs.values()]),
            (f"final {name}", [_fmt(r["final"], kind) for r in runs.values()])]
    if summary["metric"] == "eval_accuracy":
        rows.append(("final strict accuracy", [_fmt(r["final_strict_accuracy"], kind) for r in runs.values()]))
    rows.append((f"best {name} (at wall-clock)", [f"{_fmt(r['best'], kind)} at {_fmt(r['best_wall_s'], 's')} "
                                                  f"(step {r['best_step']})" for r in runs.values()]))
    for key, axis in summary["axes"].items():
        rows.append((f"{axis['name']} to {_target_text(summary)}",
                     ["no target: no group improved" if summary["target"] is None else
                      "not reached" if r["to_target"][key] is None else _fmt(r["to_target"][key], AXIS_KIND[key])
                      for r in runs.values()]))
    for key, axis in summary["axes"].items():
        rows.append((f"{axis['name']} (total)", [_fmt(r["totals"][key], AXIS_KIND[key]) for r in runs.values()]))
    rows += [("mean tokens/s", [_fmt(r["mean_tokens_per_s"], "num") for r in runs.values()]),
             ("peak memory (MB)", [_fmt(r["peak_mem_mb"], "num") for r in runs.values()]),
             ("optimizer updates", [_fmt(r["updates"], "int") for r in runs.values()])]
    return _table(list(runs), rows)


def render_report(summary: dict, images: list[str]) -> str:
    kind = score_kind(summary)
    target = (f"Target: {_fmt(summary['target'], kind)} ({summary['target_source']})." if summary["target"] is not None
              else f"No target: {summary['target_source']}, so no budget-to-target figure is given.")
    parts = [
        "# Run comparison\n",
        f"Score: {summary['metric_name']} (`{summary['metric']}`); start {_fmt(summary['start'], kind)} (the "
        f"highest step-0 score). {target}\n",
        f"Runs are grouped by method and recipe; a group's seeds are its samples. A cell reads mean ± half-width of "
        f"the {CONFIDENCE:.0%} t-interval over seeds; a group of one seed has no interval. \"mean … over\" a budget "
        "axis is the area under the score-vs-budget curve divided by the budget range, which is common to all "
        "runs (0 to the smallest run's budget). docs/compare.md explains every figure.\n",
        "## Groups\n", groups_table(summary),
        "\n## Winner per axis\n",
        "A winner's interval clears every other group's; where intervals overlap there is no significant difference. "
        "To the target, only a group whose every seed reaches it can win; seeds that never reach it count at their "
        "total budget, a lower bound.\n", winners_table(summary),
    ]
    if summary["paired"] and summary["paired"]["available"]:
        parts += ["\n## Paired comparison\n", paired_text(summary["paired"], kind)]
    if "drift" in summary:
        from .compare_drift import drift_section

        parts += drift_section(summary)
    parts += ["\n## Runs\n", runs_table(summary), "\n## Curves\n",
              *[f"![{image.removesuffix('.png').replace('_', ' ')}]({image})\n" for image in images]]
    if summary["notes"]:
        parts += ["## Notes\n", *[f"- {note}" for note in summary["notes"]]]
    return "\n".join(parts) + "\n"


def _band(curves: list[tuple[list[float], list[float]]], points: int = 200):
    """Mean and 95% t-band of piecewise-linear curves on a common grid, over the x range every curve covers.

    curves: per seed (x, y) with x increasing. Returns (grid [points], mean [points], half [points] or None).
    """
    grid = np.linspace(max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves), points)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])  # [seeds, points]
    if len(curves) < 2:
        return grid, ys[0], None
    half = t_quantile((1 + CONFIDENCE) / 2, len(curves) - 1) * ys.std(axis=0, ddof=1) / math.sqrt(len(curves))
    return grid, ys.mean(axis=0), half


def _save_figure(fig, path: Path) -> None:
    """PNG to a temporary sibling, then rename: a reader never sees half an image."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start), same length as `values`."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def write_plots(groups: dict[str, list[tuple[list[dict], dict[str, list[float]]]]], metric: str, axes: list,
                target: float | None, out: Path) -> list[str]:
    """<score>_vs_<axis>.png per budget axis and reward.png in `out`: each group's mean over seeds with its
    shaded 95% band (faint lines: the seeds). `groups`: per group, per seed (records, budgets per axis)."""
    # matplotlib.figure.Figure renders through Agg without pyplot: no global backend switch, no open-figure registry
    # (pyplot would change the backend of a notebook that calls this).
    from matplotlib.figure import Figure

    prefix = "accuracy" if metric == "eval_accuracy" else metric
    ylabel = "held-out accuracy" if metric == "eval_accuracy" else "held-out reward"
    names = []
    for axis in axes:
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        for label, seeds in groups.items():
            curves = [([b[axis.key][i] for i, r in enumerate(records) if metric in r],
                       [r[metric] for r in records if metric in r]) for records, b in seeds]
            _draw(ax, label, curves)
        if target is not None:
            ax.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.3g}")
        xlabel = f"{axis.name} ({axis.unit})" if axis.unit else axis.name
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel.capitalize()} vs {axis.name}")
        ax.grid(alpha=0.3)
        ax.legend()
        names.append(f"{prefix}_vs_{axis.file_suffix}.png")
        _save_figure(fig, out / names[-1])

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for label, seeds in groups.items():
        trained = [[r for r in records if "reward_mean" in r] for records, _ in seeds]
        if not all(trained):
            continue
        window = max(1, min(25, min(map(len, trained)) // 10))  # light smoothing: ~10% of the run, at most 25 steps
        curves = [([r["step"] for r in t], rolling_mean([r["reward_mean"] for r in t], window)) for t in trained]
        _draw(ax, label if window == 1 else f"{label}, rolling mean of {window}", curves)
    ax.set(xlabel="step", ylabel="mean training reward", title="Training reward")
    ax.grid(alpha=0.3)
    ax.legend()
    _save_figure(fig, out / "reward.png")
    return [*names, "reward.png"]


def _draw(ax, label: str, curves: list[tuple[list[float], list[float]]]) -> None:
    """One group: the mean over seeds with its 95% band, the seeds themselves as faint lines."""
    grid, mean, half = _band(curves)
    line, = ax.plot(grid, mean, label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
    for x, y in curves:
        ax.plot(x, y, color=line.get_color(), alpha=0.25, linewidth=0.8,
                marker="o" if len(curves) == 1 else None, markersize=3)
    if half is not None:
        ax.fill_between(grid, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)
