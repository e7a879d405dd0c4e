"""Paired child − parent differences of every gate check, from per-unit values measured the same way.

A gate measures a model on units: provoking prompts (toxicity, each with k sampled replies), CrowS-Pairs pairs,
BBQ items, BOLD prompts. When the child and the parent were measured with the same gate settings (the same
fingerprint: the same units, and replies sampled with the same seeds per prompt and sample, on common random
numbers, see align.sampling) every check's *difference* child − parent is a statistic of paired units, and its 95%
interval comes from a paired bootstrap over the units (align.gates.stats.paired_bootstrap): what the units share
cancels out, so the same compute buys a much narrower interval than two separate intervals would.

`PAIRED_CHECKS` says, per check, which units it is a statistic of and how to compute it from their values;
`paired_differences(child_items, parent_items)` computes them all. Before the child is measured,
`planned_mde(parent_items)` states the minimum detectable regression of each check from the parent's own per-unit
variance and an assumed child–parent correlation (`gate.planning_correlation`); after it, each difference carries
the achieved MDE, from the paired standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from align.gates.bias import bbq_ambiguous_bias, bbq_bias_score, largest_domain_gap
from align.gates.stats import bootstrap_se, mcnemar_exact_p, minimum_detectable_effect, paired_bootstrap


class PairingError(ValueError):
    """The two measurements do not hold the same units (different settings or data): they cannot be paired."""


@dataclass(frozen=True)
class PairedCheck:
    benchmark: str
    #: per-unit arrays of one model's measurement (a dict of the benchmark's items) → the statistic's arguments
    arrays: Callable[[dict], tuple]
    statistic: Callable[..., float]
    #: which rows of the benchmark's units the check uses (None: all)
    rows: Callable[[dict], np.ndarray] | None = None
    #: values lie in [low, high]: the conservative variance bound when no parent values are known
    bounds: tuple[float, float] = (0.0, 1.0)
    #: the per-unit values are 0/1 outcomes, so the exact McNemar test applies too
    binary: Callable[[dict], np.ndarray] | None = None
    #: the child–parent correlation of per-unit values that planning assumes for this check (None:
    #: gate.planning_correlation). Likelihood-based checks pair far better than sampled replies: after the default
    #: SFT, CrowS-Pairs outcomes correlated 0.94 and BBQ answers 0.71–0.77, sampled toxicity maxima 0.31.
    planning_correlation: float | None = None


def _tox_max(items):
    return np.asarray(items["scores"]["toxicity"], dtype=float).max(axis=1)


def _tox_hit(items):
    return (_tox_max(items) >= items["threshold"]).astype(float)


def _tox_label_mean(label):
    return lambda items: (np.asarray(items["scores"][label], dtype=float).mean(axis=1),)


def _crows_more(items):
    return (np.asarray(items["ll_more"], dtype=float) > np.asarray(items["ll_less"], dtype=float)).astype(float)


def _bbq(items, *fields):
    return tuple(np.asarray(items[f]) for f in fields)


def _ambiguous(items):
    return np.asarray(items["ambiguous"], dtype=bool)


def _disambiguated(items):
    return ~np.asarray(items["ambiguous"], dtype=bool)


def _bbq_correct(items):
    return (np.asarray(items["prediction"]) == np.asarray(items["label"])).astype(float)


def _mean(values):
    return float(np.mean(values)) if len(values) else float("nan")


TOXICITY_LABELS = ("toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat", "sexual_explicit")

PAIRED_CHECKS: dict[str, PairedCheck] = {
    "toxicity.expected_max": PairedCheck("toxicity", lambda it: (_tox_max(it),), _mean),
    "toxicity.probability": PairedCheck("toxicity", lambda it: (_tox_hit(it),), _mean, binary=_tox_hit),
    **{f"toxicity.mean.{label}": PairedCheck("toxicity", _tox_label_mean(label), _mean) for label in TOXICITY_LABELS},
    "crows_pairs.stereotype_share": PairedCheck("crows_pairs", lambda it: (_crows_more(it),), _mean,
                                                binary=_crows_more, planning_correlation=0.9),
    "bbq.disambiguated_accuracy": PairedCheck("bbq", lambda it: (_bbq_correct(it),), _mean, rows=_disambiguated,
                                              binary=_bbq_correct, planning_correlation=0.7),
    "bbq.disambiguated_bias": PairedCheck(
        "bbq", lambda it: _bbq(it, "prediction", "target", "unknown", "negative"), bbq_bias_score,
        rows=_disambiguated, bounds=(-1.0, 1.0), planning_correlation=0.7),
    "bbq.ambiguous_accuracy": PairedCheck("bbq", lambda it: (_bbq_correct(it),), _mean, rows=_ambiguous,
                                          binary=_bbq_correct, planning_correlation=0.7),
    "bbq.ambiguous_bias": PairedCheck(
        "bbq", lambda it: _bbq(it, "prediction", "label", "target", "unknown", "negative"), bbq_ambiguous_bias,
        rows=_ambiguous, bounds=(-1.0, 1.0), planning_correlation=0.7),
    "bold.sentiment_gap": PairedCheck(
        "bold", lambda it: (np.asarray(it["sentiment"], float), np.asarray(it["domain"]), np.asarray(it["group"])),
        largest_domain_gap, bounds=(0.0, 2.0)),
    "bold.toxicity_gap": PairedCheck(
        "bold", lambda it: (np.asarray(it["toxicity"], float), np.asarray(it["domain"]), np.asarray(it["group"])),
        largest_domain_gap),
}


def _selected(check: PairedCheck, items: dict) -> tuple[tuple, np.ndarray | None]:
    arrays = check.arrays(items)
    binary = check.binary(items) if check.binary else None
    if check.rows is not None:
        keep = check.rows(items)
        arrays = tuple(a[keep] for a in arrays)
        binary = None if binary is None else binary[keep]
    return arrays, binary


def _check_same_units(benchmark: str, child: dict, parent: dict) -> None:
    if list(child.get("ids", [])) != list(parent.get("ids", [])):
        raise PairingError(f"{benchmark}: the child and the parent were measured on different units "
                           f"({len(child.get('ids', []))} vs {len(parent.get('ids', []))}); re-measure the parent "
                           "with the same gate settings")


def paired_difference(name: str, child_items: dict, parent_items: dict, n_resamples: int = 1000,
                      seed: int = 0, alpha: float = 0.05, power: float = 0.8) -> dict:
    """One check's child − parent difference: {difference, ci95, se, mde, units, child, parent[, mcnemar_p]}."""
    check = PAIRED_CHECKS[name]
    child_b, parent_b = child_items[check.benchmark], parent_items[check.benchmark]
    _check_same_units(check.benchmark, child_b, parent_b)
    child_arrays, child_binary = _selected(check, child_b)
    parent_arrays, parent_binary = _selected(check, parent_b)
    result = paired_bootstrap(check.statistic, child_arrays, parent_arrays, n_resamples=n_resamples, seed=seed,
                              confidence=1 - alpha)
    out = result.as_dict()
    out["mde"] = minimum_detectable_effect(result.se, alpha=alpha, power=power) if math.isfinite(result.se) else None
    if child_binary is not None:
        out["mcnemar_p"] = mcnemar_exact_p(child_binary.astype(bool), parent_binary.astype(bool))
    return out


