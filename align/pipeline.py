"""`python -m align.run pipeline`: the stages of a recipe in order, each gated, resumable as a whole.

Default: SFT → gate → RM → DPO → gate, into runs/<recipe name>/. Running the same command again resumes:
a finished stage whose inputs are unchanged (same recipe section, same parent, same data — the fingerprint in
its manifest) is skipped, an interrupted one continues from its checkpoint, and a changed config or dataset
reruns that stage and everything after it. Human labels join in: when the run's label store has exported
pairs, they are mixed into the RM and DPO data. A summary table and runs/<run>/report.html close the run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from align.config import opt

PREFERENCE_STAGES = ("rm", "dpo")


@dataclass
class PipelineOptions:
    stages: List[str] = opt(["sft", "rm", "dpo"], "stages in order (each model-producing one is gated)")
    labels: Optional[str] = opt(
        None, "label store whose exported pairs join the rm and dpo data (default: runs/<run>/labels.sqlite if it exists)")
    mix_labels: bool = opt(True, "mix the label store's pairs into the rm and dpo data when it has any")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default", help="recipe name or YAML path (default: default)")
    parser.add_argument("--run", help="run name (default: the recipe's name, so re-running resumes)")
    parser.add_argument("--override-gate", metavar="REASON",
                        help="carry on past a failed gate; the reason is recorded in each manifest")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (dotted keys)")


def _say(message: str) -> None:
    print(f"[align] {message}", flush=True)


def _label_spec(options, run_dir: Path) -> str | None:
    """`labels:<store>` when label mixing is on and the store has exported pairs."""
    if not options.mix_labels:
        return None
    store = options.labels or str(run_dir / "labels.sqlite")
    if "://" not in store and not Path(store).is_file():
        return None
    from data.store import open_store

    handle = open_store(store)
    try:
        pairs = len(handle.export_preferences())
    finally:
        handle.close()
    if not pairs:
        return None
    _say(f"mixing {pairs} human preference pairs from {store} into {', '.join(PREFERENCE_STAGES)}")
    return f"labels:{store}"


def _with_labels(cfg, label_spec: str | None):
    if label_spec is None:
        return cfg
    import copy

    cfg = copy.deepcopy(cfg)  # a private copy to change
    for stage in PREFERENCE_STAGES:
        if stage in cfg and label_spec not in cfg[stage].data:
            cfg[stage].data = f"{cfg[stage].data},{label_spec}"
    return cfg


def stage_plan(stage: str, run_dir: Path) -> str | None:
    """The parent a pipeline stage starts from: SFT from the base model, everything else from the run's SFT."""
    return None if stage == "sft" else str(run_dir / "sft")


def run_pipeline(cfg, run: str | None = None, override_gate: str | None = None) -> Path:
    from align.driver import run_stage
    from align.errors import ConfigError
    from align.runs import Parent, StageWork, read_manifest, resolve_parent, stage_fingerprint
    from stages import STAGES

    unknown = [s for s in cfg.pipeline.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"pipeline.stages: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    run_dir = Path(cfg.runs_dir) / (run or cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = _with_labels(cfg, _label_spec(cfg.pipeline, run_dir))
    stages = list(cfg.pipeline.stages)
    timings: dict[str, float] = {}
    skipped: list[str] = []
    started = time.time()
    try:
        for number, stage in enumerate(stages, 1):
            print(f"\n━━━━ [{number}/{len(stages)}] {stage} ━━━━ (pipeline {run_dir}, "
                  f"{time.time() - started:.0f}s so far)", flush=True)
            parent_spec = stage_plan(stage, run_dir)
            parent = resolve_parent(parent_spec, (), Path(cfg.runs_dir), cfg.model.source, override_gate) \
                if parent_spec else Parent(source=cfg.model.source)
            finished = read_manifest(run_dir / stage)
            if finished and finished.get("fingerprint") == stage_fingerprint(stage, cfg, parent) \
                    and finished.get("status") in ("promoted", "overridden"):
                _say(f"{stage}: finished earlier with the same inputs — skipped")
                skipped.append(stage)
                timings[stage] = 0.0
                continue
            resume = StageWork(run_dir, stage).last_checkpoint() is not None
            t0 = time.time()
            run_stage(stage, cfg, parent_spec=parent_spec, run=run_dir.name, resume=resume,
                      override_gate=override_gate)
            timings[stage] = time.time() - t0
    finally:  # the summary also when a gate stops the pipeline
        from align.report import print_summary, write_report

        total = time.time() - started
        report = write_report(run_dir, stages, timings, skipped, total)
        print_summary(run_dir, stages, timings, skipped, total)
        _say(f"report: {report}")
    return run_dir


def main(args: argparse.Namespace) -> int:
    from align.config import load_recipe

    cfg = load_recipe(args.config, args.overrides, command="pipeline")
    run_dir = run_pipeline(cfg, run=args.run, override_gate=args.override_gate)
    _say(f"chat with the aligned model: python -m align.run chat --model {run_dir}")
    return 0
