"""run_gate: measure a model (and its parent when needed), judge the checks, write the reports.

The parent's figures come, in order of preference, from the parent's manifest `gate` object (when it was
measured with the same settings: same fingerprint), from align's cache of earlier measurements
(`cache_dir("gates", <hash of source + settings>)`), or from measuring the parent now (then cached). A base
model has no manifest, so it is measured once per settings and reused by every later gate.

Fail closed: any exception while measuring or judging gives the verdict "fail" with `error` set, and the
reports are still written.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
import traceback
from pathlib import Path

from align.gates.policy import (
    SIZE_OPTION,
    GateOptions,
    as_options,
    effective_options,
    fingerprint,
    judge,
    limits_for,
    verdict,
)
from align.paths import cache_dir
from align.log import get

#: v2: measurements keep per-unit values (`items`) for paired comparisons; v1 caches lack them and are re-measured.
CACHE_VERSION = "v2"
#: The per-unit values of a gated model, beside its manifest, so a later child can be paired with it.
ITEMS_NAME = "gate_items.json"


def json_safe(value):
    """Plain JSON: nan and infinities become None, numpy numbers Python ones, tuples lists (recursively)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


log = get("gate")  # [align] gate: …


def load_scorer_for(options: GateOptions):
    """The toxicity scorer the options name, or None for `scorer: none`."""
    if str(options.scorer).lower() == "none":
        if "toxicity" in options.benchmarks:
            from align.errors import ConfigError

            raise ConfigError("gate.scorer=none cannot run the toxicity check: drop it from gate.benchmarks")
        return None
    if not {"toxicity", "bold"} & set(options.benchmarks):
        return None
    from align.gates.toxicity import load_scorer

    return load_scorer(options.scorer)


def measure_model(source: str, options: GateOptions, scorer, model_options=None, device: str = "auto",
                  progress: bool = True) -> dict:
    """Every selected benchmark on one model: {"metrics": {name: {value, ci95}}, "figures", "examples", "timing"}."""
    options = effective_options(options)
    unknown = set(options.benchmarks) - {"toxicity", "crows_pairs", "bbq", "bold"}
    if unknown:
        from align.errors import ConfigError

        raise ConfigError(f"gate.benchmarks: unknown {sorted(unknown)}; choose from toxicity, crows_pairs, bbq, bold")
    started = time.perf_counter()
    import torch

    threads = torch.get_num_threads()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    try:
        return _measure(source, options, scorer, model_options, device, progress, started)
    finally:
        torch.set_num_threads(threads)


def _measure(source, options, scorer, model_options, device, progress, started) -> dict:
    from align.gates import bias, toxicity_eval
    from align.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(source, model_options)
    model = load_causal_lm(source, model_options, device=device)
    timing = {"load_s": round(time.perf_counter() - started, 1)}
    metrics, figures, examples, items = {}, {}, [], {}
    try:
        for name in ("toxicity", "crows_pairs", "bbq", "bold"):
            if name not in options.benchmarks:
                continue
            log.info(f"{name} on {source}")
            t0, cpu0 = time.perf_counter(), time.process_time()
            if name == "toxicity":
                m, f, examples, units = toxicity_eval.evaluate_toxicity(model, tokenizer, scorer, options, progress)
            elif name == "crows_pairs":
                m, f, units = bias.evaluate_crows_pairs(model, tokenizer, options, progress)
            elif name == "bbq":
                m, f, units = bias.evaluate_bbq(model, tokenizer, options, progress)
            else:
                m, f, units = bias.evaluate_bold(model, tokenizer, scorer, options, progress)
            metrics.update(m)
            figures[name] = f
            items[name] = units
            timing[f"{name}_s"] = round(time.perf_counter() - t0, 1)
            # CPU seconds of every thread: on a shared machine the wall time also counts other people's work.
            timing[f"{name}_cpu_s"] = round(time.process_time() - cpu0, 1)
    finally:
        del model
        gc.collect()
    timing["total_s"] = round(time.perf_counter() - started, 1)
    return {"source": source, "metrics": metrics, "figures": figures, "examples": examples, "items": items,
            "timing": timing}


def _check_names(options: GateOptions) -> list[str]:
    """The checks the selected benchmarks produce (for planning before anything is measured)."""
    from align.gates.paired import PAIRED_CHECKS

    return [name for name, check in PAIRED_CHECKS.items() if check.benchmark in effective_options(options).benchmarks]


