"""Reading a finished stage's manifest.json: what data/ needs to find a run's output (a curated data set) without
importing align.runs, which writes them.

A core utility: it imports nothing of the project, so every layer (data/ included) may use it. align.runs
re-exports these names."""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "manifest.json"


def read_json(path: Path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_manifest(stage_dir: Path) -> dict | None:
    return read_json(Path(stage_dir) / MANIFEST)


def finished_stages(runs_dir: Path, stage: str) -> list[Path]:
    """Finished folders of one stage across runs, newest first."""
    found = []
    for manifest in Path(runs_dir).glob(f"*/{stage}/{MANIFEST}"):
        data = json.loads(manifest.read_text(encoding="utf-8"))
        found.append((data.get("finished_at", ""), manifest.parent))
    return [path for _, path in sorted(found, reverse=True)]
