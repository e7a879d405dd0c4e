"""Pruning: the trainer reports its logged values to the trial, and Optuna's pruner stops a hopeless one early.

The transformers TrainerCallback below goes onto every trainer `align.training.train` runs while a trial is on
(sft, rm and dpo; ppo has its own loop and is never pruned). At each logging step it reports
`sweep.prune_metric` (the training loss by default) as the trial's intermediate value — negated when its
direction differs from the objective's, since Optuna's pruners compare intermediate values in the study's
direction — and raises optuna.TrialPruned when the pruner says so: the stage stops, nothing is promoted.
"""

from __future__ import annotations

import math
from contextlib import contextmanager


def make_pruner(options):
    import optuna

    if options.pruner == "none":
        return optuna.pruners.NopPruner()
    if options.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=options.prune_startup_trials,
                                           n_warmup_steps=options.prune_warmup_steps)
    if options.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.HyperbandPruner()


def pruning_callback(trial, metric: str, sign: float):
    """A TrainerCallback reporting `metric` × sign to `trial` at each log and pruning when the pruner says so."""
    import optuna
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            value = (logs or {}).get(metric)
            if value is None or not state.is_world_process_zero:
                return
            value = float(value)
            worst = float("inf") if trial.study.direction == optuna.study.StudyDirection.MINIMIZE else float("-inf")
            trial.report(sign * value if math.isfinite(value) else worst, step=int(state.global_step))
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric}={value:.4g} at step {state.global_step}")

    return ReportToTrial()


@contextmanager
def reporting_to(trial, metric: str, sign: float):
    """While the block runs, every trainer align trains reports to `trial`."""
    from align import training

    callback = pruning_callback(trial, metric, sign)
    training.EXTRA_CALLBACKS.append(callback)
    try:
        yield
    finally:
        training.EXTRA_CALLBACKS.remove(callback)