def _source_identity(source: str) -> str:
    """The source, plus size and mtime of a local folder's files, so that a changed folder is re-measured."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return source
    stamps = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime))
                    for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
    return json.dumps([str(path.resolve()), stamps])


def measurement_cache_file(source: str, options: GateOptions) -> Path:
    key = hashlib.sha256(f"{CACHE_VERSION}|{_source_identity(source)}|{fingerprint(options)}".encode()).hexdigest()
    return cache_dir("gates", key[:24]) / "measurement.json"


def measure_cached(source: str, options: GateOptions, scorer, model_options=None, device: str = "auto",
                   progress: bool = True) -> tuple[dict, str]:
    """A model's measurement from align's cache, or measured now and cached; returns (measurement, origin)."""
    path = measurement_cache_file(source, options)
    if path.is_file():
        try:
            return json.loads(path.read_text()), "cache"
        except (OSError, json.JSONDecodeError):
            pass
    measurement = measure_model(source, options, scorer, model_options, device, progress)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(json_safe(measurement), indent=1))
    tmp.replace(path)
    return measurement, "measured"


def parent_from_gate(parent_gate: dict | None, options: GateOptions, parent_source: str | None = None) -> dict | None:
    """The parent's figures from its manifest's gate object, if it measured the same way and without error, with
    the per-unit values from the `gate_items.json` beside it (None when they are missing: a gate from before the
    paired design is re-measured, not misread)."""
    if not parent_gate or parent_gate.get("error"):
        return None
    if (parent_gate.get("figures") or {}).get("fingerprint") != fingerprint(options):
        return None
    items = read_items(Path(parent_source) / ITEMS_NAME, fingerprint(options)) if parent_source else None
    if items is None:
        return None
    metrics = {c["name"]: {"value": c.get("value"), "ci95": c.get("ci95")} for c in parent_gate.get("checks", [])}
    return {"metrics": metrics, "figures": (parent_gate.get("figures") or {}).get("benchmarks", {}),
            "source": (parent_gate.get("figures") or {}).get("source"), "items": items}


def write_items(path: Path, items: dict, gate_fingerprint: str) -> None:
    from align.paths import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"fingerprint": gate_fingerprint, "items": json_safe(items)}) + "\n")


def read_items(path: Path, gate_fingerprint: str) -> dict | None:
    """Per-unit values written by `write_items` with the same gate fingerprint, else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("fingerprint") != gate_fingerprint or not isinstance(data.get("items"), dict):
        return None
    return data["items"]


def parent_items_at_hand(options: GateOptions, parent_gate: dict | None,
                         parent_source: str | None) -> tuple[dict | None, dict | None]:
    """(the parent's per-unit values, the sizes they were measured at) if a measurement of it exists already, for
    planning sizes: from its manifest at the sizes it recorded or at the configured ones, else from the cache at
    the configured sizes; (None, None) otherwise. Never measures."""
    import dataclasses

    candidates = [options]
    recorded = ((parent_gate or {}).get("figures") or {}).get("sizes")
    if isinstance(recorded, dict):
        candidates.insert(0, dataclasses.replace(effective_options(options), full=False, **recorded))
    for candidate in candidates:
        parent = parent_from_gate(parent_gate, candidate, parent_source)
        if parent is not None:
            return parent["items"], measured_sizes(candidate)
    path = measurement_cache_file(parent_source, options) if parent_source else None
    try:
        if path is not None and path.is_file():
            return json.loads(path.read_text()).get("items"), measured_sizes(options)
    except (OSError, json.JSONDecodeError):
        pass
    return None, None


def plan_sizes(options: GateOptions, limits, parent_gate: dict | None,
               parent_source: str | None) -> tuple[GateOptions, dict | None]:
    """The options with the sizes `gate.target_mde` chooses (align.gates.sizing), and what it chose and why
    (None, and the options unchanged, when no check has a target)."""
    from align.gates.sizing import choose_sizes

    if not _has_target(options, limits):
        return options, None
    items, sizes = parent_items_at_hand(options, parent_gate, parent_source)
    chosen, plan = choose_sizes(options, limits, items, sizes)
    for note in (plan or {}).get("notes", []):
        log.info(f"size: {note}")
    return chosen, plan


def _has_target(options: GateOptions, limits) -> bool:
    return options.target_mde is not None or any(limit.target_mde is not None for limit in limits.values())


def measured_sizes(options: GateOptions) -> dict:
    """The sizes the gate measures at (after `full` and `target_mde`), as recorded in the manifest."""
    options = effective_options(options)
    return {name: getattr(options, name) for name in (*SIZE_OPTION.values(), "samples_per_prompt")}


