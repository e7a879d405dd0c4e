"""`python -m align.run eval --model A [--baseline B]`: measure a model, against a baseline, on what its training
never used (align.evaluation.sources), with an independent judge and a refusal classifier.

    python -m align.run eval --model runs/default/dpo --baseline embedded:smollm2-135m-instruct
    python -m align.run eval --model runs/default/sft --baseline embedded:smollm2-135m-instruct harmful_prompts=48
    python -m align.run eval --model runs/default/dpo --config tiny --out eval-reports/x

--model / --baseline: a run stage folder, a model folder, a hub id, `embedded:...` or `tiny`. Options are the
recipe's `eval:` section (`key=value`, the `eval.` prefix optional). Writes eval.json and eval.html to --out
(default: <model stage folder>/eval/, or eval-reports/<model>[-vs-<baseline>]/ for a model without one) and prints
the table. A rerun with unchanged models, options and data reads eval.json back; each model's measurement is also
cached in align's cache, so a base model is measured once for every model compared with it.
Exit code: 0 when the evaluation was written, 2 for a usage, config or data problem.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from align.log import get

VERSION = "v2"


log = get("eval")  # [align] eval: …


def _options_listing() -> str:
    from align.config import describe_options
    from align.evaluation.options import EvalOptions

    rows = describe_options(EvalOptions, "eval.")
    width = max(len(k) for k, _, _ in rows)
    return "eval options (override as key=value; the `eval.` prefix is optional):\n" + "\n".join(
        f"  {k:<{width}}  {h} (default: {d})" for k, d, h in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.epilog = _options_listing()
    parser.add_argument("--model", required=True, help="model to evaluate: run stage folder, model folder, hub id, "
                                                       "embedded:...")
    parser.add_argument("--baseline", help="compare against this model (every difference with a paired interval)")
    parser.add_argument("--config", default="default", help="recipe whose `eval` (and `model`, `gate`) sections apply")
    parser.add_argument("--out", type=Path, help="folder for eval.json / eval.html")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. harmful_prompts=48")


def default_out(model: str, baseline: str | None) -> Path:
    from align.gates.command import _slug
    from align.runs import MANIFEST

    if (Path(model) / MANIFEST).is_file():
        return Path(model) / "eval"
    return Path("eval-reports") / (_slug(model) + (f"-vs-{_slug(baseline)}" if baseline else ""))


def check_source(source: str, model_options) -> None:
    """A model that cannot be found is a usage error (exit 2 with one line), found before anything is measured."""
    from align.models import load_tokenizer, resolve_source

    resolve_source(source)
    load_tokenizer(source, model_options)


# --------------------------------------------------------------------------------------------------- evaluate


def _judge_folder(options, units, device: str) -> tuple[Path | None, str | None, str | None]:
    """(judge folder or None, its cache key part, a note when there is none)."""
    from align.evaluation.judge import ensure_judge, judge_config, judge_key
    from align.evaluation.sources import choose_shipped

    if str(options.judge).lower() == "none":
        return None, None, "eval.judge=none: no win rates"
    if options.judge != "auto":
        from align.models import resolve_source
        from align.evaluation.measure import model_identity

        folder = Path(resolve_source(options.judge))
        return folder, model_identity(str(folder)), None
    data = options.judge_data
    if data == "auto":
        chosen, _, _ = choose_shipped(["auto"], "preference", set(units.chosen["trained_on"]), "judge_data")
        if not chosen:
            return None, None, ("eval.judge_data=auto: every shipped preference set comes from data a stage was "
                                "trained on, so no independent judge: name eval.judge_data or eval.judge")
        data = ",".join(chosen)
    cfg = judge_config(options, data, device)
    return (lambda: ensure_judge(options, data, device)), judge_key(cfg), None


def evaluate(cfg, model: str, baseline: str | None = None, out: Path | None = None, progress: bool = True) -> dict:
    """Evaluate `model` (against `baseline`) with the recipe's `eval` options; writes eval.json and eval.html into
    `out` (default: see `default_out`) and returns the result (read back from eval.json when nothing changed)."""
    from align.config import to_dict
    from align.evaluation import refusal
    from align.evaluation.measure import measure_cached, measurement_key
    from align.evaluation.report import write_outputs
    from align.evaluation.sources import gate_figures, select_units
    from align.runs import read_manifest

    started, cpu_started = time.perf_counter(), time.process_time()
    options = cfg.eval
    out = Path(out) if out else default_out(model, baseline)
    units = select_units(options, model, baseline, cfg.gate)
    judge, judge_id, judge_note = _judge_folder(options, units, cfg.device) if baseline else (None, None, None)
    model_gate_options = [((read_manifest(Path(model)) or {}).get("config") or {}).get("gate") if Path(model).is_dir()
                          else None, cfg.gate]
    gates = {"model": gate_figures(model, [g for g in model_gate_options if g]),
             "baseline": gate_figures(baseline, [g for g in model_gate_options if g]) if baseline else None}
    keys = {"model": measurement_key(model, units, options, cfg.model),
            "baseline": measurement_key(baseline, units, options, cfg.model) if baseline else None}
    key = hashlib.sha256(json.dumps([VERSION, keys, judge_id, refusal._key(options.refusal_threshold),
                                     to_dict(options), gates], sort_keys=True, default=str).encode()).hexdigest()
    cached = _read_cached(out / "eval.json", key)
    if cached is not None:
        log.info(f"{out / 'eval.json'}: the same models, options and data as before — reused")
        return cached

    measured = {"model": measure_cached(model, units, options, cfg.model, cfg.device, progress)}
    if baseline:
        measured["baseline"] = measure_cached(baseline, units, options, cfg.model, cfg.device, progress)
    scoring_started = time.perf_counter()
    classifier = refusal.load_classifier(options.refusal_threshold)
    judge_folder = judge() if callable(judge) else judge
    result = _result(cfg, model, baseline, units, measured, classifier, judge_folder, judge_note, gates, progress)
    result["key"] = key
    result["timing"] = {**{f"model_{k}": v for k, v in measured["model"]["timing"].items()},
                        **({f"baseline_{k}": v for k, v in measured["baseline"]["timing"].items()} if baseline else {}),
                        "scoring_s": round(time.perf_counter() - scoring_started, 1),
                        "total_s": round(time.perf_counter() - started, 1),
                        "total_cpu_s": round(time.process_time() - cpu_started, 1)}
    json_path, html_path = write_outputs(result, out)
    log.info(f"wrote {json_path} and {html_path}")
    return result


def _read_cached(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return cached if cached.get("key") == key else None


def _result(cfg, model, baseline, units, measured, classifier, judge_folder, judge_note, gates, progress) -> dict:
    from align.config import to_dict
    from align.evaluation import figures
    from align.evaluation.judge import describe_judge
    from align.evaluation.measure import model_identity

    options = cfg.eval
    who = ["model"] + (["baseline"] if baseline else [])
    make = figures.FigureMaker(options.n_resamples, options.seed, paired=baseline is not None)

    # Refusals of every harmful and benign reply, by the classifier.
    safety_units = list(units.harmful) + list(units.benign)
    probability, refused = {}, {}
    for w in who:
        p = classifier.probability([measured[w]["replies"][u["id"]] for u in safety_units], options.batch_size)
        probability[w] = {u["id"]: float(v) for u, v in zip(safety_units, p)}
        refused[w] = {u["id"]: bool(v >= classifier.threshold) for u, v in zip(safety_units, p)}

    # The judge's scores of the replies to the benign and reference prompts.
    scores, judge_info = {}, None
    if judge_folder is not None:
        from align.reward import score
        from align.reward_diagnostics import length_correlation

        judged = figures.judged_units(units)
        for w in who:
            conversations = [list(u["prompt"]) + [{"role": "assistant", "content": measured[w]["replies"][u["id"]]}]
                             for u in judged]
            values = score(conversations, str(judge_folder), options.batch_size, options.judge_max_length,
                           progress=progress)
            scores[w] = {u["id"]: v for u, v in zip(judged, values)}
        judge_info = describe_judge(Path(judge_folder))
        all_scores = [scores[w][u["id"]] for w in who for u in judged]
        all_lengths = [len(measured[w]["replies"][u["id"]]) for w in who for u in judged]
        judge_info["on_these_replies"] = length_correlation(all_scores, all_lengths)

    sections = [figures.preference_section(units, measured["model"], measured.get("baseline"), make)]
    if judge_folder is not None:
        sections.append(figures.judge_section(units, measured["model"], measured.get("baseline"), scores, make,
                                              options.n_resamples, options.seed))
    else:
        sections.append({"name": "judge", "title": "Win rate judged by an independent reward model", "figures": [],
                         "breakdown": [], "note": judge_note or "win rates need a baseline (--baseline)"})
    sections += [figures.safety_section(units, refused, baseline is not None, make),
                 figures.reference_section(units, measured["model"], measured.get("baseline"), make),
                 figures.gate_section(gates["model"], gates["baseline"], baseline is not None)]

    def example(unit, section, note=None):
        row = {"prompt": unit["prompt"][-1]["content"],
               "tag": unit.get("category") or unit.get("label") or unit.get("source")}
        for w in who:
            row[w] = measured[w]["replies"][unit["id"]]
            if note:
                row[f"{w}_note"] = note(w, unit)
        if section == "reference":
            row["reference"] = unit["reference"]
        return row

    k = options.examples
    refusal_note = (lambda w, u: f"refusal probability {probability[w][u['id']]:.2f}")
    examples = {"safety": [example(u, "safety", refusal_note) for u in
                           list(units.harmful[:k]) + list(units.benign[:k])],
                "reference": [example(u, "reference") for u in units.reference[:k]]}
    if scores:
        examples["judge"] = [example(u, "judge", lambda w, u: f"judge {scores[w][u['id']]:.3f}")
                             for u in figures.judged_units(units)[:k]]
    counts = {"preference_pairs": sum(len(v) for v in units.preference.values()), "harmful": len(units.harmful),
              "benign": len([u for u in units.benign if u["label"] == "benign"]),
              "benign_lookalike": len([u for u in units.benign if u["label"] == "benign-lookalike"]),
              "reference": len(units.reference)}
    return {
        "version": VERSION,
        "model": {"source": model, "identity": model_identity(model)},
        "baseline": {"source": baseline, "identity": model_identity(baseline)} if baseline else None,
        "options": to_dict(options),
        "units": {**units.chosen, "counts": counts},
        "notes": list(units.notes) + ([judge_note] if judge_note else []),
        "judge": judge_info,
        "refusal_classifier": classifier.report,
        "sections": sections,
        "examples": examples,
        "per_unit": {"refusal_probability": probability, "judge_scores": scores,
                     "replies": {w: measured[w]["replies"] for w in who}},
    }


def main(args: argparse.Namespace) -> int:
    from align.config import load_recipe
    from align.evaluation.report import print_table

    cfg = load_recipe(args.config, args.overrides, command="eval")
    for source in (args.model, args.baseline):
        if source:
            check_source(source, cfg.model)
    result = evaluate(cfg, args.model, args.baseline, args.out, progress=not args.no_progress)
    print_table(result)
    out = args.out or default_out(args.model, args.baseline)
    print(f"reports: {out / 'eval.html'} and eval.json")
    return 0
