"""`python -m align.run sweep <stage> [--config RECIPE] [--trials N] [--study NAME] [--promote-best] [key=value ...]`

Each trial is a normal run of the stage into runs/<run>/sweep/<stage>/trial-<n>/ (see align/sweep/study.py). The
same command again resumes the study; several started at once share it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from align.log import log


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from align.stages import STAGES

    parser.add_argument("stage", choices=list(STAGES), help="the stage to search over")
    parser.add_argument("--config", default="default", help="recipe name or YAML path (default: default)")
    parser.add_argument("--from", dest="parent", metavar="ARTIFACT",
                        help="parent of every trial (default: as for the stage itself)")
    parser.add_argument("--run", help="run name (default: the parent's run, else the recipe's name, so re-running "
                                      "resumes)")
    parser.add_argument("--trials", type=int, metavar="N", help="finished trials to run to (sweep.trials)")
    parser.add_argument("--study", help="study name (sweep.study; default: <run>-<stage>)")
    parser.add_argument("--promote-best", action="store_true",
                        help="copy the best trial whose model passed its gate to runs/<run>/<stage>/")
    parser.add_argument("--override-gate", metavar="REASON",
                        help="use a parent whose gate failed / promote trials despite a failed gate (recorded)")
    parser.add_argument("--allow-ungated", action="store_true",
                        help="let gated trials build on a parent trained with the gate off (recorded)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides (the stage's own keys need no prefix), e.g. sweep.trials=4")


def run_sweep(stage: str, cfg, *, run: str | None = None, parent_spec: str | None = None,
              override_gate: str | None = None, allow_ungated: bool = False, in_pipeline: bool = False) -> dict:
    """Work on the stage's study until it holds sweep.trials finished trials, write the report, promote the best
    when sweep.promote_best. Returns {"study", "folder", "best", "ran", "report", "promoted"}."""
    from align.driver import is_gated
    from align.errors import ConfigError
    from align.runs import resolve_parent
    from align.sweep import promote, report, study as study_mod
    from align.sweep.space import search_space
    from align.stages import stage_module

    options = cfg.sweep
    if options.trials < 1:
        raise ConfigError(f"sweep.trials={options.trials}: must be at least 1")
    params = search_space(cfg, stage, skip_other_stages=in_pipeline)
    objective, direction = study_mod.objective_of(options, stage)
    module = stage_module(stage)
    runs_dir = Path(cfg.runs_dir)
    parent = resolve_parent(parent_spec, module.PARENT_STAGES, runs_dir, cfg.model.source, override_gate,
                            child_gated=is_gated(module, cfg), allow_ungated=allow_ungated)
    if run is None:
        in_runs = parent.run_dir is not None and parent.run_dir.parent.resolve() == runs_dir.resolve()
        run = parent.run_dir.name if in_runs else cfg.name
    run_dir = runs_dir / run
    folder = run_dir / "sweep" / stage
    folder.mkdir(parents=True, exist_ok=True)
    name = options.study or f"{run}-{stage}"
    with study_mod.claim_lock(folder):
        study = study_mod.open_study(options, folder, name, direction)
        study_mod.check_same_settings(study, stage, study_mod.study_inputs(stage, cfg, parent, params, objective))
        study_mod.seed_first_trials(study, options, params, cfg)
    finished, _ = study_mod.finished_count(study)
    log.info(f"sweep {stage}: study {name!r} in {study_mod.storage_url(options, folder)}: {finished} of "
             f"{options.trials} trials finished; {objective} ({direction}) over "
             f"{', '.join(p.key for p in params)}")
    ran = study_mod.work_on(study, stage, cfg, folder, params, parent.source, objective, direction,
                            override_gate=override_gate, allow_ungated=allow_ungated)
    page = report.write_report(study, folder, stage, objective, direction)
    best = study_mod.best_trial(study, direction)
    log.info(f"sweep {stage}: {ran} trial(s) run here; report {page}")
    if best is not None:
        log.info(f"sweep {stage}: best trial {best.number}: {objective}={best.value:.5g} "
                 f"({', '.join(f'{k}={v}' for k, v in best.params.items())}), {best.user_attrs.get('folder')}")
    promoted = None
    if options.promote_best:
        record = {"study": name, "storage": study_mod.storage_url(options, folder), "objective": objective,
                  "direction": direction}
        promoted = promote.promote_best(study, direction, run_dir, stage, record)
        log.info(f"sweep {stage}: best trial promoted to {promoted}")
    return {"study": name, "folder": folder, "best": best, "ran": ran, "report": page, "promoted": promoted}


def swept_stages(cfg) -> list[str]:
    """pipeline.sweep, checked: the stages of pipeline.stages that the pipeline sweeps instead of running once."""
    from align.errors import ConfigError

    stray = [s for s in cfg.pipeline.sweep if s not in cfg.pipeline.stages]
    if stray:
        raise ConfigError(f"pipeline.sweep: {stray[0]!r} is not one of pipeline.stages "
                          f"({', '.join(cfg.pipeline.stages)})")
    from align.sweep.space import search_space
    from align.sweep.study import objective_of

    for stage in cfg.pipeline.sweep:  # refused now, not after the stages before it have run
        search_space(cfg, stage, skip_other_stages=True)
        objective_of(cfg.sweep, stage)
    return list(cfg.pipeline.sweep)


def sweep_as_stage(stage: str, cfg, run_dir: Path, parent_spec: str | None, override_gate: str | None = None,
                   allow_ungated: bool = False) -> Path:
    """A pipeline's stage as a sweep: the study in runs/<run>/sweep/<stage>/ (resumed when the pipeline is), its
    best feasible trial promoted to runs/<run>/<stage>/ for the stages after it."""
    import copy

    from omegaconf import OmegaConf

    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, "sweep.promote_best", True)
    return run_sweep(stage, cfg, run=run_dir.name, parent_spec=parent_spec, override_gate=override_gate,
                     allow_ungated=allow_ungated, in_pipeline=True)["promoted"]


def main(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from align.config import load_recipe

    overrides = list(args.overrides)
    if args.trials is not None:
        overrides.append(f"sweep.trials={args.trials}")
    if args.study:
        overrides.append(f"sweep.study={args.study}")
    cfg = load_recipe(args.config, overrides, command=args.stage)
    if args.promote_best:
        OmegaConf.update(cfg, "sweep.promote_best", True)
    run_sweep(args.stage, cfg, run=args.run, parent_spec=args.parent, override_gate=args.override_gate,
              allow_ungated=args.allow_ungated)
    return 0
