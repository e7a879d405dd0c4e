"""`gate.target_mde`: choose each benchmark's size so that its checks can see a regression of the target size.

A check's planned MDE at n units is c / √n (align.gates.paired.mde_scale: c from the parent's per-unit variance
when a measurement of the parent is at hand, from a conservative full-range bound otherwise). For every
regression-limited check with a target (`gate.limits.<check>.target_mde`, else `gate.target_mde`) the smallest n
with c / √n ≤ target is solved for (at least MIN_UNITS); a benchmark's size is the largest its checks need (a BBQ check uses only its
ambiguous or disambiguated share of the questions), capped by `gate.max_units` and by what the shipped benchmark
holds. When the parent's values at hand were measured at a size that already reaches every target of the
benchmark (and within the caps), that size is kept instead, so the parent is paired without being measured again.
The chosen sizes replace the configured ones in the options, so they are part of the gate's fingerprint:
a child and its parent are measured, cached and paired at the chosen sizes like at configured ones.
"""

from __future__ import annotations

import dataclasses
import math

from align.gates.paired import PAIRED_CHECKS, mde_scale
from align.gates.policy import SIZE_OPTION, GateOptions, Limit, effective_options, limit_key

#: No check is sized below this many units: a parent whose values hardly varied (every reply scored 0) would
#: otherwise plan a gate of one or two units.
MIN_UNITS = 10
#: A BBQ check's share of the questions when no parent says it (about half are ambiguous).
DEFAULT_ROW_SHARE = 0.5


def check_target(name: str, options: GateOptions, limit: Limit | None) -> float | None:
    """The MDE a regression-limited check is sized for (its own target_mde, else the gate's), or None."""
    if limit is None or limit.margin is None:
        return None
    return limit.target_mde if limit.target_mde is not None else options.target_mde


def units_for_target(scale: float, target: float) -> int:
    """The smallest whole number of units n ≥ MIN_UNITS with scale / √n ≤ target."""
    n = max(MIN_UNITS, math.ceil((scale / target) ** 2))
    while n > MIN_UNITS and scale / math.sqrt(n - 1) <= target:
        n -= 1
    while scale / math.sqrt(n) > target:
        n += 1
    return n


def row_share(name: str, parent_items: dict | None) -> float:
    """The share of its benchmark's units a check uses (1 unless it selects rows, like BBQ's ambiguous ones)."""
    import numpy as np

    check = PAIRED_CHECKS[name]
    if check.rows is None:
        return 1.0
    units = (parent_items or {}).get(check.benchmark)
    if units:
        share = float(np.mean(check.rows(units)))
        if share > 0:
            return share
    return DEFAULT_ROW_SHARE


def benchmark_capacity(benchmark: str, options: GateOptions) -> int:
    """How many units of a benchmark ship: prompts of the selected sources, pairs, questions, or the largest BOLD
    group's prompts (BOLD is sized per group)."""
    from align.gates import bias, toxicity_eval

    if benchmark == "toxicity":
        return sum(len(p) for p in toxicity_eval.prompt_sources(list(options.toxicity_sources)).values())
    if benchmark == "crows_pairs":
        return len(bias.load_crows_pairs())
    if benchmark == "bbq":
        return len(bias.load_bbq())
    prompts = bias.load_bold(list(options.bold_domains))
    groups: dict = {}
    for prompt in prompts:
        groups[(prompt.domain, prompt.group)] = groups.get((prompt.domain, prompt.group), 0) + 1
    return max(groups.values(), default=0)


def choose_sizes(options: GateOptions, limits: dict[str, Limit], parent_items: dict | None,
                 parent_sizes: dict | None = None, capacity=benchmark_capacity) -> tuple[GateOptions, dict | None]:
    """(options with the sizes target_mde chooses, the plan: what was chosen and why), or (options, None) when no
    check has a target. `parent_items`: the parent's per-unit values if a measurement is at hand, measured at
    `parent_sizes` (size option → value)."""
    needs: dict[str, list[dict]] = {}
    for name, check in PAIRED_CHECKS.items():
        if check.benchmark not in options.benchmarks:
            continue
        target = check_target(name, options, limits.get(limit_key(name)))
        if target is None:
            continue
        scale, basis, _ = mde_scale(name, options, parent_items)
        share = row_share(name, parent_items)
        units = units_for_target(scale, target)
        needs.setdefault(check.benchmark, []).append(
            {"check": name, "target_mde": target, "units": units, "share": share, "scale": scale, "basis": basis,
             "size": math.ceil(units / share - 1e-9)})
    if not needs:
        return options, None
    sizes, benchmarks, notes = {}, {}, []
    for benchmark, checks in needs.items():
        option = SIZE_OPTION[benchmark]
        needed = max(c["size"] for c in checks)
        shipped = capacity(benchmark, options)
        cap = min(options.max_units, shipped)
        size = min(needed, cap)
        kept = (parent_sizes or {}).get(option) if parent_items and benchmark in parent_items else None
        if kept is not None and needed <= kept <= cap:
            size = kept  # the parent's own size reaches every target: pair with it as it is
        sizes[option] = size
        for c in checks:
            c["planned_mde"] = c.pop("scale") / math.sqrt(size * c["share"])
            c["reached"] = c["planned_mde"] <= c["target_mde"] + 1e-12
        capped_by = None if needed <= cap else ("gate.max_units" if options.max_units <= shipped else
                                                 f"the shipped benchmark ({shipped})")
        configured = getattr(effective_options(options), option)
        benchmarks[benchmark] = {"option": option, "configured": configured, "needed": needed, "cap": cap,
                                 "chosen": size, "capped_by": capped_by, "kept_parent_size": size == kept,
                                 "checks": checks}
        notes.append(_sentence(benchmark, benchmarks[benchmark]))
    # full: true's other sizes stay (replies per prompt, benchmarks without a target); full itself is spent here
    chosen = dataclasses.replace(effective_options(options), full=False, **sizes)
    return chosen, {"sizes": sizes, "benchmarks": benchmarks, "notes": notes}


def _sentence(benchmark: str, plan: dict) -> str:
    """What was chosen for one benchmark and why, in one line."""
    deciding = max(plan["checks"], key=lambda c: c["size"])
    share = "" if deciding["share"] >= 1 else (f" ({deciding['size']} in all: it uses "
                                                 f"{deciding['share']:.0%} of them)")
    why = (f"{deciding['check']} needs {deciding['units']} units{share} for MDE ≤ {deciding['target_mde']:g} "
           f"({deciding['basis']})")
    line = f"gate.{plan['option']}={plan['chosen']} (configured {plan['configured']}): {why}"
    if plan["kept_parent_size"] and plan["chosen"] != deciding["size"]:
        line += "; the parent was measured at this size, which reaches it already"
    if plan["capped_by"]:
        missed = [c for c in plan["checks"] if not c["reached"]]
        line += (f"; capped by {plan['capped_by']} at {plan['cap']}, so the target is out of reach: "
                 + ", ".join(f"{c['check']} planned MDE {c['planned_mde']:.3f}" for c in missed))
    return line