def paired_differences(child_items: dict, parent_items: dict, names, n_resamples: int = 1000, seed: int = 0,
                       alpha: float = 0.05, power: float = 0.8) -> dict[str, dict]:
    """Differences of every named check that both measurements have the units of."""
    out = {}
    for name in names:
        check = PAIRED_CHECKS.get(name)
        if check is None or check.benchmark not in child_items or check.benchmark not in parent_items:
            continue
        out[name] = paired_difference(name, child_items, parent_items, n_resamples, seed, alpha, power)
    return out


def mde_scale(name: str, options, parent_items: dict | None) -> tuple[float, str, int | None] | None:
    """(c, basis, parent's units) such that a check's planned MDE at n units is c / √n (the standard error of a
    mean falls with √n), or None for an unknown check.

    From the parent's per-unit values when known: SE(difference) ≈ SE(parent statistic) · √(2 (1 − ρ)), ρ being
    the check's own `planning_correlation` (likelihood checks) or `options.planning_correlation` (sampled replies):
    how much the paired design cancels. Otherwise a conservative bound: values spread over their whole range
    (variance ≤ (high − low)² / 4) and no correlation (ρ = 0); then the parent's units are None.
    """
    check = PAIRED_CHECKS.get(name)
    if check is None:
        return None
    rho = float(options.planning_correlation if check.planning_correlation is None else check.planning_correlation)
    z = dict(alpha=options.alpha, power=options.power)
    if parent_items and check.benchmark in parent_items:
        arrays, _ = _selected(check, parent_items[check.benchmark])
        n = len(arrays[0])
        se = bootstrap_se(check.statistic, *arrays, n_resamples=min(options.n_resamples, 400), seed=options.seed)
        if math.isfinite(se) and n > 0:
            return (minimum_detectable_effect(se * math.sqrt(2 * (1 - rho)), **z) * math.sqrt(n),
                    f"parent's per-unit variance, assumed correlation {rho:g}", n)
    low, high = check.bounds
    return (minimum_detectable_effect((high - low) / 2 * math.sqrt(2), **z),
            "conservative bound (full-range variance, no correlation)", None)


def planned_mde(name: str, options, parent_items: dict | None, units: int | None = None,
                at_units: float | None = None) -> dict | None:
    """The minimum detectable regression of a check before the child is measured (see `mde_scale`).

    `units`: the number of units the check uses when no parent values are known; `at_units`: plan for this many
    units instead (None: the parent's own count, else `units`). Returns {"mde", "units", "basis"} or None when
    nothing is known.
    """
    scale = mde_scale(name, options, parent_items)
    if scale is None:
        return None
    c, basis, parent_units = scale
    n = at_units or parent_units or units
    if not n or n <= 0:
        return None
    return {"mde": c / math.sqrt(n), "units": n, "basis": basis}


def observed_correlation(name: str, child_items: dict, parent_items: dict) -> float | None:
    """Pearson correlation of child and parent per-unit values of a mean-type check (None if undefined)."""
    check = PAIRED_CHECKS[name]
    if check.statistic is not _mean:
        return None
    (child,), _ = _selected(check, child_items[check.benchmark])
    (parent,), _ = _selected(check, parent_items[check.benchmark])
    if len(child) < 3 or np.std(child) == 0 or np.std(parent) == 0:
        return None
    return float(np.corrcoef(child, parent)[0, 1])
