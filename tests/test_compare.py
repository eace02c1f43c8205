"""`eggroll-llm compare`: synthetic run directories in, report numbers checked against values worked out by hand.

Expected means, intervals, areas and p-values are computed here from their definitions (closed-form t quantiles,
binomial sums, trapezoids), never by calling the code under test.
"""

import argparse
import json
import math
import warnings
from pathlib import Path

import pytest
import yaml

from eggroll_llm import cli
from eggroll_llm.budget import training_flops
from eggroll_llm.compare import CompareError, RunDirError, add_compare_parser, compare
from eggroll_llm.compare_report import rolling_mean
from eggroll_llm.stats import bootstrap_interval, mcnemar_exact, mean_interval, normalised_area, t_quantile

P975 = 0.975


def t975_df2() -> float:
    """t_{0.975, 2} in closed form: for 2 degrees of freedom the t quantile is (2p - 1) / sqrt(2 p (1 - p))."""
    return (2 * P975 - 1) / math.sqrt(2 * P975 * (1 - P975))


def write_run(path: Path, *, method: str = "eggroll", seed: int = 0, accuracies: list[float], step_s: float = 2.0,
              per_step: int = 64, task: str = "tiny-arith", eval_n: int = 200, updates_per_step: int | None = None,
              params: tuple[int, int] | None = None, prompt_len: int = 12, metric: str = "eval_accuracy",
              config: dict | None = None) -> Path:
    """A run evaluated at steps 0, 2, 4, … with the given scores; `step_s` seconds and `per_step` completions a
    step. `params` = (model_params, trainable_params) adds the FLOPs keys (and prompt_tokens) of newer trainers."""
    path.mkdir(parents=True)
    values = {"method": method, "output_dir": str(path), "seed": seed, "max_steps": 100, "model": {"name": "tiny"},
              "data": {"task": task, "eval_split": "validation", "eval_limit": eval_n}, **(config or {})}
    (path / "config.yaml").write_text(yaml.safe_dump(values))
    records, tokens = [], 0
    for step in range(0, 2 * (len(accuracies) - 1) + 1):
        tokens += per_step * (10 + step) if step else 0  # completions grow longer as training goes on
        record = {"step": step, "wall_s": step * step_s, "completions": step * per_step, "tokens": tokens}
        if params:
            record["prompt_tokens"] = step * per_step * prompt_len
        if step == 0 and params:
            record.update(model_params=params[0], trainable_params=params[1])
        if step:
            record.update(reward_mean=0.3 + 0.02 * step + 0.05 * (-1) ** step, tokens_per_s=per_step / step_s,
                          peak_mem_mb=100.0 + 3 * step + len(method))
        if updates_per_step and step:
            record["updates"] = step * updates_per_step
        if step % 2 == 0:
            score = accuracies[step // 2]
            record.update({metric: score, "eval_n": eval_n})
            if metric == "eval_accuracy":
                record["eval_strict_accuracy"] = score / 2
        records.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_problems(run: Path, step: int, correct: list[bool], gold: list[str] | None = None) -> None:
    """RUN/eval/step-NNNNNN.jsonl: one record per held-out problem, in eval-set order."""
    gold = gold or [str(i) for i in range(len(correct))]
    rows = [{"index": i, "correct": c, "strict_correct": c, "reward": float(c), "completion": "#### 1", "gold": g}
            for i, (c, g) in enumerate(zip(correct, gold))]
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / f"step-{step:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", *argv])
    return args.func(args)


@pytest.fixture
def seeded(tmp_path):
    """3 EGGROLL seeds (final 0.5, 0.6, 0.7; 2 s and 64 completions a step) and 3 GRPO seeds (final 0.44, 0.45,
    0.46; 5 s and 16 completions a step), all starting at 0.40."""
    eggroll = [[0.40, 0.45, 0.50], [0.40, 0.55, 0.60], [0.40, 0.65, 0.70]]
    grpo = [[0.40, 0.42, 0.44], [0.40, 0.43, 0.45], [0.40, 0.41, 0.46]]
    runs = [write_run(tmp_path / f"eggroll-{s}", seed=s, accuracies=a) for s, a in enumerate(eggroll)]
    runs += [write_run(tmp_path / f"grpo-{s}", method="grpo", seed=s, accuracies=a, step_s=5.0, per_step=16,
                       updates_per_step=2) for s, a in enumerate(grpo)]
    return runs, eggroll, grpo


