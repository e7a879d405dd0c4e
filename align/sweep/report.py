"""sweep_report.html: Optuna's own plots, readable offline (plotly.js inlined once), and a table of every trial."""

from __future__ import annotations

from pathlib import Path

PLOTS = (("optimization history", "plot_optimization_history"), ("parameter importances", "plot_param_importances"),
         ("parallel coordinates", "plot_parallel_coordinate"), ("intermediate values (pruning)",
                                                                "plot_intermediate_values"))


def _plots(study) -> list[dict]:
    """Each plot's title and HTML fragment (or why it was not drawn); the first carries plotly.js itself (no network
    needed to view the report)."""
    import warnings

    import optuna.visualization as vis
    from markupsafe import Markup

    parts, inlined = [], False
    for title, name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = getattr(vis, name)(study)
        except Exception as exc:  # e.g. importances need two finished trials with different values
            parts.append({"title": title, "error": str(exc)})
            continue
        parts.append({"title": title, "error": None,
                      "html": Markup(figure.to_html(full_html=False, include_plotlyjs=not inlined))})  # plotly's own
        inlined = True
    return parts


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return "" if value is None else str(value)


def _table(study, best_number: int | None, objective: str) -> tuple[list[str], list[dict]]:
    """The trials table: its header and one row (cells, whether it is the best) a trial."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    gates = sorted({k for t in trials for k in t.user_attrs if k.startswith("gate.") and not k.endswith(".passed")})
    head = ["trial", "state", objective, *keys, "gate", *gates, "wall s", "folder"]
    rows = []
    for t in trials:
        state = t.state.name.lower()
        if t.number == best_number:
            state += " (best)"
        elif t.user_attrs.get("feasible") is False:
            state += " (gate failed: infeasible)"
        cells = [t.number, state, t.value, *[t.params.get(k) for k in keys], t.user_attrs.get("gate_verdict"),
                 *[t.user_attrs.get(k) for k in gates], t.user_attrs.get("wall_s"),
                 t.user_attrs.get("folder") or t.user_attrs.get("pruned")]
        rows.append({"best": t.number == best_number, "cells": [_cell(c) for c in cells]})
    return head, rows


def write_report(study, folder: Path, stage: str, objective: str, direction: str) -> Path:
    """sweep_report.html from sweep_report.html.jinja (autoescaped; plotly's fragments are its own)."""
    from jinja2 import Environment, FileSystemLoader

    from align.paths import write_atomic
    from align.sweep.study import best_trial

    best = best_trial(study, direction)
    summary = (f"best: trial {best.number}, {objective} = {best.value:.5g} ({direction}), "
               f"{', '.join(f'{k}={v}' for k, v in best.params.items())}") if best \
        else "no trial finished with a model that passed its gate"
    head, rows = _table(study, best.number if best else None, objective)
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), autoescape=True)
    page = env.get_template("sweep_report.html.jinja").render(
        stage=stage, study_name=study.study_name, summary=summary, head=head, rows=rows, plots=_plots(study))
    return write_atomic(folder / "sweep_report.html", page)
