"""An evaluation's outputs: eval.json, eval.html (jinja2, autoescaped: model text is shown as text), a table in
the terminal, a Markdown table for model cards, and the headline rows the pipeline's summary leads with."""

from __future__ import annotations

from pathlib import Path

from align.evaluation.figures import HEADLINE

TEMPLATE = "eval.html.jinja"


def number(value) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def interval(ci) -> str:
    if not ci or ci[0] is None:
        return ""
    return f"[{number(ci[0])}, {number(ci[1])}]"


def with_interval(value, ci) -> str:
    return f"{number(value)} {interval(ci)}".strip()


def difference_text(row: dict) -> str:
    if row.get("difference") is None:
        return "–"
    sign = "+" if row["difference"] > 0 else ""
    text = f"{sign}{number(row['difference'])}"
    if row.get("difference_ci95") and row["difference_ci95"][0] is not None:
        text += f" {interval(row['difference_ci95'])}"
    elif row["name"].startswith("gate."):
        text += " (not paired)"
    return text


def excludes_zero(row: dict) -> bool:
    ci = row.get("difference_ci95")
    return bool(ci and ci[0] is not None and (ci[0] > 0 or ci[1] < 0))


def all_rows(result: dict) -> list[dict]:
    return [row for section in result["sections"] for row in section["figures"] + section.get("breakdown", [])]


def headline_rows(result: dict) -> list[dict]:
    """The figures a summary leads with (figures.HEADLINE, those measured), in that order."""
    rows = {row["name"]: row for section in result["sections"] for row in section["figures"]}
    return [rows[name] for name in HEADLINE if name in rows and rows[name].get("model") is not None]


def title(result: dict) -> str:
    baseline = result.get("baseline")
    return f"eval: {result['model']['source']}" + (f" vs {baseline['source']}" if baseline else "")


def print_table(result: dict, headline_only: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    paired = result.get("baseline") is not None
    table = Table(title=title(result))
    for column in ("figure", "model [95% CI]") + (("baseline", "model − baseline [95% CI]") if paired else ()) + (
            "units",):
        table.add_column(column, overflow="fold")
    sections = [{"title": "headline", "figures": headline_rows(result)}] if headline_only else result["sections"]
    for section in sections:
        if not section["figures"]:
            continue
        if not headline_only:
            table.add_row(f"[bold]{section['title']}[/]")
        for row in section["figures"]:
            cells = [row["label"], with_interval(row.get("model"), row.get("model_ci95"))]
            if paired:
                difference = difference_text(row)
                cells += [number(row.get("baseline")), f"[bold]{difference}[/]" if excludes_zero(row) else difference]
            cells.append(str(row.get("units", "")))
            table.add_row(*cells)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(table)
    if not headline_only:
        for line in context_lines(result):
            console.print(line)
    for note in result.get("notes", []):
        console.print(f"note: {note}")


def context_lines(result: dict) -> list[str]:
    """Who judged and who detected refusals, with their own held-out figures."""
    lines = []
    judge = result.get("judge")
    if judge:
        h = judge.get("heldout") or {}
        known = [f"{label} {h[key]}" for key, label in (
            ("accuracy", "held-out accuracy"), ("length_only_accuracy", "length-only baseline"),
            ("length_matched_accuracy", "on length-matched pairs"), ("length_spearman", "Spearman with length"))
            if h.get(key) is not None]
        lines.append(f"judge: {judge['name']}" + (f" — {', '.join(known)} ({h.get('rows')} pairs)" if known else ""))
    classifier = result.get("refusal_classifier")
    if classifier:
        hard = (f"; on the {classifier['hard_test_rows']} hard ones {classifier['heldout_accuracy_hard']}, string "
                f"matching {classifier['string_match_heldout_accuracy_hard']}"
                if classifier.get("heldout_accuracy_hard") is not None else "")
        lines.append(f"refusals: {classifier['name']} — held-out accuracy {classifier['heldout_accuracy']} on "
                     f"{classifier['test_rows']} labelled replies (string matching alone: "
                     f"{classifier['string_match_heldout_accuracy']}{hard})")
    return lines


def markdown_table(result: dict) -> str:
    """The evaluation's figures as a Markdown table (the model card's Evaluation section)."""
    paired = result.get("baseline") is not None
    head = "| figure | model [95% CI] |" + (" baseline | model − baseline [95% CI] |" if paired else "") + " units |"
    lines = [f"Evaluated by `python -m align.run eval` ({title(result)}); the judge: {result['judge']['name']}"
             if result.get("judge") else f"Evaluated by `python -m align.run eval` ({title(result)})", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for section in result["sections"]:
        for row in section["figures"]:
            cells = [row["label"], with_interval(row.get("model"), row.get("model_ci95"))]
            if paired:
                cells += [number(row.get("baseline")), difference_text(row)]
            cells.append(str(row.get("units", "")))
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [""] + [f"- {line}" for line in context_lines(result) + [f"note: {n}" for n in result.get("notes", [])]]
    return "\n".join(lines) + "\n"


def render_html(result: dict) -> str:
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), autoescape=True)
    env.filters.update(number=number, interval=interval, difference=difference_text)
    env.tests["significant"] = excludes_zero
    return env.get_template(TEMPLATE).render(r=result, title=title(result), headline=headline_rows(result))


def write_outputs(result: dict, out_dir: Path) -> tuple[Path, Path]:
    from align.paths import write_atomic
    from align.runs import write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "eval.json", result)
    write_atomic(out_dir / "eval.html", render_html(result))
    return out_dir / "eval.json", out_dir / "eval.html"


SUMMARY_TEMPLATE = """<h3>{{ title }}</h3>
<table><tr><th>figure</th><th>model [95% CI]</th><th>baseline</th><th>model − baseline [95% CI]</th><th>units</th></tr>
{% for row in rows %}<tr><td>{{ row.label }}</td><td>{{ row.model|number }} {{ row.model_ci95|interval }}</td>
<td>{{ row.baseline|number }}</td><td{% if row is significant %} style="font-weight:bold"{% endif %}>{{ row|difference }}</td>
<td>{{ row.units }}</td></tr>{% endfor %}</table>
<p>Judge: {{ judge }}. Full report with every figure, per-source breakdowns and example replies:
<a href="{{ href }}">{{ href }}</a>.</p>"""


def summary_html(result: dict, href: str) -> str:
    """The headline figures of an evaluation as an HTML fragment (escaped) for the pipeline's report.html."""
    from jinja2 import Environment

    env = Environment(autoescape=True)
    env.filters.update(number=number, interval=interval, difference=difference_text)
    env.tests["significant"] = excludes_zero
    judge = (result.get("judge") or {}).get("name") or "none"
    return env.from_string(SUMMARY_TEMPLATE).render(title=title(result), rows=headline_rows(result), judge=judge,
                                                    href=href)