def test_group_means_and_t_intervals_are_exact(seeded, tmp_path):
    runs, eggroll, grpo = seeded
    summary = compare(runs, tmp_path / "out")
    assert list(summary["groups"]) == ["eggroll", "grpo"] and len(summary["runs"]) == 6
    final = summary["groups"]["eggroll"]["final"]
    half = t975_df2() * 0.1 / math.sqrt(3)  # sample sd of 0.5, 0.6, 0.7 is 0.1
    assert final["n"] == 3 and final["values"] == pytest.approx([0.5, 0.6, 0.7])
    assert final["mean"] == pytest.approx(0.6)
    assert (final["low"], final["high"]) == pytest.approx((0.6 - half, 0.6 + half))
    grpo_final = summary["groups"]["grpo"]["final"]
    assert grpo_final["mean"] == pytest.approx(0.45)
    assert grpo_final["half_width"] == pytest.approx(t975_df2() * 0.01 / math.sqrt(3))
    assert summary["groups"]["eggroll"]["seeds"] == [0, 1, 2]
    # the report shows mean ± half-width
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"| final held-out accuracy | 60.0% ± {half:.1%} | 45.0% ± {t975_df2() * 0.01 / math.sqrt(3):.1%} |" \
        in report


def test_target_budget_and_area_by_hand(seeded, tmp_path):
    runs, eggroll, grpo = seeded
    summary = compare(runs, tmp_path / "out")
    # default target: the lowest group mean best above the start 0.40 -> grpo's (0.44 + 0.45 + 0.46) / 3
    target = (0.44 + 0.45 + 0.46) / 3
    assert summary["start"] == 0.40 and summary["target"] == pytest.approx(target)
    egg, rl = summary["groups"]["eggroll"], summary["groups"]["grpo"]
    # every EGGROLL seed passes it at the step-2 evaluation: 4 s, 128 completions
    assert egg["to_target"]["wall_s"]["reached"] == 3 and egg["to_target"]["wall_s"]["interval"]["mean"] == 4.0
    assert egg["to_target"]["completions"]["interval"]["values"] == [128, 128, 128]
    # GRPO seed 0 (best 0.44) never does; which of seeds 1, 2 reach it depends only on their bests vs the target
    reached = [max(a) >= target for a in grpo]
    assert rl["to_target"]["wall_s"]["reached"] == sum(reached) and rl["to_target"]["wall_s"]["runs"] == 3
    assert rl["to_target"]["wall_s"]["interval"]["values"] == [20.0] * sum(reached)  # step 4 at 5 s a step
    # censored: the never-reaching seed counts at its total budget (20 s)
    assert rl["to_target"]["wall_s"]["censored"]["values"] == [20.0, 20.0, 20.0]
    # area: common wall-clock span is the shortest run's, 8 s; EGGROLL seed 0 evaluates at 0, 4, 8 s
    assert summary["axes"]["wall_s"]["span"] == [0.0, 8.0]
    a0, a1, a2 = eggroll[0]
    assert summary["runs"]["eggroll seed 0"]["area"]["wall_s"] == pytest.approx(((a0 + a1) / 2 * 4 + (a1 + a2) / 2 * 4)
                                                                               / 8)
    # GRPO seed 0 evaluates at 0, 10, 20 s: at 8 s it is at 0.40 + 0.8 * 0.02; the area is one trapezoid
    g0, g1, _ = grpo[0]
    assert summary["runs"]["grpo seed 0"]["area"]["wall_s"] == pytest.approx((g0 + g0 + 0.8 * (g1 - g0)) / 2)
    # completions: EGGROLL evaluates at 0, 128, 256; GRPO at 0, 32, 64 -> span 64
    assert summary["axes"]["completions"]["span"] == [0.0, 64.0]
    assert summary["runs"]["eggroll seed 1"]["area"]["completions"] == pytest.approx(
        (0.40 + 0.40 + 0.5 * (0.55 - 0.40)) / 2)
    # first to target: only EGGROLL reaches it on every seed, and its 4 s clears GRPO's censored interval [20, 20]
    assert summary["winners"]["wall_s"]["to_target"] == {"leader": "eggroll", "winner": "eggroll",
                                                         "verdict": "significant"}
    # area: EGGROLL's seeds spread too widely (0.45, 0.525, 0.6: ± 0.19) for its lead to be significant
    assert summary["winners"]["wall_s"]["area"] == {"leader": "eggroll", "winner": None,
                                                    "verdict": "no significant difference"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"| wall-clock to {target:.1%} | 4.0 s ± 0.0 s (3/3 reached) | 20.0 s ± 0.0 s ({sum(reached)}/3 reached) |" \
        in report
    assert "| wall-clock | no significant difference (eggroll ahead) | **eggroll** |" in report
    # on completions, GRPO's 2 seeds that reach the target need 64 and its third stops at 64 without: EGGROLL
    # needs 128 on every seed, but GRPO's third seed stopped before that, so no leader can be named
    assert summary["winners"]["completions"]["to_target"] == {
        "leader": None, "winner": None, "verdict": "undecided: runs that never reach it stopped sooner"}


@pytest.mark.parametrize("finals, verdict", [
    ([0.55, 0.60, 0.60], "no significant difference"),  # 0.583 ± 0.072 overlaps 0.6 ± 0.25
    ([0.30, 0.31, 0.32], "significant"),                # 0.31 ± 0.025 lies below 0.6 - 0.25 = 0.35
])
def test_winner_only_where_intervals_do_not_overlap(tmp_path, finals, verdict):
    runs = [write_run(tmp_path / f"a{s}", seed=s, accuracies=[0.25, x]) for s, x in enumerate([0.5, 0.6, 0.7])]
    runs += [write_run(tmp_path / f"b{s}", method="grpo", seed=s, accuracies=[0.25, x]) for s, x in enumerate(finals)]
    summary = compare(runs, tmp_path / "out")
    final = summary["winners"]["final"]
    assert final["leader"] == "eggroll" and final["verdict"] == verdict
    assert final["winner"] == ("eggroll" if verdict == "significant" else None)
    row = "**eggroll**" if final["winner"] else "no significant difference (eggroll ahead)"
    assert f"| final held-out accuracy | {row} | |" in (tmp_path / "out" / "report.md").read_text()


def test_one_seed_has_no_interval_and_says_so(tmp_path):
    runs = [write_run(tmp_path / "a", accuracies=[0.4, 0.5, 0.6]),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.4, 0.45, 0.5])]
    summary = compare(runs, tmp_path / "out")
    final = summary["groups"]["eggroll"]["final"]
    assert final == {"mean": 0.6, "low": None, "high": None, "n": 1, "values": [0.6], "half_width": None}
    assert summary["winners"]["final"] == {"leader": "eggroll", "winner": None, "verdict": "one seed: not tested"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| final held-out accuracy | 60.0% | 50.0% |" in report
    assert "| seeds | 0 (one seed: no interval) | 0 (one seed: no interval) |" in report
    assert any(n.startswith("one seed in eggroll, grpo: no interval") for n in summary["notes"])
    assert "one seed in eggroll, grpo: no interval" in report
    # no per-problem records: no paired comparison, and the report says why
    assert summary["paired"]["available"] is False and "no paired comparison" in report


def test_paired_mcnemar_and_bootstrap_on_a_constructed_table(tmp_path):
    # 20 problems: both right on 6, only the first on 8, only the second on 2, neither on 4
    first = [True] * 6 + [True] * 8 + [False] * 2 + [False] * 4
    second = [True] * 6 + [False] * 8 + [True] * 2 + [False] * 4
    runs = [write_run(tmp_path / "a", accuracies=[0.4, 0.5, sum(first) / 20], eval_n=20),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.4, 0.5, sum(second) / 20], eval_n=20)]
    write_problems(runs[0], 4, first)
    write_problems(runs[1], 4, second)
    paired = compare(runs, tmp_path / "out")["paired"]
    assert paired["available"] and paired["n"] == 20 and (paired["only_first"], paired["only_second"]) == (8, 2)
    assert paired["difference"] == pytest.approx((8 - 2) / 20)
    # exact McNemar: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert paired["mcnemar_p"] == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert paired["significant"] is False  # p = 0.109
    assert paired["low"] <= paired["difference"] <= paired["high"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "exact McNemar p = 0.109" in report and "## Paired comparison" in report


def test_paired_comparison_needs_the_same_problems(tmp_path):
    runs = [write_run(tmp_path / "a", accuracies=[0.4, 0.5], eval_n=4),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.4, 0.5], eval_n=4)]
    write_problems(runs[0], 2, [True, False, True, False], gold=["1", "2", "3", "4"])
    write_problems(runs[1], 2, [True, True, False, False], gold=["1", "2", "3", "5"])
    summary = compare(runs, tmp_path / "out")
    assert summary["paired"]["available"] is False and "not on the same problems" in summary["paired"]["why"]


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0                          # capped at 1
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 2**6)      # all discordant pairs one way: 2 * (1/2)^6
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(60, 40) < 0.06 < mcnemar_exact(59, 41)  # the 5% boundary lies between, as for a fair coin
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_bootstrap_is_deterministic_and_brackets_the_mean():
    values = [1, 0, 0, 1, 1, 0, 1, 1, -1, 0] * 5
    first = bootstrap_interval(values)
    assert first == bootstrap_interval(values)                 # seeded: the same interval every time
    assert first != bootstrap_interval(values, seed=1)         # and the seed is what fixes it
    mean = sum(values) / len(values)
    assert first[0] < mean < first[1]
    assert bootstrap_interval([0.25] * 7) == (0.25, 0.25)      # no spread, no width


