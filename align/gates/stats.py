"""Bootstrap confidence intervals for the gate's figures.

Every gate figure is a statistic of per-unit values (one value per prompt, per pair, per item...). Its 95%
interval is the percentile bootstrap: resample the units with replacement `n_resamples` times (rows of several
arrays together, so paired values stay paired), recompute the statistic, and take the 2.5th and 97.5th
percentiles. A fixed seed makes the interval reproducible. With `strata` (e.g. the group of each BOLD
continuation) units are resampled within each stratum, so every group keeps its size in every resample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


def _resample_indices(n: int, strata: list[np.ndarray] | None, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one resample; `strata`: the rows of each stratum, in the order of np.unique."""
    if strata is None:
        return rng.integers(0, n, size=n)
    # members[integers(0, k, k)] draws what rng.choice(members, k, replace=True) draws, without its overhead.
    return np.concatenate([members[rng.integers(0, len(members), size=len(members))] for members in strata])


def _replicates(statistic_of: Callable[[np.ndarray], float], draw: Callable[[np.random.Generator], np.ndarray],
                n_resamples: int, seed: int) -> np.ndarray:
    """The bootstrap distribution: `statistic_of(indices)` for `n_resamples` draws of row indices, nan left out.
    One loop for every interval and standard error below, so they all resample the same way from the seed."""
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        values[i] = statistic_of(draw(rng))
    return values[~np.isnan(values)]


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: Sequence,
    strata: Sequence | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(*arrays)`; the arrays are resampled row-wise together.

    Returns (nan, nan) when there are no units, and (value, value) when there is one unit, one unit per stratum
    or no resampling.
    Resamples whose statistic is nan (e.g. a ratio with an empty denominator) are left out.
    """
    columns = [np.asarray(a) for a in arrays]
    if not columns:
        raise ValueError("bootstrap_ci needs at least one array")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"bootstrap_ci: arrays differ in length: {[len(c) for c in columns]}")
    if n == 0:
        return (float("nan"), float("nan"))
    point = float(statistic(*columns))
    if n == 1 or n_resamples <= 0:
        return (point, point)
    groups = None if strata is None else np.asarray(strata)
    if groups is not None and len(groups) != n:
        raise ValueError("bootstrap_ci: strata must have one entry per row")
    members = None if groups is None else [np.flatnonzero(groups == value) for value in np.unique(groups)]
    if members is not None and all(len(m) == 1 for m in members):
        return (point, point)  # one unit per stratum: every resample is the sample itself
    values = _replicates(lambda idx: statistic(*(c[idx] for c in columns)),
                         lambda rng: _resample_indices(n, members, rng), n_resamples, seed)
    if values.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return (float(low), float(high))


def mean_ci(values: Sequence[float], n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED):
    """(mean, (low, high)) of per-unit values."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return float("nan"), (float("nan"), float("nan"))
    return float(array.mean()), bootstrap_ci(np.mean, array, n_resamples=n_resamples, seed=seed)


# ------------------------------------------------------------------------------------------ paired differences


@dataclass
class PairedDifference:
    """child − parent of one statistic measured on the same units, with its paired 95% interval.

    `se`: the bootstrap standard error of the difference; `units`: how many units (prompts, pairs, items) were
    paired (clusters, when the units were resampled by cluster)."""

    difference: float
    ci95: tuple[float, float]
    se: float
    child: float
    parent: float
    units: int

    def as_dict(self) -> dict:
        return {"difference": self.difference, "ci95": list(self.ci95), "se": self.se, "child": self.child,
                "parent": self.parent, "units": self.units}


def _as_columns(arrays) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray) or (arrays and np.isscalar(arrays[0])):
        return [np.asarray(arrays)]
    return [np.asarray(a) for a in arrays]


def paired_bootstrap(
    statistic: Callable[..., float],
    child: Sequence,
    parent: Sequence,
    *,
    clusters: Sequence | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> PairedDifference:
    """statistic(*child) − statistic(*parent) with a paired, cluster bootstrap interval.

    `child` and `parent` are one array or a tuple of arrays (the statistic's arguments), row i of every array
    being the same unit measured on the two models (the same prompt, pair or item). Each resample draws the same
    rows for both models, so what the units share (a prompt that provokes every model) cancels out of the
    difference. With `clusters` (one label per row, e.g. the prompt of each reply), whole clusters are resampled.
    Identical child and parent values give a difference of exactly 0 and a zero-width interval.
    """
    child_cols, parent_cols = _as_columns(child), _as_columns(parent)
    n = len(child_cols[0])
    if any(len(c) != n for c in child_cols + parent_cols):
        raise ValueError("paired_bootstrap: child and parent arrays must have one row per unit, the same units")
    if n == 0:
        nan = float("nan")
        return PairedDifference(nan, (nan, nan), nan, nan, nan, 0)
    child_value, parent_value = float(statistic(*child_cols)), float(statistic(*parent_cols))
    point = child_value - parent_value
    if clusters is None:
        members = [np.array([i]) for i in range(n)]
    else:
        labels = np.asarray(clusters)
        if len(labels) != n:
            raise ValueError("paired_bootstrap: clusters must have one entry per row")
        members = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    units = len(members)
    if units == 1 or n_resamples <= 0:
        return PairedDifference(point, (point, point), 0.0, child_value, parent_value, units)
    def draw(rng):
        picked = rng.integers(0, units, size=units)
        return picked if clusters is None else np.concatenate([members[j] for j in picked])

    values = _replicates(lambda idx: statistic(*(c[idx] for c in child_cols)) - statistic(*(c[idx] for c in parent_cols)),
                         draw, n_resamples, seed)
    if values.size == 0:
        nan = float("nan")
        return PairedDifference(point, (nan, nan), nan, child_value, parent_value, units)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    # Percentile intervals of an exactly-zero difference are exactly zero; keep the point inside otherwise too.
    low, high = min(float(low), point), max(float(high), point)
    return PairedDifference(point, (low, high), float(values.std(ddof=1)), child_value, parent_value, units)


def paired_mean_difference(child_values: Sequence[float], parent_values: Sequence[float], *,
                           clusters: Sequence | None = None, n_resamples: int = DEFAULT_RESAMPLES,
                           seed: int = DEFAULT_SEED) -> PairedDifference:
    """Mean of child − mean of parent over paired per-unit values (see `paired_bootstrap`)."""
    return paired_bootstrap(np.mean, np.asarray(child_values, dtype=float), np.asarray(parent_values, dtype=float),
                            clusters=clusters, n_resamples=n_resamples, seed=seed)


def mcnemar_exact_p(child: Sequence[bool], parent: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes (the binomial test on the discordant pairs)."""
    from scipy.stats import binomtest

    a, b = np.asarray(child, dtype=bool), np.asarray(parent, dtype=bool)
    only_child, only_parent = int((a & ~b).sum()), int((~a & b).sum())
    if only_child + only_parent == 0:
        return 1.0
    return float(binomtest(only_child, only_child + only_parent, 0.5).pvalue)


# ------------------------------------------------------------------------------------------------- power


def z_value(probability: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(probability))


def minimum_detectable_effect(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at `alpha` detects with probability `power`, given the
    standard error of the measured difference: (z_{1−α/2} + z_{power}) · se (≈ 2.80 · se at 5% and 80%)."""
    return (z_value(1 - alpha / 2) + z_value(power)) * float(se)


def units_for_effect(units: int, mde: float, target: float) -> int:
    """Units needed to bring a minimum detectable effect `mde` measured with `units` down to `target`: the
    standard error falls with the square root of the units, so units · (mde / target)²."""
    if not (target > 0) or not np.isfinite(mde):
        raise ValueError(f"units_for_effect needs a positive target and a finite MDE, got {target}, {mde}")
    return int(np.ceil(units * (mde / target) ** 2))


def bootstrap_se(statistic: Callable[..., float], *arrays: Sequence, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> float:
    """Bootstrap standard error of statistic(*arrays) over its rows (one model's measurement, unpaired)."""
    columns = [np.asarray(a) for a in arrays]
    n = len(columns[0])
    if n < 2 or n_resamples <= 1:
        return float("nan")
    values = _replicates(lambda idx: statistic(*(c[idx] for c in columns)),
                         lambda rng: rng.integers(0, n, size=n), n_resamples, seed)
    return float(values.std(ddof=1)) if values.size > 1 else float("nan")
