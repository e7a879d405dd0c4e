"""The curate steps over chunks of rows, the kept and removed rows written as they come.

Each chunk the reader gives goes through every enabled step in order; its kept rows are appended to the curated
splits (train.jsonl, test.jsonl) and each step's removed rows to that step's part of removed.jsonl, so memory holds
one chunk and what the ordered steps keep from chunk to chunk (hashes, MinHash signatures, n-grams, counts), never
the whole dataset. Curating all rows at once is one chunk: the same code, the same files.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from align.data.curate import Record, Removed, StepResult
from align.data.curate.report import REMOVED_NAME, Examples

SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}


@dataclass
class Tally:
    """One step's figures over every chunk (and every shard): the report's line for it."""

    name: str
    rows_in: int = 0
    removed: int = 0
    changed: int = 0
    rows_out: int = 0
    reasons: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    notes: dict = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)

    def add(self, rows_in: int, result: StepResult, wall_s: float, cpu_s: float) -> None:
        self.rows_in += rows_in
        self.removed += len(result.removed)
        self.changed += result.changed
        self.rows_out += len(result.kept)
        self.reasons.update(r.reason for r in result.removed)
        self.wall_s += wall_s
        self.cpu_s += cpu_s
        self.notes = result.notes or self.notes
        self.counts.update(result.counts)

    def merge(self, other: dict) -> None:
        """Add a tally written as JSON (a shard's)."""
        for key in ("rows_in", "removed", "changed", "rows_out", "wall_s", "cpu_s"):
            setattr(self, key, getattr(self, key) + other[key])
        self.reasons.update(other["reasons"])
        self.counts.update(other["counts"])
        self.notes = other["notes"] or self.notes

    def to_json(self) -> dict:
        return {"name": self.name, "rows_in": self.rows_in, "removed": self.removed, "changed": self.changed,
                "rows_out": self.rows_out, "reasons": dict(self.reasons), "wall_s": self.wall_s,
                "cpu_s": self.cpu_s, "notes": self.notes, "counts": dict(self.counts)}

    def entry(self) -> dict:
        """The report's step entry; cpu_s: this process's CPU seconds in it (worker processes not counted)."""
        return {"name": self.name, "rows_in": self.rows_in, "removed": self.removed, "changed": self.changed,
                "rows_out": self.rows_out, "reasons": dict(self.reasons.most_common()),
                "wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3),
                "rows_per_s": round(self.rows_in / self.wall_s) if self.wall_s > 0 else None,
                "notes": {**self.notes, **self.counts}}


class PerChunk:
    """A step without state of its own: its module's `apply` on each chunk."""

    def __init__(self, module, options, env):
        self.module, self.options, self.env = module, options, env

    def apply(self, records: list[Record]) -> StepResult:
        return self.module.apply(records, self.options, self.env)


def open_step(module, options, env):
    """A step's running form: its `Step` (what it keeps from chunk to chunk), or its `apply` per chunk."""
    return module.Step(options, env) if hasattr(module, "Step") else PerChunk(module, options, env)


class Output:
    """The curated splits and removed.jsonl, written into `folder` as chunks come. Each step's removed rows go to
    their own file under `parts` until `close` joins them in step order, so removed.jsonl lists them step by step
    (each step's in row order) however the chunks interleave."""

    def __init__(self, folder: Path, parts: Path, steps: list[str]):
        self.folder, self.parts, self.steps = folder, parts, steps
        parts.mkdir(parents=True, exist_ok=True)
        self.split_files = {split: open(folder / name, "w", encoding="utf-8") for split, name in SPLIT_FILES.items()}
        self.removed_files = {step: open(parts / f"{i:02d}-{step}.jsonl", "w", encoding="utf-8")
                              for i, step in enumerate(steps)}
        self.by_split: Counter = Counter()
        self.removed = 0
        self.examples = Examples(steps)

    def keep(self, records: Iterable[Record]) -> None:
        for record in records:
            self.split_files[record.split].write(json.dumps(record.row, ensure_ascii=False) + "\n")
            self.by_split[record.split] += 1

    def remove(self, step: str, removed: Iterable[Removed | dict]) -> None:
        """Removed entries, or their JSON form (a shard's removed.jsonl lines)."""
        handle = self.removed_files[step]
        for entry in removed:
            entry = entry.to_json() if isinstance(entry, Removed) else entry
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self.examples.add(step, entry["reason"], entry["id"], entry["detail"], entry["row"])
            self.removed += 1

    def close(self) -> None:
        for handle in [*self.split_files.values(), *self.removed_files.values()]:
            handle.close()
        with open(self.folder / REMOVED_NAME, "wb") as joined:
            for i, step in enumerate(self.steps):
                with open(self.parts / f"{i:02d}-{step}.jsonl", "rb") as part:
                    shutil.copyfileobj(part, joined)
        shutil.rmtree(self.parts)

    def abandon(self) -> None:
        for handle in [*self.split_files.values(), *self.removed_files.values()]:
            handle.close()


def run(chunks: Iterable[StepResult], read_step: str, steps: list[tuple[str, Callable[[], object]]],
        output) -> list[Tally]:
    """Every chunk (the rows read: kept, and refused by `read_step`) through the steps (name, a function opening
    it: called at the first chunk, so bad input stops curation before any model loads); returns each step's tally,
    the reading one first. `output` takes each step's removed rows and the rows kept at the end."""
    tallies = {name: Tally(name) for name in (read_step, *(name for name, _ in steps))}
    opened = None
    chunks = iter(chunks)
    while True:
        started, cpu = time.time(), time.process_time()
        loaded = next(chunks, None)
        if loaded is None:  # the reader's last call: the end of the file, its hash
            tallies[read_step].wall_s += time.time() - started
            tallies[read_step].cpu_s += time.process_time() - cpu
            break
        tallies[read_step].add(len(loaded.kept) + len(loaded.removed), loaded, time.time() - started,
                               time.process_time() - cpu)
        output.remove(read_step, loaded.removed)
        if opened is None:  # a step's loading (a model, an index) counts in its time
            opened = []
            for name, opener in steps:
                started, cpu = time.time(), time.process_time()
                opened.append((name, opener()))
                tallies[name].wall_s += time.time() - started
                tallies[name].cpu_s += time.process_time() - cpu
        records = loaded.kept
        for name, step in opened:
            started, cpu = time.time(), time.process_time()
            result = step.apply(records)
            tallies[name].add(len(records), result, time.time() - started, time.process_time() - cpu)
            output.remove(name, result.removed)
            records = result.kept
        output.keep(records)
    return list(tallies.values())