def test_t_quantile_matches_closed_forms_and_tables():
    assert t_quantile(P975, 1) == pytest.approx(math.tan(math.pi * (P975 - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(P975, 2) == pytest.approx(t975_df2(), rel=1e-9)
    for df, table in ((3, 3.182446305), (4, 2.776445105), (10, 2.228138852), (30, 2.042272456)):
        assert t_quantile(P975, df) == pytest.approx(table, rel=1e-8)  # Abramowitz & Stegun table 26.10
    assert mean_interval([0.7]).low is None and mean_interval([]).mean is None


def test_normalised_area_by_hand():
    assert normalised_area([0, 10, 20], [0.0, 1.0, 1.0], 20) == pytest.approx((5 + 10) / 20)
    assert normalised_area([0, 10, 20], [0.0, 1.0, 1.0], 15) == pytest.approx((5 + 5) / 15)  # cut at 15
    with pytest.raises(ValueError, match="covers"):
        normalised_area([0, 10], [0.0, 1.0], 15)


def test_default_target_skips_a_group_that_did_not_improve(tmp_path):
    runs = [write_run(tmp_path / "flat", accuracies=[0.5, 0.5, 0.5]),
            write_run(tmp_path / "up", method="grpo", accuracies=[0.5, 0.625, 0.75])]
    summary = compare(runs, tmp_path / "out")
    assert summary["target"] == 0.75  # the flat group's best (0.5) is the start, not above it
    assert summary["runs"]["eggroll seed 0"]["to_target"]["wall_s"] is None
    assert summary["runs"]["grpo seed 0"]["to_target"]["wall_s"] == 8.0


def test_default_target_when_no_run_improved(tmp_path):
    runs = [write_run(tmp_path / "a", accuracies=[0.5, 0.5, 0.375]),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.5, 0.25, 0.5])]
    out = tmp_path / "out"
    assert run_cli([str(r) for r in runs] + ["--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["start"] == 0.5 and summary["target"] is None
    assert summary["target_source"] == "no group improved on the start score on average"
    assert all(r["to_target"]["wall_s"] is None for r in summary["runs"].values())
    report = (out / "report.md").read_text()
    assert "start 50.0% (the highest step-0 score). No target: no group improved on the start score" in report
    # every budget-to-target row says why it is empty, never "0.0 s"
    rows = [line for line in report.splitlines() if " to the target |" in line]
    assert len(rows) == 3 * 2 + 1  # 3 axes in the groups and the runs table, and the winners table header
    assert all("0.0 s" not in row for row in rows)
    assert "| wall-clock to the target | no target: no group improved | no target: no group improved |" in report
    assert "| wall-clock | eggroll ahead (one seed: not tested) | no target: no group improved |" in report


def test_explicit_target_and_labels(tmp_path):
    runs = [write_run(tmp_path / "a", accuracies=[0.3, 0.55, 0.6]),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.3, 0.45, 0.5])]
    out = tmp_path / "out"
    assert run_cli([str(r) for r in runs] + ["--out", str(out), "--target-accuracy", "0.59", "--labels", "es, rl"]) \
        == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["groups"]) == ["es", "rl"] and summary["target_source"] == "--target"
    assert summary["runs"]["es seed 0"]["to_target"]["wall_s"] == 8.0  # 0.60 at step 4
    assert summary["runs"]["rl seed 0"]["to_target"]["wall_s"] is None
    assert "| wall-clock to 59.0% | 8.0 s | not reached (0/1) |" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="fraction"):
        compare(runs, tmp_path / "other", target=59.0)
    with pytest.raises(ValueError, match="one label per group"):
        compare(runs, tmp_path / "other", labels=["only-one"])


