"""`python -m align.run pipeline`: the stages of a recipe in order, each gated, resumable as a whole.

Default: SFT → gate → RM → DPO → gate, into runs/<recipe name>/. Running the same command again resumes:
a finished stage whose inputs are unchanged (same recipe section, same parent, same data — the fingerprint in
its manifest) is skipped, an interrupted one continues from its checkpoint, and a changed config or dataset
reruns that stage and everything after it. Human labels join in: when the run's label store has exported
pairs, they are mixed into the RM and DPO data, and its thumbs and best/worst-ranked replies into KTO's. The run closes with `eval` of the final model against the base
model (align.evaluation: held-out data and an independent judge), the run's own RM's judgement of the same pair
(the training RM's view), a summary table that leads with the evaluation, and runs/<run>/report.html.
A stage listed in pipeline.sweep runs as a sweep (align/sweep: the recipe's sweep: section) whose best trial
that passed its gate becomes the stage's artifact.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from align.config import opt
from align.log import log

PREFERENCE_STAGES = ("rm", "dpo")
UNPAIRED_STAGES = ("kto",)  # they read the label store's thumbs and best/worst-ranked replies (data/unpaired.py)
CURATE = "curate"  # a data step (stages/curate.py) the pipeline may run first; `curate.into` names who trains on it
NOT_A_POLICY = ("rm", CURATE)  # entries of pipeline.stages whose output is no model to chat with, judge or evaluate


@dataclass
class PipelineOptions:
    stages: List[str] = opt(["sft", "rm", "dpo"], "stages in order (each model-producing one is gated); `curate` "
                                                  "first cleans the data of the stages in curate.into")
    labels: Optional[str] = opt(
        None, "label store whose exported pairs join the rm and dpo data, and its thumbs the kto data (default: "
              "runs/<run>/labels.sqlite if it exists)")
    mix_labels: bool = opt(True, "mix the label store's pairs into the rm and dpo data, and its unpaired examples "
                                 "(thumbs, best/worst-ranked replies) into the kto data, when it has any")
    final_eval_prompts: int = opt(64, "held-out prompts (the rm's test split) that the final model and the base "
                                      "model both answer, judged by the run's rm; 0 skips the comparison", min=0)
    final_eval_max_new_tokens: int = opt(48, "reply length cap in that comparison", min=1)
    eval_final: bool = opt(True, "close with `eval` of the final model against the base model (the recipe's `eval` "
                                 "section: held-out data, an independent judge; the summary leads with it)")
    sweep: List[str] = opt([], "stages run as a sweep (the recipe's sweep: section, align/sweep) instead of once: "
                               "their best trial that passed its gate becomes the stage's artifact")
    eval_sft: bool = opt(False, "also `eval` the sft model against the base model (the base's measurement is "
                                "reused, so this costs one more model's measurement)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="default", help="recipe name or YAML path (default: default)")
    parser.add_argument("--run", help="run name (default: the recipe's name, so re-running resumes)")
    parser.add_argument("--override-gate", metavar="REASON",
                        help="carry on past a failed gate; the reason is recorded in each manifest")
    from align.driver import run_safety_arguments

    run_safety_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides (dotted keys)")


def _label_specs(options, run_dir: Path) -> dict[str, str]:
    """stage → `labels:<store>` when label mixing is on: the preference stages when the store exports pairs, the
    unpaired ones when it exports unpaired examples."""
    if not options.mix_labels:
        return {}
    store = options.labels or str(run_dir / "labels.sqlite")
    if "://" not in store and not Path(store).is_file():
        return {}
    from align.data.store import open_store

    handle = open_store(store)
    try:
        pairs, examples = len(handle.export_preferences()), len(handle.export_kto())
    finally:
        handle.close()
    specs = {}
    for count, what, stages in ((pairs, "human preference pairs", PREFERENCE_STAGES),
                                (examples, "unpaired human labels (thumbs, best/worst replies)", UNPAIRED_STAGES)):
        if count:
            log.info(f"mixing {count} {what} from {store} into {', '.join(stages)}")
            specs.update({stage: f"labels:{store}" for stage in stages})
    return specs


def _with_labels(cfg, label_specs: dict[str, str]):
    if not label_specs:
        return cfg
    import copy

    cfg = copy.deepcopy(cfg)  # a private copy to change
    for stage, label_spec in label_specs.items():
        if stage in cfg and label_spec not in cfg[stage].data:
            cfg[stage].data = f"{cfg[stage].data},{label_spec}"
    return cfg


def stage_plan(stage: str, run_dir: Path) -> str | None:
    """The parent a pipeline stage starts from: SFT from the base model, everything else from the run's SFT."""
    return None if stage == "sft" else str(run_dir / "sft")


