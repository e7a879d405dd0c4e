"""curate_report.json (every count) and curate_report.html (the waterfall of rows per step, the reasons, examples
of removed rows shown as text: jinja2 with autoescaping), written into the curate folder."""

from __future__ import annotations

import json
from pathlib import Path

from align.paths import write_atomic
from align.runs import write_json
from align.data.curate import row_text

JSON_NAME, HTML_NAME, REMOVED_NAME = "curate_report.json", "curate_report.html", "removed.jsonl"
EXAMPLES_PER_REASON = 3


class Examples:
    """A few removed rows per reason, for the report: the first ones in step order (each step's in row order),
    whichever order the steps' removals arrive in."""

    def __init__(self, steps: list[str]):
        self.by_step: dict[str, dict[str, list[dict]]] = {step: {} for step in steps}

    def add(self, step: str, reason: str, record_id: str, detail: str, row: dict) -> None:
        group = self.by_step[step].setdefault(reason, [])
        if len(group) < EXAMPLES_PER_REASON:
            group.append({"id": record_id, "detail": detail, "text": row_text(row)[:1500] if row else ""})

    def shown(self) -> dict[str, list[dict]]:
        shown: dict[str, list[dict]] = {}
        for groups in self.by_step.values():
            for reason, entries in groups.items():
                group = shown.setdefault(reason, [])
                group.extend(entries[:EXAMPLES_PER_REASON - len(group)])
        return shown


def write(folder: Path, report: dict) -> None:
    import jinja2

    write_json(folder / JSON_NAME, report)
    template = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True)
    write_atomic(folder / HTML_NAME, template.get_template("report.html.jinja").render(report=report))