def test_recipes_group_runs_and_name_what_differs(tmp_path):
    runs = [write_run(tmp_path / f"s{sigma}-{seed}", seed=seed, accuracies=[0.4, 0.5], config={"es": {"sigma": sigma}})
            for sigma in (0.01, 0.05) for seed in (0, 1)]
    runs.append(write_run(tmp_path / "grpo", method="grpo", accuracies=[0.4, 0.45],
                          config={"es": {"sigma": 0.3}, "max_wall_s": 5}))  # es.* means nothing to GRPO
    summary = compare(runs, tmp_path / "out")
    assert list(summary["groups"]) == ["eggroll (es.sigma=0.01)", "eggroll (es.sigma=0.05)", "grpo"]
    assert summary["groups"]["eggroll (es.sigma=0.05)"]["seeds"] == [0, 1]
    with pytest.raises(CompareError, match="same recipe with the same seed 0"):
        compare([runs[0], write_run(tmp_path / "again", accuracies=[0.4, 0.6], config={"es": {"sigma": 0.01}})],
                tmp_path / "out2")


def test_flops_axis_by_hand(tmp_path):
    params, lora = 1_000_000, 10_000
    runs = [write_run(tmp_path / "a", accuracies=[0.4, 0.5], params=(params, params)),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.4, 0.5], params=(params, lora),
                      config={"grpo": {"beta": 0.1}})]
    summary = compare(runs, tmp_path / "out")
    # 2 steps of 64 completions with 12-token prompts; completions of 11 and 12 tokens a row
    prompt, generated = 2 * 64 * 12, 64 * 11 + 64 * 12
    assert summary["runs"]["eggroll seed 0"]["totals"]["flops"] == 2 * params * (prompt + generated)
    # GRPO: generation (2P) + forward and activation gradients (4P) + LoRA weight gradients (2T) + reference (2P)
    assert summary["runs"]["grpo seed 0"]["totals"]["flops"] == (8 * params + 2 * lora) * (prompt + generated)
    assert training_flops("grpo", params=10, trainable=10, prompt_tokens=1, completion_tokens=0,
                          gradient_checkpointing=True) == 2 * 10 + 6 * 10 + 2 * 10
    assert (tmp_path / "out" / "accuracy_vs_flops.png").is_file()


