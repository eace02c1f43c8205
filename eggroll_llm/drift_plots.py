"""The plots beside drift.json (drift.py computes the numbers, this module only draws them):

- accuracy_vs_off_task_kl.png: each run's held-out accuracy against its off-task KL(base ‖ tuned), one colour per
  method (up and to the left is better: learned the task, forgot little);
- interpolation.png: accuracy and off-task KL along θ(α) = θ_A + α(θ_B − θ_A) for every pair of runs.
"""

from __future__ import annotations

from pathlib import Path

from .compare_report import _save_figure


def write_drift_plots(result: dict, out: Path) -> list[str]:
    """Write the plots of a drift result into `out`; returns their file names."""
    from matplotlib.figure import Figure  # no pyplot: no global backend switch (compare_report.write_plots)

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    methods = sorted({r["method"] for r in result["runs"].values()})
    for method in methods:
        runs = {k: r for k, r in result["runs"].items() if r["method"] == method}
        ax.scatter([r["off_task_kl"] for r in runs.values()], [r["eval_accuracy"] for r in runs.values()],
                   label=method)
        for label, r in runs.items():
            ax.annotate(label, (r["off_task_kl"], r["eval_accuracy"]), fontsize=6, alpha=0.7)
    ax.set(xlabel="off-task KL(base ‖ tuned) per token", ylabel="held-out accuracy",
           title="Accuracy vs off-task drift")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    names = ["accuracy_vs_off_task_kl.png"]
    _save_figure(fig, out / names[-1])
    if any(pair["interpolation"] for pair in result["pairs"]):
        fig = Figure(figsize=(9.6, 4.0))
        acc, kl = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for pair in (p for p in result["pairs"] if p["interpolation"]):
            alphas = [p["alpha"] for p in pair["interpolation"]]
            label = f"{pair['a']} → {pair['b']}"
            acc.plot(alphas, [p["eval_accuracy"] for p in pair["interpolation"]], marker="o", label=label)
            kl.plot(alphas, [p["off_task_kl"] for p in pair["interpolation"]], marker="o", label=label)
        acc.set(xlabel="α (0: run a, 1: run b)", ylabel="held-out accuracy", title="Accuracy along θ(α)")
        kl.set(xlabel="α (0: run a, 1: run b)", ylabel="off-task KL per token", title="Off-task KL along θ(α)")
        for ax in (acc, kl):
            ax.grid(alpha=0.3)
        acc.legend(fontsize=6)
        names.append("interpolation.png")
        _save_figure(fig, out / names[-1])
    return names
