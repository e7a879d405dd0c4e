"""Curation: clean, deduplicate and filter training data before SFT, RM and DPO.

    python -m align.run curate data=my-chats.jsonl                 # into runs/<recipe name>/curate/
    python -m align.run sft data=curated                           # trains on the newest curated rows
    python -m align.run curate --config tiny data=hh-harmless dedup.threshold=0.7 toxicity.enabled=false
    python -m align.run curate data=big.jsonl.gz streaming=true                # rows read and curated chunk by chunk
    python -m align.run curate data=big.jsonl.gz executor=local tasks=8 workers=4   # datatrove, over shards

Reads any dataset spec the stages accept (chat rows or preference pairs, both splits), runs the steps below in
order — each switchable in the recipe's `curate:` section and counting what it removed and why — and writes into
runs/<run>/curate/:
    train.jsonl, test.jsonl   the curated rows in TRL's format (`data=curated`, `data=curated:runs/<run>` or
                              `data=runs/<run>/curate` in sft, rm and dpo)
    removed.jsonl             every row left out: its id (source file:line), step, reason, detail and the row
    curate_report.json/.html  counts per step and reason, rows/s, examples of removed rows
    manifest.json, config.yaml
Rows are held in memory, or with `streaming` (or data over `stream_above_mb`) read lazily and curated in chunks
of `chunk_rows`, written as they come: the same files either way (data/curate/flow.py). `executor` runs the steps
as datatrove pipeline stages over `tasks` shards (data/curate/cluster.py): the same files again.
A rerun with the same recipe section and data (the fingerprint in the manifest) is skipped; `--force` redoes it.
Bad input (an unreadable file, a row that is not a row) stops with one line naming the file, row and field, and
nothing is written.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import List

from align.config import opt
from align.data.curate import (balance, decontaminate, dedup, language, length, normalise, pii, toxicity)
from align.log import log

VERSION = "v2"  # of the steps' behaviour: a new version reruns a finished curation
STAGE = "curate"
# The order the steps run in: cheap ones first, the toxicity scorer on the fewest rows, caps on what is left.
STEPS = {"normalise": normalise, "dedup": dedup, "pii": pii, "language": language, "length": length,
         "decontaminate": decontaminate, "toxicity": toxicity, "balance": balance}


def _section(module):
    return field(default_factory=module.Options)


@dataclass
class Options:
    data: str = opt("auto", "data to curate: a shipped name, a JSONL/JSON/Parquet/CSV file, a hub id, labels:<store>, "
                            "or several joined by commas; auto: the `data` of the first stage in `into`")
    into: List[str] = opt(["sft"], "stages that train on the curated rows when the pipeline runs curate first (their "
                                   "`data` becomes curated:<run>); auto data is the first one's",
                          choices=("sft", "rm", "dpo", "ppo", "grpo", "rloo", "kto"))
    kind: str = opt("auto", "chat or preference rows (auto: the first row's)", choices=("auto", "chat", "preference"))
    on_bad_rows: str = opt("drop", "rows the stages' checks refuse (empty turns, ties, identical replies, missing "
                                   "fields): drop them (counted) or refuse (stop at the first, naming it)",
                           choices=("drop", "refuse"))
    num_proc: int = opt(1, "processes for the row-by-row steps (normalise, pii; datasets' map)", min=1)
    streaming: bool = opt(False, "read the rows lazily and curate them chunk by chunk, writing as it goes: memory "
                                 "holds one chunk and the dedup/decontamination indexes, never the dataset")
    stream_above_mb: int = opt(1024, "stream without being asked when the local files read exceed this many MB "
                                     "(-1: only with streaming=true)", min=0, also=(-1,))
    chunk_rows: int = opt(10_000, "rows per chunk when streaming (and per shard chunk on a cluster)", min=1)
    executor: str = opt("none", "run the steps as datatrove pipeline stages over shards: local processes, Slurm "
                                "or Ray (pip install 'align[curate-cluster]'); none: in this process",
                        choices=("none", "local", "slurm", "ray"))
    tasks: int = opt(4, "shards (datatrove tasks) for executor=local/slurm/ray", min=1)
    workers: int = opt(2, "shards curated at once (executor=local: processes; slurm: array parallelism)", min=1)
    cluster: dict = opt({}, "extra keyword arguments for datatrove's Slurm or Ray executor (e.g. {partition: cpu, "
                            "time: '4:00:00'} for Slurm)")
    progress: bool = opt(True, "progress bars")
    normalise: normalise.Options = _section(normalise)
    dedup: dedup.Options = _section(dedup)
    pii: pii.Options = _section(pii)
    language: language.Options = _section(language)
    length: length.Options = _section(length)
    decontaminate: decontaminate.Options = _section(decontaminate)
    toxicity: toxicity.Options = _section(toxicity)
    balance: balance.Options = _section(balance)


def data_spec(cfg) -> str:
    """The spec curate reads: `curate.data`, or with `auto` the data of the first stage in `curate.into`."""
    options = cfg.curate
    if options.data != "auto":
        return options.data
    if not options.into:
        from align.errors import ConfigError

        raise ConfigError("curate.data=auto needs a stage in curate.into (or name the data: curate.data=<spec>)")
    return cfg[options.into[0]].data


def train_on_curated(cfg, run_dir: Path):
    """A copy of the recipe whose `curate.into` stages read this run's curated rows (`curated:<run_dir>`)."""
    cfg = copy.deepcopy(cfg)
    for stage in cfg.curate.into:
        if stage in cfg:
            cfg[stage].data = f"curated:{run_dir}"
    return cfg