def test_runs_without_flops_counts_keep_the_other_axes(tmp_path):
    runs = [write_run(tmp_path / "a", accuracies=[0.4, 0.5], params=(100, 100)),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.4, 0.5])]
    summary = compare(runs, tmp_path / "out")
    assert list(summary["axes"]) == ["wall_s", "completions", "tokens"]
    assert "no FLOPs axis: grpo seed 0: metrics.jsonl has no model_params, trainable_params, prompt_tokens" \
        in summary["notes"]


def test_reward_metric_for_a_task_without_answers(tmp_path):
    runs = [write_run(tmp_path / "a", accuracies=[0.2, 0.8], task="mine", metric="eval_reward"),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.2, 0.4], task="mine", metric="eval_reward")]
    summary = compare(runs, tmp_path / "out", target=1.5)  # a reward target is not a fraction
    assert summary["metric"] == "eval_reward" and summary["groups"]["eggroll"]["final"]["mean"] == 0.8
    assert (tmp_path / "out" / "eval_reward_vs_wall.png").is_file()


def test_plots_are_valid_pngs(seeded, tmp_path):
    import matplotlib.image

    compare(seeded[0], tmp_path / "out")
    names = ["accuracy_vs_wall.png", "accuracy_vs_completions.png", "accuracy_vs_tokens.png", "reward.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*names, "report.md", "summary.json"])
    for name in names:
        pixels = matplotlib.image.imread(tmp_path / "out" / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels.std() > 0.01  # something was drawn, not a blank canvas
        assert f"]({name})" in (tmp_path / "out" / "report.md").read_text()


def test_different_tasks_are_refused_with_exit_2(tmp_path, capsys):
    runs = [write_run(tmp_path / "a", accuracies=[0.4, 0.5]),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.4, 0.5], task="gsm8k")]
    with pytest.raises(CompareError, match=r"different tasks \(gsm8k, tiny-arith\)"):
        compare(runs, tmp_path / "out")
    assert cli.main(["compare", *map(str, runs), "--out", str(tmp_path / "out")]) == 2
    assert "different tasks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unequal_held_out_sets_warn(tmp_path):
    runs = [write_run(tmp_path / "a", accuracies=[0.4, 0.5]),
            write_run(tmp_path / "b", method="grpo", accuracies=[0.4, 0.5], eval_n=50)]
    with pytest.warns(UserWarning, match=r"different held-out sets \(200 of validation, 50 of validation\)"):
        summary = compare(runs, tmp_path / "out")
    assert any("different held-out sets" in note for note in summary["notes"])


