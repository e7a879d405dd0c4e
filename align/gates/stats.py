"""Bootstrap confidence intervals for the gate's figures.

Every gate figure is a statistic of per-unit values (one value per prompt, per pair, per item...). Its 95%
interval is the percentile bootstrap: resample the units with replacement `n_resamples` times (rows of several
arrays together, so paired values stay paired), recompute the statistic, and take the 2.5th and 97.5th
percentiles. A fixed seed makes the interval reproducible. With `strata` (e.g. the group of each BOLD
continuation) units are resampled within each stratum, so every group keeps its size in every resample.
"""

from __future__ import annotations

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
    rng = np.random.default_rng(seed)
    values = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = _resample_indices(n, members, rng)
        values[i] = statistic(*(c[idx] for c in columns))
    values = values[~np.isnan(values)]
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