def run_pipeline(cfg, run: str | None = None, override_gate: str | None = None, resume_changed: bool = False,
                 allow_ungated: bool = False) -> Path:
    """A failed gate (not overridden) stops the pipeline with a GateError (exit code 2) once the report is written;
    an interrupted stage resumes only with the settings it started with (unless resume_changed)."""
    from align.driver import is_gated, run_stage
    from align.errors import ConfigError
    from align.runs import PROMOTABLE, Parent, StageWork, read_manifest, resolve_parent, stage_fingerprint
    from align.sweep.command import sweep_as_stage, swept_stages
    from align.stages import STAGES, stage_module

    unknown = [s for s in cfg.pipeline.stages if s not in STAGES and s != CURATE]
    if unknown:
        raise ConfigError(f"pipeline.stages: unknown stage {unknown[0]!r} (known: {CURATE}, {', '.join(STAGES)})")
    if CURATE in list(cfg.pipeline.stages)[1:]:
        raise ConfigError(f"pipeline.stages: {CURATE} comes first (it prepares the data the stages after it train on)")
    sweeps = swept_stages(cfg)
    run_dir = Path(cfg.runs_dir) / (run or cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = _with_labels(cfg, _label_specs(cfg.pipeline, run_dir))
    stages = list(cfg.pipeline.stages)
    timings: dict[str, float] = {}
    skipped: list[str] = []
    started = time.time()
    evaluation_error, completed = None, False
    try:
        for number, stage in enumerate(stages, 1):
            print(f"\n━━━━ [{number}/{len(stages)}] {stage} ━━━━ (pipeline {run_dir}, "
                  f"{time.time() - started:.0f}s so far)", flush=True)
            if stage == CURATE:  # the data, not a model: skipped inside when its data and settings are unchanged
                from align.stages.curate import curate, train_on_curated

                t0 = time.time()
                cfg = train_on_curated(cfg, curate(cfg, run=run_dir.name).parent)
                timings[stage] = time.time() - t0
                continue
            parent_spec = stage_plan(stage, run_dir)
            parent = resolve_parent(parent_spec, (), Path(cfg.runs_dir), cfg.model.source, override_gate,
                                    child_gated=is_gated(stage_module(stage), cfg), allow_ungated=allow_ungated) \
                if parent_spec else Parent(source=cfg.model.source)
            if stage in sweeps:  # a sweep in place of the stage (resumed with the pipeline)
                t0 = time.time()
                sweep_as_stage(stage, cfg, run_dir, parent_spec, override_gate, allow_ungated)
                timings[stage] = time.time() - t0
                continue
            finished = read_manifest(run_dir / stage)
            if finished and finished.get("fingerprint") == stage_fingerprint(stage, cfg, parent) \
                    and finished.get("status") in PROMOTABLE:
                log.info(f"{stage}: finished earlier with the same inputs — skipped")
                skipped.append(stage)
                timings[stage] = 0.0
                continue
            resume = StageWork(run_dir, stage).last_checkpoint() is not None
            t0 = time.time()
            run_stage(stage, cfg, parent_spec=parent_spec, run=run_dir.name, resume=resume,
                      override_gate=override_gate, resume_changed=resume and resume_changed,
                      allow_ungated=allow_ungated)
            timings[stage] = time.time() - t0
        completed = True
    finally:  # the summary also when a gate stops the pipeline
        from align.report import print_summary, write_report

        final = judge_final_against_base(cfg, run_dir, stages)
        evaluations, evaluation_error = evaluate_against_base(cfg, run_dir, stages) if completed else ([], None)
        total = time.time() - started
        report = write_report(run_dir, stages, timings, skipped, total, final, evaluations)
        print_summary(run_dir, stages, timings, skipped, total, final, evaluations)
        log.info(f"report: {report}")
    if evaluation_error is not None:  # the pipeline itself finished: its closing evaluation's failure is the error
        raise evaluation_error
    return run_dir


def evaluate_against_base(cfg, run_dir: Path, stages: list[str]) -> tuple[list[dict], Exception | None]:
    """The closing step: `eval` of the final promoted model (and, with pipeline.eval_sft, the sft model) against
    the base model, into <stage>/eval/; the final stage's model card gets the table. Returns the evaluations (each
    {"stage", "out", "result"}) and the exception that stopped one, if any (reported, raised by the caller)."""
    from align.card import write_model_card
    from align.runs import PROMOTABLE, read_manifest

    options = cfg.pipeline
    promoted = [s for s in stages if s not in NOT_A_POLICY and (read_manifest(run_dir / s) or {}).get("status") in PROMOTABLE]
    todo = ([promoted[-1]] if promoted and options.eval_final else []) + \
        (["sft"] if options.eval_sft and "sft" in promoted and promoted[-1:] != ["sft"] else [])
    evaluations = []
    for stage in todo:
        try:
            from align.evaluation.command import evaluate

            log.info(f"eval: {stage} against the base model ({cfg.model.source}), on data the run never trained on")
            out = run_dir / stage / "eval"
            result = evaluate(cfg, str(run_dir / stage), cfg.model.source, out)
        except Exception as exc:  # reported in the summary; the caller raises it once the report is written
            log.info(f"eval of {stage} failed: {type(exc).__name__}: {exc}".splitlines()[0])
            return evaluations, exc
        evaluations.append({"stage": stage, "out": str(out), "result": result})
        if stage == promoted[-1]:
            write_model_card(run_dir / stage, read_manifest(run_dir / stage))  # with its Evaluation section
    return evaluations, None


def judge_final_against_base(cfg, run_dir: Path, stages: list[str]) -> dict | None:
    """The training RM's view: the pipeline's last promoted model against the base model it started from, both
    answering the same held-out prompts, judged by the run's own reward model — the signal DPO/PPO optimised, so
    not an independent verdict (that is `evaluate_against_base`) — win rate and mean rewards with 95% intervals.

    Cached in runs/<run>/final_vs_base.json, keyed by both models' and the rm's manifests, so a resumed
    pipeline does not redo it. None when there is no promoted rm or final model, or it is switched off."""
    import hashlib
    import json

    from align.runs import PROMOTABLE, read_manifest, sha256_file, write_json

    options = cfg.pipeline
    final = next((s for s in reversed(stages) if s not in NOT_A_POLICY
                  and (read_manifest(run_dir / s) or {}).get("status") in PROMOTABLE), None)
    if options.final_eval_prompts <= 0 or final is None \
            or (read_manifest(run_dir / "rm") or {}).get("status") not in PROMOTABLE:
        return None
    key = hashlib.sha256(json.dumps([cfg.model.source, sha256_file(run_dir / final / "manifest.json"),
                                     sha256_file(run_dir / "rm" / "manifest.json"), options.final_eval_prompts,
                                     options.final_eval_max_new_tokens, cfg.seed]).encode()).hexdigest()
    path = run_dir / "final_vs_base.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return cached
    log.info(f"judging the final model ({final}) against the base model ({cfg.model.source}) with {run_dir / 'rm'}")
    result = {"key": key, "final": final, "base": cfg.model.source, **_final_vs_base(cfg, run_dir / final,
                                                                                      run_dir / "rm")}
    write_json(path, result)
    return result


def _final_vs_base(cfg, final_dir: Path, rm_dir: Path) -> dict:
    from align import models
    from align.compare import mean_reply_tokens, rm_judgement
    from align.generate import generate_replies
    from align.data.preferences import load_preferences, trim_prompt, unique_prompts

    options = cfg.pipeline
    device = models.choose_device(cfg.device)
    dtype = models.choose_dtype(cfg.model.dtype, device)
    tokenizer = models.load_tokenizer(str(final_dir), cfg.model)
    pairs = load_preferences(cfg.rm.eval_data or cfg.rm.data, "test", on_bad="drop").rows
    prompts = [trim_prompt(p, tokenizer, cfg.rm.max_prompt_length)
               for p in unique_prompts(pairs)[:options.final_eval_prompts]]
    sampling = dict(n=1, max_new_tokens=options.final_eval_max_new_tokens, temperature=0.7, top_p=0.9,
                    do_sample=True, batch_size=16, seed=cfg.seed)
    replies = {}
    for who, source in (("final", str(final_dir)), ("base", cfg.model.source)):
        model = models.load_causal_lm(source, cfg.model, device=device, dtype=dtype)
        replies[who] = [r[0] for r in generate_replies(model, tokenizer, prompts, desc=f"{who} replies", **sampling)]
        del model
    judged = rm_judgement(prompts, replies["final"], replies["base"], str(rm_dir), batch_size=16,
                          max_length=cfg.rm.max_length)
    lengths = {who: mean_reply_tokens(tokenizer, rs) for who, rs in replies.items()}
    return {"prompts": len(prompts), "win_rate": judged["win_rate_vs_parent"],
            "win_rate_ci95": judged["win_rate_vs_parent_ci95"], "rm_reward_final": judged["rm_reward_child"],
            "rm_reward_base": judged["rm_reward_parent"], "rm_reward_gain_ci95": judged["rm_reward_gain_ci95"],
            "reply_tokens_final": lengths["final"], "reply_tokens_base": lengths["base"],
            "samples": [{"prompt": p[-1]["content"], "final": f, "base": b}
                        for p, f, b in list(zip(prompts, replies["final"], replies["base"]))[:3]]}


def main(args: argparse.Namespace) -> int:
    from align.config import load_recipe

    cfg = load_recipe(args.config, args.overrides, command="pipeline")
    run_dir = run_pipeline(cfg, run=args.run, override_gate=args.override_gate, resume_changed=args.resume_changed,
                           allow_ungated=args.allow_ungated)
    log.info(f"chat with the aligned model: python -m align.run chat --model {run_dir}")
    return 0