def test_same_held_out_set_does_not_warn(seeded, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(seeded[0], tmp_path / "out")


def test_out_refusals(seeded, tmp_path, monkeypatch):
    runs = seeded[0][:2]
    stray = tmp_path / "notes"
    stray.mkdir()
    (stray / "todo.txt").write_text("mine")
    with pytest.raises(CompareError, match="exists and is not a compare report"):
        compare(runs, stray, force=True)
    assert (stray / "todo.txt").read_text() == "mine"
    for bad in (runs[0], runs[0] / "plots", tmp_path):  # a run, inside a run, a folder holding runs
        with pytest.raises(CompareError, match="would overwrite run directory"):
            compare(runs, bad, force=True)
    monkeypatch.chdir(tmp_path / "notes")
    for bad in (Path("."), tmp_path / "notes", tmp_path):
        with pytest.raises(CompareError, match="working directory"):
            compare(runs, bad, force=True)
    out = tmp_path / "report"
    out.mkdir()  # an empty folder holds nothing to lose
    compare(runs, out)
    (out / "stale.png").write_bytes(b"old")
    with pytest.raises(CompareError, match="holds a previous compare report; pass --force"):
        compare(runs, out)
    compare(runs, out, force=True)
    assert not (out / "stale.png").exists() and (out / "report.md").is_file()  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary folders left


def test_not_a_run_dir_is_refused_before_any_output(seeded, tmp_path):
    stray = tmp_path / "stray"
    stray.mkdir()
    out = tmp_path / "out"
    with pytest.raises(RunDirError, match=r"stray is not a run directory \(no metrics.jsonl\); pass folders written "
                                          r"by `eggroll-llm train`"):
        compare([*seeded[0], stray], out)
    assert not out.exists()
    (seeded[0][1] / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirError, match="eggroll-1 is not a run directory.*metrics.jsonl is empty"):
        compare(seeded[0], out)


def test_rolling_mean_matches_a_loop():
    values = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.8]
    for window in (1, 3, 10):
        expected = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                    for i in range(len(values))]
        assert rolling_mean(values, window) == pytest.approx(expected)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """2-step runs of the embedded model, seeds 0 and 1 per method: EGGROLL runs, then GRPO runs (LoRA)."""
    pytest.importorskip("trl")
    from eggroll_llm import tiny_arith
    from eggroll_llm.config import load_config
    from eggroll_llm.recipe import run_recipe

    root = tmp_path_factory.mktemp("real-runs")
    data = root / "data"  # a few tiny-arith problems as local files: no run pays for the generated train split
    data.mkdir()
    for split, n in (("train", 16), ("validation", 4)):
        rows = tiny_arith.make_split(split, n, seed=0)
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {"max_steps": 2, "eval_every": 1, "save_every": 2, "rewards": ["gsm8k"], "model": {"name": "tiny-arith"},
              "data": {"task": "gsm8k", "data_path": str(data), "eval_limit": 4},
              "generation": {"max_new_tokens": 8}, "disable_tqdm": True}
    es = {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 2, "sigma": 0.05, "lr": 0.05}
    grpo = {"prompts_per_step": 2, "num_generations": 2, "lora_rank": 4}
    runs = []
    for seed in (0, 1):
        config = load_config(None, {**common, "method": "eggroll", "seed": seed, "es": es,
                                    "output_dir": str(root / f"eggroll-{seed}")})
        runs.append(run_recipe(config).run_dir)
    for seed in (0, 1):
        config = load_config(None, {**common, "method": "grpo", "seed": seed, "grpo": grpo,
                                    "output_dir": str(root / f"grpo-{seed}")})
        runs.append(run_recipe(config).run_dir)
    return runs


