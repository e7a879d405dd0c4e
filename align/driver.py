"""The one path every training stage takes.

resolve the parent (refusing one whose gate failed, or, for a gated stage, one never gated) → open the work folder
(a resume only with the settings it started with) → the stage's own part (load data, build the trainer, train,
evaluate, save) → gate → manifest and model card → atomic promotion (a gate-failed model beside the promoted one).

A stage module (stages/<name>.py) supplies only its own part:
    PARENT_STAGES: tuple[str, ...]   stages whose promoted artifact it starts from by default
    Options: dataclass               its recipe section
    run(ctx: StageContext) -> dict   trains, saves the model into ctx.output_dir, returns metrics
    GATED: bool (optional)           False for a stage whose artifact generates no text (rm): no gate runs
    DISTRIBUTED: bool (optional)     False for a stage that cannot train in several processes yet (ppo)

Launched with several processes (accelerate launch, torchrun), every process runs the stage's part and only the
main one writes the run folder; the others wait for it and exit 0 (align/distributed.py).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from align import config as config_mod
from align import distributed
from align.arguments import add_switches
from align.card import write_model_card
from align.errors import GateError
from align.runs import (Parent, StageWork, failed_checks, find_resumable, fingerprint_inputs, fingerprint_of,
                        new_run_name, package_versions, resolve_parent, write_json)
from align.log import log
from align.training import finish_trackers, trackers

#: Where stage modules live: the driver finds a stage by name there (a plugin lookup, as align.config finds the
#: recipe's sections through entry points), so the core never imports the stages above it.
STAGE_PACKAGE = "align.stages"

Stage = object  # a module following the protocol above


@dataclass
class StageContext:
    """Everything a stage needs, resolved once by the driver."""

    name: str
    cfg: object  # the whole recipe (OmegaConf)
    parent: Parent
    work: StageWork
    device: str
    dtype: object
    resume_checkpoint: str | None = None
    data: list[dict] = field(default_factory=list)  # manifest entries of the datasets read
    model_format: str = "full"

    @property
    def options(self):
        return self.cfg[self.name]

    @property
    def output_dir(self) -> Path:
        return self.work.output_dir

    def record_data(self, rows) -> None:
        """Note a dataset read (a data.registry.Rows) for the manifest."""
        self.data.append(rows.manifest_entry())


def _versions() -> dict:
    return {"python": platform.python_version(),
            **package_versions("align", "torch", "transformers", "trl", "peft", "accelerate", "datasets")}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def choose_run_dir(runs_dir: Path, stage: str, run: str | None, parent: Parent, resume: bool, recipe_name: str) -> Path:
    if run:
        return runs_dir / run
    if resume:
        found = find_resumable(runs_dir, stage)
        if found is None:
            from align.errors import AlignError

            raise AlignError(f"--resume: no interrupted {stage} under {runs_dir} (name it with --run)")
        return found
    if parent.run_dir is not None and parent.run_dir.parent.resolve() == runs_dir.resolve():
        return parent.run_dir
    return runs_dir / new_run_name(recipe_name)


def is_gated(stage, cfg) -> bool:
    """Whether a stage's model goes through the gate: the gate is on and the stage makes a generator (not rm)."""
    return bool(cfg.gate.enabled) and getattr(stage, "GATED", True)


#: the flags that let a stage (or the pipeline) past a safety check, each recorded in the manifest
RUN_SAFETY_SWITCHES = {
    "--resume-changed": "resume an interrupted stage although its settings changed (the manifest records both "
                        "values of each changed key)",
    "--allow-ungated": "let a gated stage build on a parent trained with the gate off (status ungated; recorded)",
}


