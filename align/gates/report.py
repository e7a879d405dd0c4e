"""The gate's reports: gate_report.json (everything measured) and gate_report.html (tables + plots).

The HTML file (gate_report.html.jinja, autoescaped) stands alone: its plots (matplotlib) are embedded as base64
PNG images. Plots: the checks of the
model against its parent with 95% intervals, histograms of toxicity, CrowS-Pairs by bias type, BBQ by category
and BOLD by group, each with the parent beside the model when the parent's figures are known.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from align.paths import write_atomic

JSON_NAME = "gate_report.json"
HTML_NAME = "gate_report.html"
CHILD_COLOR, PARENT_COLOR = "#1f77b4", "#aaaaaa"


def write_reports(out_dir: Path, gate: dict, options, child: dict, parent: dict | None,
                  error_trace: str | None = None) -> tuple[Path, Path]:
    """Write both reports atomically into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "gate": gate,
        "model": {"source": child.get("source"), "timing": child.get("timing", {})},
        "parent": None if parent is None else {
            "source": parent.get("source"), "from": gate["figures"].get("parent_from"),
            "metrics": parent.get("metrics", {}), "figures": parent.get("figures", {}),
        },
        "options": dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options,
        "most_toxic_replies": child.get("examples", []),
        "error_trace": error_trace,
    }
    json_path = write_atomic(out_dir / JSON_NAME, json.dumps(report, indent=2, default=_json_default) + "\n")
    html_path = write_atomic(out_dir / HTML_NAME, render_html(report))
    return json_path, html_path


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# ---------------------------------------------------------------------------------------------------- plots


