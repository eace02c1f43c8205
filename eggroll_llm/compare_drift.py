"""`eggroll-llm compare --drift`: what each group's runs changed and forgot, beside what they learned.

Per run, drift.py's figures (summary.json's runs.*.drift, the keys of drift.json's runs); per group, the mean and 95%
interval over seeds of off-task KL, off-task loss change, ‖ΔW‖, relative ‖ΔW‖, moved fraction and effective rank, and
the mean pairwise cosine of ΔW across the group's seeds (run-to-run stability of the update's direction). The winner
table adds who forgets less (lower off-task KL) and who changes the model less (lower ‖ΔW‖), beside the final score.

    eggroll-llm compare runs/eggroll-s0 runs/eggroll-s1 runs/grpo-s0 runs/grpo-s1 --drift --out compare/
"""

from __future__ import annotations

import itertools
from pathlib import Path

from .stats import mean_interval, pick_winner

DRIFT_AXES = {"off_task_kl": "off-task KL (base ‖ tuned) per token", "off_task_loss_change": "off-task LM-loss change",
              "delta_norm": "‖ΔW‖_F", "relative_delta_norm": "‖ΔW‖_F / ‖W‖_F", "moved_fraction": "moved fraction",
              "effective_rank": "effective rank (median over modules)"}


def attach_drift(per_run: dict, groups: dict[str, list], *, off_task: str | Path | None = None,
                 eval_limit: int | None = None) -> dict:
    """Add runs.*.drift to `per_run` (compare's per-run summaries, keyed by run label); return the groups' drift
    figures {group: {axis: Interval, "seed_cosine": Interval}} and the off-task set used. `groups`: compare's groups
    of Run objects."""
    from .drift import drift

    runs = [run for members in groups.values() for run in members]
    index = {id(run): i for i, run in enumerate(runs)}
    within = [(index[id(a)], index[id(b)])
              for members in groups.values() for a, b in itertools.combinations(members, 2)]
    result = drift([run.path for run in runs], None, off_task=off_task, eval_limit=eval_limit, pairs=within,
                   interpolate=False)
    labels = list(result["runs"])
    for run, label in zip(runs, labels):
        per_run[run.label]["drift"] = result["runs"][label]
    cosines: dict[str, list[float]] = {}
    for pair in result["pairs"]:
        group = runs[labels.index(pair["a"])].group
        if pair["cosine"] is not None:
            cosines.setdefault(group, []).append(pair["cosine"])
    figures = {}
    for name, members in groups.items():
        rows = [per_run[run.label]["drift"] for run in members]
        figures[name] = {axis: mean_interval([r[axis] for r in rows if r[axis] is not None]) for axis in DRIFT_AXES}
        figures[name]["seed_cosine"] = mean_interval(cosines.get(name, []))
    return {"groups": figures, "off_task": result["off_task"], "eval": result["eval"]}


def drift_winners(figures: dict[str, dict]) -> dict:
    """Who forgets less (lower off-task KL) and who changes the model less (lower ‖ΔW‖), with compare's test."""
    return {"off_task_kl": pick_winner({g: f["off_task_kl"] for g, f in figures.items()}, higher=False),
            "delta_norm": pick_winner({g: f["delta_norm"] for g, f in figures.items()}, higher=False)}


def drift_section(summary: dict) -> list[str]:
    """report.md's "Drift" section: a table per group and the winners (compare_report renders the rest)."""
    from .compare_report import _table, fmt_interval, score_kind, verdict_text

    drift, groups = summary["drift"], summary["groups"]
    rows = [(f"final {summary['metric_name']}", [fmt_interval(g["final"], score_kind(summary))
                                                 for g in groups.values()])]
    for axis, label in DRIFT_AXES.items():
        rows.append((label, [fmt_interval(drift["groups"][g][axis], "sci") for g in groups]))
    rows.append(("mean pairwise cosine of ΔW across seeds",
                 [fmt_interval(drift["groups"][g]["seed_cosine"], "score") for g in groups]))
    winners = drift["winners"]
    return ["\n## Drift: what each group changed and forgot\n",
            f"Off-task text: {drift['off_task']['source']} ({drift['off_task']['rows']} rows). KL is measured on the "
            "base model's greedy continuations of its prompts; loss change is tuned − base on its text. "
            "docs/compare.md, \"Drift\", explains every figure.\n",
            _table(list(groups), rows), "",
            f"- forgets less (lower off-task KL): {verdict_text(winners['off_task_kl'])}",
            f"- changes the model less (lower ‖ΔW‖): {verdict_text(winners['delta_norm'])}",
            f"- final {summary['metric_name']}: {verdict_text(summary['winners']['final'])}"]


def write_drift_plot(summary: dict, out: Path) -> str:
    """accuracy_vs_off_task_kl.png: every run's final score against its off-task KL, one colour per group, the
    group's mean with its 95% intervals as error bars."""
    from matplotlib.figure import Figure

    from .compare_report import _save_figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for name in summary["groups"]:
        runs = [r for r in summary["runs"].values() if r["group"] == name]
        points = ax.scatter([r["drift"]["off_task_kl"] for r in runs], [r["final"] for r in runs], alpha=0.5)
        kl, final = summary["drift"]["groups"][name]["off_task_kl"], summary["groups"][name]["final"]
        ax.errorbar(kl["mean"], final["mean"], xerr=kl["half_width"] or 0, yerr=final["half_width"] or 0, fmt="s",
                    color=points.get_facecolor()[0], alpha=1.0, capsize=3, label=name)
    ax.set(xlabel="off-task KL(base ‖ tuned) per token", ylabel=f"final {summary['metric_name']}",
           title="What each group learned against what it forgot")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_figure(fig, out / "accuracy_vs_off_task_kl.png")
    return "accuracy_vs_off_task_kl.png"