@pytest.mark.integration
def test_real_two_step_runs_two_seeds_per_method(real_runs, tmp_path):
    summary = compare(real_runs, tmp_path / "report")
    assert list(summary["groups"]) == ["eggroll", "grpo"]
    for group in summary["groups"].values():
        assert group["seeds"] == [0, 1] and group["final"]["n"] == 2 and group["final"]["low"] is not None
        assert group["final"]["low"] <= group["final"]["mean"] <= group["final"]["high"]
    for run in real_runs:
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        label = next(k for k, r in summary["runs"].items() if r["run_dir"] == str(run))
        assert summary["runs"][label]["final"] == metrics[-1]["eval_accuracy"]
        assert summary["runs"][label]["totals"]["completions"] == metrics[-1]["completions"]
    assert (tmp_path / "report" / "accuracy_vs_wall.png").is_file()


@pytest.mark.integration
def test_real_runs_paired_comparison(real_runs, tmp_path):
    eggroll, grpo = real_runs[0], real_runs[2]
    paired = compare([eggroll, grpo], tmp_path / "pair")["paired"]
    assert paired["available"] and paired["n"] == 4 and "mcnemar_p" in paired


@pytest.mark.integration
def test_real_runs_have_a_flops_axis(real_runs, tmp_path):
    for run in real_runs:
        first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        assert first["model_params"] > first["trainable_params"] > 0
    summary = compare(real_runs, tmp_path / "report")
    assert "flops" in summary["axes"]
    assert all(r["totals"]["flops"] > 0 for r in summary["runs"].values())


def test_seeds_differing_only_in_run_only_keys_form_one_group(tmp_path):
    """--no-progress on one seed, report_to on another: still one recipe (config.RUN_ONLY_KEYS is the one list)."""
    runs = [write_run(tmp_path / "a", seed=0, accuracies=[0.4, 0.5], config={"disable_tqdm": True}),
            write_run(tmp_path / "b", seed=1, accuracies=[0.4, 0.6], config={"report_to": "tensorboard",
                                                                           "model": {"name": "tiny", "device": "cpu"}}),
            write_run(tmp_path / "c", seed=2, accuracies=[0.4, 0.7], config={"save_every": 3})]
    summary = compare(runs, tmp_path / "out")
    assert list(summary["groups"]) == ["eggroll"]
    assert summary["groups"]["eggroll"]["seeds"] == [0, 1, 2]


def test_a_key_missing_from_an_older_config_counts_as_its_default(tmp_path):
    """A run written before a config key existed groups with one that holds the key at its default value."""
    runs = [write_run(tmp_path / "a", seed=0, accuracies=[0.4, 0.5], config={"es": {"strategy": "eggroll"}}),
            write_run(tmp_path / "b", seed=1, accuracies=[0.4, 0.6]),
            write_run(tmp_path / "c", seed=2, accuracies=[0.4, 0.7], config={"es": {"strategy": "openai_es"}})]
    summary = compare(runs, tmp_path / "out")
    assert [group["seeds"] for group in summary["groups"].values()] == [[0, 1], [2]]
