"""The pipeline's summary: a table in the terminal and runs/<run>/report.html with plots (report.html.jinja,
autoescaped: stage names, statuses and gate lines are shown as text)."""

from __future__ import annotations

import json
from pathlib import Path

from markupsafe import Markup

from align.gates.report import png_base64
from align.paths import write_atomic
from align.runs import latest_attempt, read_manifest

# The figures worth a column in the summary, per stage (the manifest has them all).
KEY_METRICS = {
    "sft": ("eval_perplexity_before", "eval_perplexity_after"),
    "rm": ("eval_accuracy", "eval_mean_margin", "eval_accuracy_chosen_shorter", "eval_length_spearman"),
    "dpo": ("eval_pref_acc_logp_mean_parent", "eval_pref_acc_logp_mean_child", "eval_pref_acc_implicit_child",
            "eval_win_rate_vs_parent", "eval_kl_per_sequence", "eval_reply_tokens_parent", "eval_reply_tokens_child"),
    "kto": ("eval_label_auroc_logp_mean_parent", "eval_label_auroc_logp_mean_child", "eval_label_acc_implicit_child",
            "eval_implicit_reward_gap", "eval_win_rate_vs_parent", "eval_kl_per_sequence", "eval_reply_tokens_child"),
    "curate": ("rows_in", "rows_out", "removed"),
    "ppo": ("rm_reward_parent", "rm_reward_child", "win_rate_vs_parent", "kl_per_sequence", "reply_tokens_parent",
            "reply_tokens_child"),
}
KEY_METRICS["grpo"] = KEY_METRICS["rloo"] = (  # the online RL stages: their training reward, then dpo's comparison
    "train_reward_first", "train_reward_last", "eval_rm_reward_parent", "eval_rm_reward_child",
    "eval_win_rate_vs_parent", "eval_kl_per_sequence", "eval_reply_tokens_child")


def _key_metrics(stage: str, metrics: dict) -> list[str]:
    """The stage's key metrics as name=value strings (the eval_ prefix left out), in KEY_METRICS order."""
    keys = KEY_METRICS.get(stage) or tuple(k for k, v in metrics.items() if isinstance(v, (int, float)))[:4]
    shown = [f"{k.removeprefix('eval_')}={_short(metrics[k])}" for k in keys if k in metrics]
    removed = {step: n for step, n in (metrics.get("removed_by_step") or {}).items() if n}  # curate's steps
    return shown + ([f"removed by {', '.join(f'{step} {n}' for step, n in removed.items())}"] if removed else [])


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _rows(run_dir: Path, stages: list[str], timings: dict, skipped: list[str]) -> list[dict]:
    rows = []
    for stage in stages:
        attempt = latest_attempt(run_dir / stage)  # a gate-failed rerun is reported, beside the promoted model it kept
        manifest = read_manifest(attempt) or {}
        gate = manifest.get("gate")
        kept = " (promoted one kept)" if attempt != run_dir / stage and (run_dir / stage).is_dir() else ""
        rows.append({
            "stage": stage,
            "status": manifest.get("status", "not run") + kept,
            "gate": gate_lines(gate),
            "metrics": _key_metrics(stage, manifest.get("metrics", {})),
            "wall_s": manifest.get("timing", {}).get("wall_s"),
            "this_run_s": round(timings.get(stage, 0.0), 1),
            "skipped": stage in skipped,
            "manifest": manifest,
        })
    return rows


def gate_lines(gate: dict | None) -> list[str]:
    """The verdict, then each regression-limited check's paired difference, its interval, margin and rule."""
    from align.gates.policy import check_margin

    if not gate:
        return ["—"]
    lines = [str(gate.get("verdict"))]
    for c in gate.get("checks", []):
        margin = check_margin(c)
        if c.get("difference") is None or margin is None:
            continue
        low, high = c.get("difference_ci95") or [None, None]
        interval = "" if low is None else f" [{low:+.3f}, {high:+.3f}]"
        rule = {"non_inferiority": "NI", "superiority": "sup", "point": "pt"}.get(c.get("rule") or "", "")
        lines.append(f"{'' if c.get('passed') else 'FAIL '}{c['name']} {c['difference']:+.3f}{interval} "
                     f"margin {margin} {rule}".rstrip())
    return lines


def final_line(final: dict | None) -> str | None:
    """One sentence on the final model against the base, as the run's reward model judged them: the training RM's
    view (the signal the policy was optimised against, so not an independent verdict: see the evaluation)."""
    if not final:
        return None
    low, high = final["win_rate_ci95"]
    gain_low, gain_high = final["rm_reward_gain_ci95"]
    return (f"the training RM's view: final model ({final['final']}) vs base ({final['base']}) on "
            f"{final['prompts']} held-out prompts, judged by the run's rm: win rate {final['win_rate']:.3f} "
            f"(95% CI {low:.3f}–{high:.3f}); mean reward {final['rm_reward_base']:.3f} → "
            f"{final['rm_reward_final']:.3f} (gain CI {gain_low:.3f}–{gain_high:.3f}); "
            f"reply length {final['reply_tokens_base']} → {final['reply_tokens_final']} tokens")


