"""Curation over shards with datatrove's executors: several local processes, a Slurm cluster or a Ray cluster.

    python -m align.run curate data=big.jsonl.gz executor=local tasks=8 workers=4
    python -m align.run curate data=big.jsonl.gz executor=slurm tasks=64 workers=16 \
        "cluster={partition: cpu, time: '4:00:00', cpus_per_task: 2}"        # run_dir on a shared file system

The enabled steps are cut into segments (`segments`): a run of row-by-row steps (normalise, pii, language,
length, toxicity) is one datatrove stage of `tasks` tasks, each curating one shard — every tasks-th row, read
lazily from the input by every task — in chunks; a run of ordered steps (dedup, decontaminate, balance: a row's
verdict depends on the rows before it) is one stage of a single task that reads every shard's rows merged back
into curation's order. Each stage writes its kept rows (with their place in that order) and each step's removed
rows into the work folder; the next stage depends on it. At the end this process joins them into the same
train.jsonl, test.jsonl and removed.jsonl, in the same order, that curating in one process writes.

Cross-shard duplicates: dedup sees every shard's rows in one pass, as in one process, keeping only each kept
row's hash, MinHash signature and id, so a near duplicate in another shard is found and the verdict (the earlier
row stays) is the single-process one. datatrove's own MinHash dedup (MinhashDedupSignature → MinhashDedupBuckets
→ MinhashDedupCluster → MinhashDedupFilter) spreads that work over tasks too but keeps a different row of a
cluster and uses its own shingling and hashes; align keeps its own rule, so a sharded curation equals a single one.
"""

from __future__ import annotations

import heapq
import json
import time
from pathlib import Path
from typing import Iterator

from datatrove.pipeline.base import PipelineStep

from align.errors import AlignError, DataError
from align.data.curate import Record, StepResult
from align.data.curate import flow
from align.data.curate.load import STEP as READ_STEP, Reader

READ = "read"  # a later segment's reading: its rows come from the segment before


def segments(names: list[str]) -> list[tuple[bool, list[str]]]:
    """The steps in runs of (ordered, names): row-by-row ones run on every shard, ordered ones in one task."""
    runs: list[tuple[bool, list[str]]] = []
    for name in names:
        ordered = bool(getattr(step_module(name), "ORDERED", False))
        if runs and runs[-1][0] == ordered:
            runs[-1][1].append(name)
        else:
            runs.append((ordered, [name]))
    return runs or [(False, [])]


def step_module(name: str):
    import importlib

    return importlib.import_module(f"align.data.curate.{name}")


def _record(line: str) -> Record:
    data = json.loads(line)
    return Record(data["id"], data["split"], data["source"], data["row"], data["kind"], data["order"])


def _ordered_lines(paths: list[Path]) -> Iterator[str]:
    """The lines of files each in curation's order, merged into that order."""
    handles = [open(path, encoding="utf-8") for path in paths if path.is_file()]
    try:
        yield from heapq.merge(*handles, key=lambda line: json.loads(line)["order"])
    finally:
        for handle in handles:
            handle.close()


class ShardOutput:
    """A task's kept rows, each with its place in the order: kept-<task>.jsonl, or for an ordered segment (one
    task) spread over the shards again, row n into kept-<(n - 1) % shards>.jsonl as the input was shared; and each
    step's removed rows, removed-<step>-<task>.jsonl."""

    def __init__(self, folder: Path, rank: int, spread_over: int = 1):
        self.folder, self.rank = folder, rank
        folder.mkdir(parents=True, exist_ok=True)
        self.kept = [open(folder / f"kept-{i:05d}.jsonl", "w", encoding="utf-8")
                     for i in (range(spread_over) if spread_over > 1 else [rank])]
        self.removed: dict[str, object] = {}

    def keep(self, records: list[Record]) -> None:
        for record in records:
            self.kept[(record.order - 1) % len(self.kept)].write(json.dumps(
                {"order": record.order, "id": record.id, "split": record.split, "source": record.source,
                 "kind": record.kind, "row": record.row}, ensure_ascii=False) + "\n")

    def remove(self, step: str, removed) -> None:
        if step not in self.removed:
            self.removed[step] = open(self.folder / f"removed-{step}-{self.rank:05d}.jsonl", "w", encoding="utf-8")
        for entry in removed:
            self.removed[step].write(json.dumps({"order": entry.record.order, **entry.to_json()},
                                                ensure_ascii=False) + "\n")

    def close(self) -> None:
        for handle in [*self.kept, *self.removed.values()]:
            handle.close()


class CurateSegment(PipelineStep):
    """One segment of align's curate steps as a datatrove pipeline step: for one shard, or (ordered) for all of
    them merged in order. It reads and writes align's files itself (no datatrove Documents pass between steps)."""

    name = "align curate"
    type = "CURATE"

    def __init__(self, spec: str, options, env, index: int, ordered: bool, names: list[str], folder: str,
                 shards: int):
        super().__init__()
        self.spec, self.options, self.env = spec, options, env
        self.index, self.ordered, self.names, self.folder, self.shards = index, ordered, names, folder, shards

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        run_segment(self, rank)