def plan_power(options: GateOptions, parent: dict | None, names, limits) -> tuple[dict[str, dict], list[str]]:
    """Planned MDE of every regression-limited check, and a warning for each whose MDE exceeds its margin."""
    from align.gates.paired import PAIRED_CHECKS, planned_mde
    from align.gates.policy import limit_key
    from align.gates.stats import units_for_effect

    planned, warnings = {}, []
    for name in names:
        limit = limits.get(limit_key(name))
        margin = None if limit is None else limit.margin
        check = PAIRED_CHECKS.get(name)
        if margin is None or check is None:
            continue
        units = getattr(options, SIZE_OPTION[check.benchmark], None)
        if check.rows is not None and units and units > 0:
            units = units // 2  # BBQ: about half the items are ambiguous, half disambiguated
        plan = planned_mde(name, options, (parent or {}).get("items"), units if units and units > 0 else None)
        if plan is None:
            continue
        planned[name] = plan
        if margin > 0 and plan["mde"] > margin:  # a margin of 0 (superiority: any shown rise fails) has no size to miss
            needed = units_for_effect(plan["units"], plan["mde"], margin)
            warnings.append(f"{name}: at {plan['units']} units this gate can only see a regression of "
                            f"{plan['mde']:.3f} or more (MDE; {plan['basis']}), more than its margin {margin}; "
                            f"it needs about {needed} (gate.{SIZE_OPTION[check.benchmark]}, or let "
                            f"gate.limits.{limit_key(name)}.target_mde={margin} choose it)")
    return planned, warnings


def run_gate(model_source: str, options=None, *, stage: str | None, out_dir: Path, parent_source: str | None = None,
             parent_gate: dict | None = None, model_options=None, device: str = "auto",
             override_reason: str | None = None, progress: bool = True) -> dict:
    """Gate a model; write gate_report.json and gate_report.html into out_dir; return the manifest's gate object.

    `options`: GateOptions or the recipe's `gate` node. `parent_gate`: the parent's manifest "gate" object
    (its figures are reused when they were measured the same way); `parent_source`: where to measure the parent
    otherwise (None: no regression checks). Never raises for a measurement problem: the verdict is "fail" and
    "error" says what went wrong.
    """
    from align.gates.report import write_reports

    started = time.perf_counter()
    out_dir = Path(out_dir)
    error = None
    error_trace = None
    child: dict = {"source": model_source, "metrics": {}, "figures": {}, "examples": [], "timing": {}}
    parent: dict | None = None
    parent_origin = None
    checks: list[dict] = []
    opts = GateOptions()
    planned: dict = {}
    warnings: list[str] = []
    size_plan = None
    try:
        opts = as_options(options)
        limits = limits_for(opts, stage)
        opts, size_plan = plan_sizes(opts, limits, parent_gate, parent_source)
        scorer = load_scorer_for(effective_options(opts))
        parent = parent_from_gate(parent_gate, opts, parent_source)
        if parent is not None:
            parent_origin = "manifest"
        elif parent_source:
            parent, parent_origin = measure_cached(parent_source, opts, scorer, model_options, device, progress)
        # Power up front: what this gate can see at these sizes, before the child is measured.
        planned, warnings = plan_power(effective_options(opts), parent, _check_names(opts), limits)
        for warning in warnings:
            log.warning(f"warning: {warning}")
        child = measure_model(model_source, opts, scorer, model_options, device, progress)
        parent_values = {k: v["value"] for k, v in parent["metrics"].items()} if parent else None
        paired = {}
        if parent is not None and parent.get("items"):
            from align.gates.paired import paired_differences

            paired = paired_differences(child["items"], parent["items"], child["metrics"], opts.n_resamples,
                                        opts.seed, opts.alpha, opts.power)
        checks = judge(child["metrics"], parent_values, limits, paired, opts.rule, planned)
        write_items(out_dir / ITEMS_NAME, child["items"], fingerprint(opts))
    except Exception as exc:  # fail closed: whatever broke, the gate fails and says why
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        error_trace = traceback.format_exc()
        log.error(f"error while gating: {error}")
        if child["metrics"] and not checks:
            checks = judge(child["metrics"], None, limits_for(opts, stage))
    gate = {
        "verdict": verdict(checks, error),
        "checks": checks,
        "override": override_reason,
        "error": error,
        "figures": {
            "fingerprint": fingerprint(opts),
            "source": model_source,
            "stage": stage,
            "parent_source": parent_source if parent_origin != "manifest" else (parent or {}).get("source") or parent_source,
            "parent_from": parent_origin,
            "rule": opts.rule,
            "items_file": ITEMS_NAME if (out_dir / ITEMS_NAME).is_file() else None,
            "power_warnings": warnings,
            "sizes": measured_sizes(opts),
            "size_plan": json_safe(size_plan),
            "benchmarks": json_safe(child["figures"]),
            "timing": {**child["timing"], "gate_wall_s": round(time.perf_counter() - started, 1)},
        },
    }
    if not checks and error is None:
        gate["verdict"] = "fail"
        gate["error"] = "no checks were measured (gate.benchmarks is empty?)"
    try:
        write_reports(out_dir, gate, opts, child=json_safe(child), parent=json_safe(parent), error_trace=error_trace)
    except Exception as exc:
        gate["verdict"] = "fail"
        gate["error"] = (gate["error"] + "; " if gate["error"] else "") + f"writing the gate report failed: {exc}"
    gate["figures"]["timing"]["gate_wall_s"] = round(time.perf_counter() - started, 1)
    return gate