def curate(cfg, run: str | None = None, force: bool = False) -> Path:
    """Curate `cfg.curate.data` into runs/<run>/curate (run: the recipe's name by default); returns that folder."""
    from align.driver import _git_commit, _peak_rss_mb, _versions
    from align.runs import Parent, StageWork, fingerprint_inputs, fingerprint_of, read_manifest, write_json
    from align import config as config_mod
    from align.data.curate import Env, flow
    from align.data.curate import load as loader
    from align.data.curate import report as reporting
    from align.data.registry import spec_digest

    options = cfg.curate
    run_dir = Path(cfg.runs_dir) / (run or cfg.name)
    spec = data_spec(cfg)
    inputs = {**fingerprint_inputs(STAGE, cfg, Parent(source="data")), "version": VERSION, "spec": spec}
    inputs["data"]["data"] = spec_digest(spec)  # the content of what `auto` named, too
    done = read_manifest(run_dir / STAGE)
    if done and done.get("fingerprint") == fingerprint_of(inputs) and not force:
        log.info(f"curate: {run_dir / STAGE} is up to date (same data and settings): skipped")
        return run_dir / STAGE

    # 1. The rows: read whole (and checked: bad input stops before anything is written), or lazily chunk by chunk.
    started, cpu_started = time.time(), time.process_time()
    env = Env(num_proc=options.num_proc, progress=options.progress, model_source=cfg.model.source,
              model_options=cfg.model, scorer=str(cfg.gate.scorer), device="cpu")
    names = [name for name in STEPS if options[name].enabled]
    mode = processing_mode(options, spec)
    cluster = _cluster(options.executor) if options.executor != "none" else None
    reader = loader.Reader(spec, options.kind, options.on_bad_rows, lazy=mode == "streaming")
    chunks = reader.chunks(options.chunk_rows) if mode == "streaming" else \
        list(reader.chunks(sys.maxsize)) if mode == "in memory" else None
    reading = (time.time() - started, time.process_time() - cpu_started) if mode == "in memory" else (0, 0)
    work = StageWork(run_dir, STAGE)
    runs_existed = run_dir.parent.exists()
    work.begin(False, inputs)
    output = None
    try:
        # 2. The steps in order, each on what the one before kept; the kept and removed rows written as they come.
        out = work.output_dir
        output = flow.Output(out, work.work_dir / "removed-parts", [loader.STEP, *names])
        if cluster is not None:
            tallies, notes, entries = cluster.run(spec, options, env, names, work.work_dir / "cluster", output)
        else:
            steps = [(name, partial(flow.open_step, STEPS[name], options[name], env)) for name in names]
            tallies = flow.run(chunks, loader.STEP, steps, output)
            tallies[0].wall_s, tallies[0].cpu_s = tallies[0].wall_s + reading[0], tallies[0].cpu_s + reading[1]
            notes, entries = reader.notes, reader.entries
        output.close()
        wall = time.time() - started

        # 3. The report, the manifest; the folder promoted in one rename.
        steps_report = [tally.entry() for tally in tallies]
        rows_in, rows_out = steps_report[0]["rows_in"], steps_report[-1]["rows_out"]
        report = {"spec": spec, "kind": notes["kind"], "mode": mode, "rows_in": rows_in, "rows_out": rows_out,
                  "rows_read": notes["rows_read"],
                  "rows_out_by_split": {split: output.by_split[split] for split in flow.SPLIT_FILES},
                  "removed": output.removed, "steps": steps_report, "examples": output.examples.shown(),
                  "removed_file": reporting.REMOVED_NAME, "wall_s": round(wall, 2),
                  "cpu_s": round(time.process_time() - cpu_started, 2),
                  "rows_per_s": round(rows_in / wall) if wall > 0 else None, "peak_rss_mb": _peak_rss_mb()}
        reporting.write(out, report)
        metrics = {key: report[key] for key in ("kind", "rows_in", "rows_out", "rows_out_by_split", "removed")}
        metrics["removed_by_step"] = {step["name"]: step["removed"] for step in steps_report}
        (out / "config.yaml").write_text(config_mod.to_yaml(cfg), encoding="utf-8")
        write_json(out / "manifest.json", {
            "stage": STAGE, "run": run_dir.name, "status": "promoted", "parent": None, "model": None,
            "data": entries, "config": config_mod.to_dict(cfg), "versions": _versions(), "git": _git_commit(),
            "fingerprint": fingerprint_of(inputs), "metrics": metrics, "gate": None,
            "timing": {"wall_s": round(wall, 1), "rows_per_s": report["rows_per_s"], "peak_rss_mb": _peak_rss_mb()},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except BaseException:
        if output is not None:
            output.abandon()
        work.abandon()
        if not runs_existed and run_dir.parent.is_dir() and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()  # nothing written, not even the runs folder
        raise
    final = work.promote()
    log.info(f"curate ({mode}): {rows_in} rows in, {rows_out} out ({output.removed} removed: "
             + ", ".join(f"{s['name']} {s['removed']}" for s in steps_report if s["removed"])
             + f") in {wall:.1f}s: {final}")
    return final


def _cluster(executor: str):
    """align.data.curate.cluster, or a ConfigError when datatrove is not installed."""
    from align.errors import ConfigError

    try:
        from align.data.curate import cluster
    except ImportError:
        raise ConfigError(f"curate.executor={executor} needs datatrove: pip install -c constraints.txt -e "
                          f"'.[curate-cluster]'") from None
    return cluster


def processing_mode(options, spec: str) -> str:
    """in memory, streaming (asked for, or the local files exceed stream_above_mb), or the datatrove executor's."""
    from align.data.curate.stream import size_mb
    from align.data.registry import mix_parts

    if options.executor != "none":
        return f"datatrove {options.executor}"
    if options.streaming:
        return "streaming"
    if options.stream_above_mb >= 0 and size_mb(mix_parts(spec)) > options.stream_above_mb:
        log.info(f"curate: the data is over stream_above_mb={options.stream_above_mb} MB: streaming")
        return "streaming"
    return "in memory"


# ------------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from align.config import describe_options

    rows = describe_options(Options, "curate.")
    width = max(len(k) for k, _, _ in rows)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.epilog = "curate options (override as key=value; the `curate.` prefix is optional):\n" + "\n".join(
        f"  {k:<{width}}  {h} (default: {d})" for k, d, h in rows)
    parser.add_argument("--config", default="default", help="recipe name or YAML path (default: default)")
    parser.add_argument("--run", help="run name: the folder under runs_dir (default: the recipe's name)")
    parser.add_argument("--force", action="store_true", help="curate again even when nothing changed")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. dedup.threshold=0.7")


def main(args) -> int:
    from align.config import load_recipe

    curate(load_recipe(args.config, args.overrides, command=STAGE), run=args.run, force=args.force)
    return 0