def run_segment(segment, rank: int) -> None:
    """Curate a segment's steps on its rows: the input's share (the first segment) or the segment before's kept
    rows; writes its kept and removed rows, and its tallies (with the reader's notes), under its folder."""
    folder = Path(segment.folder)
    here = folder / f"segment-{segment.index}"
    if any(folder.glob("segment-*/error-*.txt")):  # an earlier task met bad input: nothing left to do
        return
    options, reader = segment.options, None
    if segment.index == 0:
        share = (0, 1) if segment.ordered else (rank, segment.shards)
        reader = Reader(segment.spec, options.kind, options.on_bad_rows, lazy=True, share=share)
        chunks, read_step = reader.chunks(options.chunk_rows), READ_STEP
    else:
        before = folder / f"segment-{segment.index - 1}"
        paths = sorted(before.glob("kept-*.jsonl")) if segment.ordered else [before / f"kept-{rank:05d}.jsonl"]
        chunks, read_step = _chunks(_ordered_lines(paths), options.chunk_rows), READ
    steps = [(name, lambda name=name: flow.open_step(step_module(name), options[name], segment.env))
             for name in segment.names]
    output = ShardOutput(here, rank, segment.shards if segment.ordered else 1)
    try:
        tallies = flow.run(chunks, read_step, steps, output)
    except AlignError as error:  # said once, by the process that collects: one line, exit 2 (not raised here: a
        # DataError does not survive the trip back through the worker pool, which then hangs)
        (here / f"error-{rank:05d}.txt").write_text(str(error), encoding="utf-8")
        return
    finally:
        output.close()
    state = {"tallies": [t.to_json() for t in tallies]}
    if reader is not None:
        state.update(notes=reader.notes, entries=reader.entries)
    (here / f"tallies-{rank:05d}.json").write_text(json.dumps(state), encoding="utf-8")


def _chunks(lines: Iterator[str], size: int) -> Iterator[StepResult]:
    chunk = StepResult(kept=[])
    for line in lines:
        chunk.kept.append(_record(line))
        if len(chunk.kept) >= size:
            yield chunk
            chunk = StepResult(kept=[])
    if chunk.kept:
        yield chunk


def executor(options, pipeline: list, tasks: int, logging_dir: Path, depends, index: int):
    """The datatrove executor options.executor names, for one segment."""
    workers = min(options.workers, tasks)
    common = {"tasks": tasks, "workers": workers, "logging_dir": str(logging_dir), "depends": depends}
    if options.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, **common)
    common.update(options.cluster)
    if options.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        return SlurmPipelineExecutor(pipeline, job_name=f"align-curate-{index}", **common)
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(pipeline, **common)


def run(spec: str, options, env, names: list[str], folder: Path, output: flow.Output):
    """Curate through datatrove's executor into `output` (flow.Output); returns (tallies, reader notes, manifest
    entries) as the single-process flow does."""
    plan = segments(names)
    previous, tasks_of = None, []
    for index, (ordered, steps) in enumerate(plan):
        tasks = 1 if ordered else options.tasks
        step = CurateSegment(spec, options, env, index, ordered, steps, str(folder), options.tasks)
        previous = executor(options, [step], tasks, folder / "logs" / f"segment-{index}", previous, index)
        tasks_of.append(tasks)
    try:
        previous.run()
    except Exception:
        _raise_task_error(folder, len(plan))
        raise
    _wait(folder, tasks_of)
    _raise_task_error(folder, len(plan))
    return collect(folder, plan, names, output)


def _raise_task_error(folder: Path, segments_run: int) -> None:
    for index in range(segments_run):
        for path in sorted((folder / f"segment-{index}").glob("error-*.txt")):
            message = path.read_text(encoding="utf-8")
            raise AlignError(message.removeprefix("error: "))


def _wait(folder: Path, tasks_of: list[int], poll_s: float = 10) -> None:
    """Until every task has marked itself complete (a Slurm or Ray executor returns once the jobs are queued)."""
    last = len(tasks_of) - 1
    done = folder / "logs" / f"segment-{last}" / "completions"
    while not done.is_dir() or len(list(done.iterdir())) < tasks_of[last]:
        if any(folder.glob("segment-*/error-*.txt")):
            return
        time.sleep(poll_s)


def collect(folder: Path, plan, names: list[str], output: flow.Output):
    """Join the segments' files into the curate folder in curation's order; sum the tallies."""
    tallies = {name: flow.Tally(name) for name in (READ_STEP, *names)}
    notes: dict = {"rows_read": {}, "kind": None}
    entries: dict[tuple, dict] = {}
    for index in range(len(plan)):
        for path in sorted((folder / f"segment-{index}").glob("tallies-*.json")):
            state = json.loads(path.read_text(encoding="utf-8"))
            for tally in state["tallies"]:
                if tally["name"] != READ:
                    tallies[tally["name"]].merge(tally)
            if "notes" in state:
                for split, n in state["notes"]["rows_read"].items():
                    notes["rows_read"][split] = notes["rows_read"].get(split, 0) + n
                notes["kind"] = notes["kind"] or state["notes"]["kind"]
                for entry in state["entries"]:
                    key = (entry["spec"], entry["split"])
                    entries[key] = {**entry, "rows": entries.get(key, {}).get("rows", 0) + entry["rows"]}
    if not tallies[READ_STEP].rows_out:
        raise DataError(folder, None, None, "no valid rows to curate")
    for step in (READ_STEP, *names):
        paths = sorted(folder.glob(f"segment-*/removed-{step}-*.jsonl"))
        output.remove(step, ({k: v for k, v in json.loads(line).items() if k != "order"}
                             for line in _ordered_lines(paths)))
    last = folder / f"segment-{len(plan) - 1}"
    output.keep(_record(line) for line in _ordered_lines(sorted(last.glob("kept-*.jsonl"))))
    return list(tallies.values()), notes, list(entries.values())