def png_base64(fig) -> str:
    """A matplotlib figure as a base64 PNG for an <img> in a self-contained HTML page (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height))


def _paired_bars(ax, labels: list[str], child: list[float], parent: list[float] | None, title: str,
                 child_err=None, parent_err=None) -> None:
    import numpy as np

    y = np.arange(len(labels))
    height = 0.4 if parent is not None else 0.7
    ax.barh(y - (height / 2 if parent is not None else 0), child, height, color=CHILD_COLOR, label="model",
            xerr=child_err, capsize=2)
    if parent is not None:
        ax.barh(y + height / 2, parent, height, color=PARENT_COLOR, label="parent", xerr=parent_err, capsize=2)
        ax.legend(loc="best", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)


def _errors(metrics: dict, names: list[str]):
    import numpy as np

    low, high = [], []
    for name in names:
        m = metrics.get(name) or {}
        value, ci = m.get("value"), m.get("ci95") or [None, None]
        if value is None or ci[0] is None or ci[1] is None:
            low.append(0.0), high.append(0.0)
        else:
            low.append(max(value - ci[0], 0.0)), high.append(max(ci[1] - value, 0.0))
    return np.array([low, high])


def plot_checks(report: dict) -> str | None:
    checks = report["gate"]["checks"]
    if not checks:
        return None
    names = [c["name"] for c in checks]
    child_metrics = {c["name"]: c for c in checks}
    parent_metrics = (report.get("parent") or {}).get("metrics") or {}
    child = [c["value"] if c["value"] is not None else 0.0 for c in checks]
    parent = [(parent_metrics.get(n) or {}).get("value") for n in names]
    has_parent = any(p is not None for p in parent)
    fig, ax = _figure(8, 0.35 * len(names) + 1.2)
    _paired_bars(ax, names, child, [p or 0.0 for p in parent] if has_parent else None,
                 "checks: model vs parent (95% bootstrap intervals)", _errors(child_metrics, names),
                 _errors(parent_metrics, names) if has_parent else None)
    return png_base64(fig)


def plot_toxicity_histogram(report: dict) -> str | None:
    tox = report["gate"]["figures"]["benchmarks"].get("toxicity")
    if not tox:
        return None
    parent = ((report.get("parent") or {}).get("figures") or {}).get("toxicity")
    edges = tox["histogram"]["edges"]
    fig, axes = _figure(9, 3, ncols=2)
    for ax, key, title in ((axes[0], "max_per_prompt", "highest toxicity per prompt"),
                           (axes[1], "per_reply", "toxicity of every reply")):
        ax.stairs(tox["histogram"][key], edges, fill=True, alpha=0.6, color=CHILD_COLOR, label="model")
        if parent:
            ax.stairs(parent["histogram"][key], parent["histogram"]["edges"], color="black", label="parent")
            ax.legend(fontsize=8)
        ax.axvline(tox.get("threshold", 0.5), color="red", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("toxicity", fontsize=8)
    return png_base64(fig)


def _group_plot(child: dict, parent: dict | None, key: str, title: str) -> str | None:
    labels = list(child)
    if not labels:
        return None
    values = [child[g].get(key) for g in labels]
    if all(v is None for v in values):
        return None
    parents = [((parent or {}).get(g) or {}).get(key) for g in labels] if parent else None
    fig, ax = _figure(8, 0.3 * len(labels) + 1.2)
    _paired_bars(ax, labels, [v if v is not None else 0.0 for v in values],
                 [p if p is not None else 0.0 for p in parents] if parents else None, title)
    return png_base64(fig)


def group_plots(report: dict) -> list[tuple[str, str]]:
    """(title, png) for CrowS-Pairs, BBQ and BOLD per-group figures."""
    figures = report["gate"]["figures"]["benchmarks"]
    parent = ((report.get("parent") or {}).get("figures")) or {}
    plots = []
    crows = figures.get("crows_pairs")
    if crows:
        plots.append(("CrowS-Pairs by bias type", _group_plot(
            crows["by_bias_type"], (parent.get("crows_pairs") or {}).get("by_bias_type"), "stereotype_share",
            "CrowS-Pairs: share preferring the more stereotyping sentence (0.5 = unbiased)")))
    bbq = figures.get("bbq")
    if bbq:
        parent_bbq = (parent.get("bbq") or {}).get("by_category")
        for key, title in (("ambiguous_bias", "BBQ bias score, ambiguous contexts"),
                           ("disambiguated_accuracy", "BBQ accuracy, disambiguated contexts")):
            plots.append((title, _group_plot(bbq["by_category"], parent_bbq, key, title)))
    bold = figures.get("bold")
    if bold:
        parent_domains = (parent.get("bold") or {}).get("domains") or {}
        for domain, entry in bold["domains"].items():
            parent_groups = (parent_domains.get(domain) or {}).get("groups")
            for score in ("sentiment", "toxicity"):
                title = f"BOLD {domain}: mean {score} per group (gap {_num(entry.get(f'{score}_gap'))})"
                plots.append((title, _group_plot(entry["groups"], parent_groups, score, title)))
    return [(t, p) for t, p in plots if p]


# ---------------------------------------------------------------------------------------------------- HTML


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _check_rows(report: dict) -> list[dict]:
    """Each check's cells for the report's table, formatted (the template escapes them)."""
    rows = []
    for c in report["gate"]["checks"]:
        limits = ", ".join(f"{k} {c[k]}" for k in ("max", "min", "max_increase", "max_decrease") if c.get(k) is not None)
        ci = c.get("ci95") or [None, None]
        if c.get("difference") is not None:
            low, high = c.get("difference_ci95") or [None, None]
            delta = f"{c['difference']:+.3f} [{_num(low)}, {_num(high)}]"
        elif c["parent"] is not None and c["value"] is not None:
            delta = f"{c['value'] - c['parent']:+.3f} (unpaired)"
        else:
            delta = "–"
        mde = f"{_num(c.get('mde'))}" + (f" (planned {_num(c.get('planned_mde'))})" if c.get("planned_mde") is not None else "")
        if c.get("mde_exceeds_margin"):
            mde += " > margin"
        rows.append({"status": "pass" if c["passed"] else "FAIL", "name": c["name"], "value": _num(c["value"]),
                     "low": _num(ci[0]), "high": _num(ci[1]), "parent": _num(c["parent"]), "delta": delta,
                     "mde": mde, "limits": limits, "rule": c.get("rule"), "reason": c.get("reason")})
    return rows


def plot_differences(report: dict) -> str | None:
    """A forest plot: each regression-limited check's paired difference child − parent with its interval, in the
    direction 'worse', against its margin."""
    from align.gates.policy import check_margin

    checks = [c for c in report["gate"]["checks"] if c.get("difference") is not None and check_margin(c) is not None]
    if not checks:
        return None
    fig, ax = _figure(8, 0.45 * len(checks) + 1.2)
    for row, c in enumerate(checks):
        sign = -1.0 if c.get("max_increase") is None else 1.0
        margin = check_margin(c)
        low, high = (sign * x for x in (c["difference_ci95"] or [c["difference"]] * 2))
        low, high = min(low, high), max(low, high)
        color = CHILD_COLOR if c["passed"] else "#b91c1c"
        ax.plot([low, high], [row, row], color=color, lw=2)
        ax.plot([sign * c["difference"]], [row], "o", color=color)
        ax.plot([margin, margin], [row - 0.35, row + 0.35], color="#b45309", lw=2)
    ax.axvline(0, color=PARENT_COLOR, lw=1)
    ax.set_yticks(range(len(checks)))
    ax.set_yticklabels([c["name"] for c in checks])
    ax.invert_yaxis()
    ax.set_xlabel("regression: child − parent in the worse direction (95% paired interval); orange: margin")
    return png_base64(fig)


def render_html(report: dict) -> str:
    """gate_report.html from gate_report.html.jinja (autoescaped: model text, sources and reasons shown as text)."""
    from jinja2 import Environment, FileSystemLoader

    from align.gates.policy import RULE_WORDS

    gate = report["gate"]
    figures = gate["figures"]
    plots = []
    try:
        for title, png in ([("paired differences against their margins", plot_differences(report)),
                            ("checks", plot_checks(report)), ("toxicity", plot_toxicity_histogram(report))]
                           + group_plots(report)):
            if png:
                plots.append({"title": title, "png": png})
    except Exception as exc:  # a plot must not hide the verdict
        plots.append({"error": str(exc)})
    examples = [{**e, "toxicity": _num(e["toxicity"])} for e in report.get("most_toxic_replies") or []]
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), autoescape=True)
    return env.get_template("gate_report.html.jinja").render(
        gate=gate, figures=figures, verdict=gate["verdict"], checks=_check_rows(report), plots=plots,
        examples=examples, trace=report.get("error_trace"),
        rule_words=RULE_WORDS.get(figures.get("rule") or "", "point estimate"))
