"""sweep_report.html: Optuna's own plots, readable offline (plotly.js inlined once), and a table of every trial."""

from __future__ import annotations

import html
from pathlib import Path

PLOTS = (("optimization history", "plot_optimization_history"), ("parameter importances", "plot_param_importances"),
         ("parallel coordinates", "plot_parallel_coordinate"), ("intermediate values (pruning)",
                                                                "plot_intermediate_values"))


def _plots(study) -> list[str]:
    """Each plot as an HTML fragment; the first carries plotly.js itself (no network needed to view the report)."""
    import warnings

    import optuna.visualization as vis

    parts, inlined = [], False
    for title, name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = getattr(vis, name)(study)
        except Exception as exc:  # e.g. importances need two finished trials with different values
            parts.append(f"<h2>{html.escape(title)}</h2><p class=note>not drawn: {html.escape(str(exc))}</p>")
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>" +
                     figure.to_html(full_html=False, include_plotlyjs=not inlined))
        inlined = True
    return parts


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"
    return html.escape("" if value is None else str(value))


def _table(study, best_number: int | None, objective: str) -> str:
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
        css = ' class="best"' if t.number == best_number else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def write_report(study, folder: Path, stage: str, objective: str, direction: str) -> Path:
    from align.paths import write_atomic
    from align.sweep.study import best_trial

    best = best_trial(study, direction)
    summary = (f"best: trial {best.number}, {objective} = {best.value:.5g} ({direction}), "
               f"{html.escape(', '.join(f'{k}={v}' for k, v in best.params.items()))}") if best \
        else "no trial finished with a model that passed its gate"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sweep {html.escape(stage)}: \
{html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;\
padding:2px 6px;font-size:13px}} tr.best{{background:#e6f4e6}} .note{{color:#777}}</style></head><body>
<h1>sweep {html.escape(stage)}: {html.escape(study.study_name)}</h1>
<p>{summary}. Trials whose model failed its gate are infeasible (Optuna's constraint <code>gate</code>) and never
the best; pruned trials were stopped early on their training loss and left no model.</p>
<h2>trials</h2>{_table(study, best.number if best else None, objective)}
{''.join(_plots(study))}
</body></html>"""
    return write_atomic(folder / "sweep_report.html", page)