def print_summary(run_dir: Path, stages: list[str], timings: dict, skipped: list[str], total: float,
                  final: dict | None = None, evaluations: list[dict] | None = None) -> None:
    """The evaluations' headline figures first (align.evaluation), then the stages, then the training RM's view."""
    from rich.console import Console
    from rich.table import Table

    from align.evaluation.report import print_table

    for evaluation in evaluations or []:
        print_table(evaluation["result"], headline_only=True)
        print(f"every figure and example replies: {Path(evaluation['out']) / 'eval.html'}")

    table = Table(title=f"align pipeline — {run_dir} ({total:.0f}s)")
    for column in ("stage", "status", "gate", "key metrics", "stage wall s", "this run s"):
        table.add_column(column, overflow="fold")
    for row in _rows(run_dir, stages, timings, skipped):
        table.add_row(row["stage"], row["status"], "\n".join(row["gate"]), "\n".join(row["metrics"]), str(row["wall_s"]),
                      "skipped" if row["skipped"] else str(row["this_run_s"]))
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: rich would assume 80 columns and cut the metric names
        console = Console(width=120)
    console.print(table)
    if final:
        console.print(final_line(final))


def _training_curves(run_dir: Path, stages: list[str]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for stage in stages:
        path = run_dir / stage / "logs" / "history.json"
        if path.is_file():
            history = json.loads(path.read_text())
            points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
            if points:
                curves.append((stage, points))
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
    for ax, (stage, points) in zip(axes[0], curves):
        ax.plot(*zip(*points), marker=".")
        ax.set_title(f"{stage}: training loss")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return png_base64(fig)


def _curate_figure(run_dir: Path) -> str | None:
    """Rows left after each curate step (the waterfall of curate_report.html), when the run curated its data."""
    path = run_dir / "curate" / "curate_report.json"
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = json.loads(path.read_text(encoding="utf-8"))["steps"]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(steps) + 1))
    names = [f"{step['name']} (−{step['removed']})" for step in steps]
    ax.barh(range(len(steps)), [step["rows_out"] for step in steps], color="tab:blue")
    ax.set_yticks(list(range(len(steps))), names)
    ax.invert_yaxis()
    ax.set_xlabel("rows kept")
    ax.set_title("curate: rows kept after each step (removed in brackets)")
    return png_base64(fig)


def _gate_figures(manifest: dict) -> str | None:
    """The gate's paired differences against their margins (the gate report's forest plot), or, for a gate
    without paired differences, the child's figures beside its parent's."""
    from align.gates.report import plot_differences

    gate = manifest.get("gate") or {}
    forest = plot_differences({"gate": {"checks": gate.get("checks", [])}})
    if forest:
        return forest
    checks = [c for c in gate.get("checks", []) if isinstance(c.get("value"), (int, float))]
    if not checks:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in checks]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [c["value"] for c in checks], height=0.4, label=manifest["stage"],
            color=["tab:green" if c.get("passed") else "tab:red" for c in checks])
    parents = [c.get("parent") if isinstance(c.get("parent"), (int, float)) else 0 for c in checks]
    ax.barh([y - 0.2 for y in ys], parents, height=0.4, label="parent", color="tab:gray")
    ax.set_yticks(list(ys), names)
    ax.legend()
    ax.set_title(f"{manifest['stage']} gate: child (green = passed) vs parent")
    return png_base64(fig)


def write_report(run_dir: Path, stages: list[str], timings: dict, skipped: list[str], total: float,
                 final: dict | None = None, evaluations: list[dict] | None = None) -> Path:
    from align.evaluation.report import summary_html

    from jinja2 import Environment, FileSystemLoader, select_autoescape

    rows = _rows(run_dir, stages, timings, skipped)
    evaluation = [Markup(summary_html(e["result"], str(Path(e["out"], "eval.html").relative_to(run_dir))))
                  for e in evaluations or []]  # fragments the evaluation's own (autoescaped) template rendered
    images = []
    curves = _training_curves(run_dir, stages)
    if curves:
        images.append({"title": "Training curves", "png": curves})
    curated = _curate_figure(run_dir) if "curate" in stages else None
    if curated:
        images.append({"title": "Curated data", "link": "curate/curate_report.html", "png": curated})
    for row in rows:
        figure = _gate_figures(row["manifest"]) if row["manifest"] else None
        if figure:
            images.append({"title": f"Gate after {row['stage']}", "link": f"{row['stage']}/gate_report.html",
                           "png": figure})
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), autoescape=select_autoescape(["jinja"]))
    page = env.get_template("report.html.jinja").render(
        run=run_dir.name, total=total, evaluations=evaluation, final=final_line(final) if final else None,
        rows=rows, images=images)
    return write_atomic(run_dir / "report.html", page)
