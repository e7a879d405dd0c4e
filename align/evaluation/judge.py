"""The independent judge and the win rates it gives: raw, and length-controlled (AlpacaEval-LC style).

The judge (`eval.judge: auto`) is a reward model align trains itself with its own `rm` stage on preference data
that none of the compared models was trained on (`eval.judge_data: auto`: the shipped preference sets of unused
families, e.g. oasst-ranked + llamafactory-dpo-en-demo when the run trained on HH), on `eval.judge_base` (the
shipped MiniLM encoder by default). Its settings are the `eval.judge_*` options over the rm stage's own defaults —
never the run's `rm` section, so the judge does not move with the run. It is built once and kept in align's cache
(`cache_dir("eval", "judges")/<key>/rm`, key: its settings and the content of its data), with its manifest: the
held-out accuracy and length diagnostics (align.reward_diagnostics) on the test splits of its data.

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

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from align.paths import cache_dir
from align.log import log

VERSION = "v1"


# ------------------------------------------------------------------------------------------------ win rates


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


# ---------------------------------------------------------------------------------------------------- judge


def judge_config(options, data: str, device: str):
    """The recipe the judge is trained with: the rm stage's defaults, the `eval.judge_*` options, no gate."""
    from omegaconf import OmegaConf

    from align.config import recipe_schema

    tree = {
        "name": "eval-judge", "runs_dir": str(cache_dir("eval", "judges")), "seed": options.seed, "device": device,
        "model": {"source": options.judge_base}, "lora": {"enabled": False}, "gate": {"enabled": False},
        "rm": {"base": options.judge_base, "data": data, "eval_data": None, "on_bad_rows": "drop",
               "max_rows": options.judge_max_rows, "eval_rows": -1, "max_steps": options.judge_max_steps,
               "epochs": options.judge_epochs, "lr": options.judge_lr, "batch_size": options.judge_batch_size,
               "max_length": options.judge_max_length, "max_prompt_length": options.max_prompt_length,
               "length_balance": options.judge_length_balance,
               "warmup_ratio": 0.05, "logging_steps": 10, "save_steps": 1_000_000},
    }
    cfg = OmegaConf.merge(OmegaConf.structured(recipe_schema()), tree)
    OmegaConf.set_struct(cfg, True)
    return cfg


def judge_key(cfg) -> str:
    from align.config import to_dict
    from align.data.registry import spec_digest

    return hashlib.sha256(json.dumps([VERSION, to_dict(cfg.rm), cfg.seed, spec_digest(cfg.rm.data)],
                                     sort_keys=True, default=str).encode()).hexdigest()


def ensure_judge(options, data: str, device: str) -> Path:
    """The auto judge's folder, trained now (once) if the cache has none with these settings and data."""
    from align.driver import run_stage
    from align.runs import PROMOTABLE, read_manifest

    cfg = judge_config(options, data, device)
    run = f"judge-{judge_key(cfg)[:16]}"
    folder = Path(cfg.runs_dir) / run / "rm"
    if (read_manifest(folder) or {}).get("status") in PROMOTABLE:
        return folder
    log.info(f"eval: training the independent judge (once, cached in {folder.parent}): a reward head on "
             f"{options.judge_base}, on {data}")
    return run_stage("rm", cfg, parent_spec=options.judge_base, run=run)


def describe_judge(folder: Path) -> dict:
    """Name, data and held-out figures of a judge folder (from its manifest when it has one)."""
    from align.runs import read_manifest

    manifest = read_manifest(folder) or {}
    metrics = manifest.get("metrics") or {}
    rm = (manifest.get("config") or {}).get("rm") or {}
    heldout = {k.removeprefix("eval_"): v for k, v in metrics.items()
               if k.startswith("eval_") and isinstance(v, (int, float, str, list, type(None)))}
    train_rows = metrics.get("train_rows_within_max_length", metrics.get("train_rows"))
    name = (f"reward model on {rm.get('base')} trained by align on {rm.get('data')} ({train_rows} pairs)"
            if manifest else f"reward model {folder}")
    return {"name": name, "folder": str(folder), "base": rm.get("base"), "data": rm.get("data"),
            "train_pairs": train_rows, "heldout": heldout}
