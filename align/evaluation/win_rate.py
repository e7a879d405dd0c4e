"""Win rates of a model over a baseline from a judge's scores, raw and length-controlled (AlpacaEval-LC style),
with bootstrap intervals over prompts. Pure statistics: no model (the judge itself is align.evaluation.judge).

Win rate: on each prompt the model's reply wins when the judge scores it above the baseline's reply to the same
prompt; a tie (equal scores, e.g. identical replies) counts half. Its interval: percentile bootstrap over prompts.

Length-controlled win rate: a logistic regression of the judgement on the length difference,
P(win) = sigmoid(t0 + t1 * tanh(d / s)), d = characters of the model's reply minus the baseline's, s = the standard
deviation of d over the prompts (AlpacaEval-LC's bounded length term; s = 0 makes the term 0). A tie enters as a
win and a loss of weight 1/2 each. The slope is L2-penalised (C=1, as scikit-learn's default), the intercept is
not (`logistic_fit`: Newton's method, so that the 1,000 refits of the bootstrap take a second). The reported
figure is the fitted win rate at zero length difference, sigmoid(t0): what the model would win if its replies
were as long as the baseline's. Its interval: the same bootstrap over prompts, refitting each resample
(widened, if need be, to hold the point figure).
"""

from __future__ import annotations

import math

import numpy as np


def length_term(model_lengths, baseline_lengths) -> np.ndarray:
    """tanh(d / s) per prompt (see the module docstring)."""
    d = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    s = d.std()
    return np.tanh(d / s) if s > 0 else np.zeros_like(d)


def logistic_fit(y, x, c: float = 1.0, iterations: int = 50) -> tuple[float, float]:
    """(t0, t1) minimising -sum[y log p + (1 - y) log(1 - p)] + t1^2 / (2c), p = sigmoid(t0 + t1 x), for targets y
    in [0, 1] (a tie, y = 1/2, is a win and a loss of weight 1/2 each): scikit-learn's L2 logistic regression
    (intercept unpenalised), solved by Newton's method in closed form, as fast as the bootstrap needs."""
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    mean = min(max(y.mean(), 1e-6), 1 - 1e-6)
    t = np.array([math.log(mean / (1 - mean)), 0.0])
    design = np.stack([np.ones_like(x), x], axis=1)
    ridge = np.diag([0.0, 1.0 / c])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ t)))
        gradient = design.T @ (p - y) + ridge @ t
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge + 1e-12 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        t = t - step
        if np.abs(step).max() < 1e-10:
            break
    return float(t[0]), float(t[1])


def length_controlled_win_rate(wins, term) -> float:
    """sigmoid(t0) of the logistic fit of the judgements `wins` (1, 0.5, 0) on the length term."""
    wins, term = np.asarray(wins, dtype=float), np.asarray(term, dtype=float)
    if wins.size == 0:
        return float("nan")
    if np.all(wins == 1.0) or np.all(wins == 0.0):
        return float(wins[0])  # one class only: the fit's limit
    t0, _ = logistic_fit(wins, term)
    return 1.0 / (1.0 + math.exp(-t0))


def win_rates(model_scores, baseline_scores, model_lengths, baseline_lengths, n_resamples: int = 1000,
              seed: int = 0) -> dict:
    """Raw and length-controlled win rate of the model over the baseline, with bootstrap intervals over prompts."""
    from align.gates.stats import bootstrap_ci
    from align.reward_diagnostics import pair_wins

    wins = pair_wins(model_scores, baseline_scores)
    term = length_term(model_lengths, baseline_lengths)
    raw_ci = bootstrap_ci(np.mean, wins, n_resamples=n_resamples, seed=seed)
    lc_ci = bootstrap_ci(length_controlled_win_rate, wins, term, n_resamples=n_resamples, seed=seed)
    lc = length_controlled_win_rate(wins, term)
    return {"win_rate": float(wins.mean()), "win_rate_ci95": list(raw_ci),
            "lc_win_rate": lc, "lc_win_rate_ci95": [min(lc_ci[0], lc), max(lc_ci[1], lc)],
            "ties": int((wins == 0.5).sum()), "prompts": int(wins.size),
            "model_longer": int((term > 0).sum()), "baseline_longer": int((term < 0).sum())}
