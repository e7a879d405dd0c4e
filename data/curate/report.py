"""curate_report.json (every count) and curate_report.html (the waterfall of rows per step, the reasons, examples
of removed rows shown as text: jinja2 with autoescaping), written into the curate folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from align.paths import write_atomic
from align.runs import write_json
from align.data.curate import Removed, row_text

JSON_NAME, HTML_NAME, REMOVED_NAME = "curate_report.json", "curate_report.html", "removed.jsonl"
EXAMPLES_PER_REASON = 3


def step_entry(name: str, rows_in: int, result, wall_s: float, cpu_s: float) -> dict:
    """One step's line of the report; cpu_s: this process's CPU seconds in it (its worker processes not counted)."""
    return {"name": name, "rows_in": rows_in, "removed": len(result.removed), "changed": result.changed,
            "rows_out": len(result.kept), "reasons": dict(Counter(r.reason for r in result.removed).most_common()),
            "wall_s": round(wall_s, 3), "cpu_s": round(cpu_s, 3),
            "rows_per_s": round(rows_in / wall_s) if wall_s > 0 else None, "notes": result.notes}


def examples(removed: list[Removed]) -> dict[str, list[dict]]:
    shown: dict[str, list[dict]] = {}
    for entry in removed:
        group = shown.setdefault(entry.reason, [])
        if len(group) < EXAMPLES_PER_REASON:
            group.append({"id": entry.record.id, "detail": entry.detail, "text": row_text(entry.record.row)[:1500]
                          if entry.record.row else ""})
    return shown


def write_removed(folder: Path, removed: list[Removed]) -> None:
    with open(folder / REMOVED_NAME, "w", encoding="utf-8") as handle:
        for entry in removed:
            handle.write(json.dumps(entry.to_json(), ensure_ascii=False) + "\n")


def write(folder: Path, report: dict) -> None:
    import jinja2

    write_json(folder / JSON_NAME, report)
    template = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True)
    write_atomic(folder / HTML_NAME, template.get_template("report.html.jinja").render(report=report))