def run_safety_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that let a stage (or the pipeline) past a safety check, each recorded in the manifest."""
    add_switches(parser, RUN_SAFETY_SWITCHES)


def gate_status(gate: dict | None, override_reason: str | None, gated: bool = True) -> str:
    """promoted (passed, or a stage with nothing to gate), overridden, gate_failed, or ungated (gate switched off)."""
    if gate is None:
        return "ungated" if gated else "promoted"
    if gate.get("verdict") == "pass":
        return "promoted"
    return "overridden" if override_reason else "gate_failed"


def run_stage(name: str, cfg, *, parent_spec: str | None = None, run: str | None = None, resume: bool = False,
              override_gate: str | None = None, resume_changed: bool = False, allow_ungated: bool = False) -> Path:
    """Run one stage end to end; returns its finished folder. A failed gate (not overridden) leaves the model in
    runs/<run>/<stage>.gate_failed/, the promoted <stage>/ untouched, and raises a GateError (exit code 2)."""
    from align.models import choose_device, choose_dtype, resolve_source
    stage = importlib.import_module(f"{STAGE_PACKAGE}.{name}")
    trackers(cfg)  # an unknown `report_to` name fails here, before any model loads
    device = choose_device(cfg.device)
    distributed.check_supported(name, stage, lora=cfg.lora.enabled)
    distributed.start(cpu=device == "cpu")
    runs_dir = Path(cfg.runs_dir)
    resume = resume or resume_changed
    parent = resolve_parent(parent_spec, stage.PARENT_STAGES, runs_dir, cfg.model.source, override_gate,
                            child_gated=is_gated(stage, cfg), allow_ungated=allow_ungated)
    run_dir = Path(distributed.from_main(str(choose_run_dir(runs_dir, name, run, parent, resume, cfg.name))))
    work = StageWork(run_dir, name)
    inputs = fingerprint_inputs(name, cfg, parent)
    resumed = None
    if distributed.is_main():
        resumed = work.begin(resume, inputs, accept_changes=resume_changed)
        if resumed and resumed["changed"]:
            log.info(f"--resume-changed: continuing {name} with changed settings "
                     f"({', '.join(resumed['changed'])}), recorded in the manifest")
    if distributed.is_local_main():
        resolve_source(parent.source)  # builds a cached model (embedded, tiny) once per machine, before the others
    distributed.barrier()
    scratch = None
    if not distributed.is_main():  # its logs and plots go to a scratch folder; the model is saved by main only
        scratch = Path(tempfile.mkdtemp(prefix=f"align-{name}-rank{distributed.rank()}-"))
        work = StageWork(run_dir, name, output_root=scratch)
        work.output_dir.mkdir()
    ctx = StageContext(name=name, cfg=cfg, parent=parent, work=work, device=device,
                       dtype=choose_dtype(cfg.model.dtype, device),
                       resume_checkpoint=work.last_checkpoint() if resume else None)
    if resume and ctx.resume_checkpoint:
        log.info(f"resuming {name} from {ctx.resume_checkpoint}")
    log.info(f"{name}: run folder {run_dir} (parent: {parent.source})")

    started = time.time()
    try:
        metrics = stage.run(ctx)
    except BaseException:
        if scratch is None:
            work.abandon()  # keeps checkpoints for --resume, removes anything else half-written
        finish_trackers(cfg, work.output_dir, None)
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    wall = time.time() - started
    if scratch is not None:
        distributed.barrier()  # the main process gates, writes and promotes meanwhile
        return work.final_dir

    gate = None
    if is_gated(stage, cfg):
        from align.gates.runner import run_gate

        gate = run_gate(str(work.output_dir), cfg.gate, stage=name, out_dir=work.output_dir,
                        parent_source=parent.source, parent_gate=(parent.manifest or {}).get("gate"),
                        model_options=cfg.model, device=device, override_reason=override_gate)
    status = gate_status(gate, override_gate, gated=getattr(stage, "GATED", True))
    manifest = {
        "stage": name,
        "run": run_dir.name,
        "status": status,
        "parent": parent.describe(),
        "model": {"source": cfg.model.source, "format": ctx.model_format},
        "data": ctx.data,
        "config": config_mod.to_dict(cfg),
        "versions": _versions(),
        "git": _git_commit(),
        "fingerprint": fingerprint_of(inputs),
        "resumed": resumed,  # null for a run from the start; else the checkpoint and any --resume-changed settings
        "metrics": metrics,
        "timing": {"wall_s": round(wall, 1), "tokens_per_s": metrics.get("tokens_per_s"),
                   "peak_rss_mb": _peak_rss_mb(), "world_size": distributed.world_size()},
        "gate": gate,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (work.output_dir / "config.yaml").write_text(config_mod.to_yaml(cfg), encoding="utf-8")
    write_model_card(work.output_dir, manifest)
    write_json(work.output_dir / "manifest.json", manifest)  # last: its presence marks the output complete
    finish_trackers(cfg, work.output_dir, manifest)  # MLflow: the gate's figures and the manifest as artifacts
    final = work.promote(work.gate_failed_dir if status == "gate_failed" else None)
    verdict = {"promoted": "promoted", "overridden": "promoted by override", "ungated": "promoted UNGATED (gate off)",
               "gate_failed": "NOT promoted (gate failed)"}
    log.info(f"{name} finished in {wall:.0f}s: {final} — {verdict[status]}")
    distributed.barrier()  # releases the other processes
    if status == "gate_failed":
        kept = f"; the promoted {work.final_dir} is kept" if work.final_dir.exists() else ""
        raise GateError(f"{name} failed its gate ({', '.join(failed_checks(manifest.get('gate'))) or 'unknown checks'}): the model "
                        f"is in {final}, not promoted{kept}. Pass --override-gate \"<reason>\" to promote it "
                        f"anyway (recorded).")
    return final
