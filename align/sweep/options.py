"""The recipe's `sweep:` section: what `python -m align.run sweep <stage>` searches, how, and for what.

    sweep:
      objective: eval_perplexity_after   # any metric the stage writes into its manifest (default: the stage's own)
      direction: minimize                # or maximize (default: the known direction of the objective)
      trials: 8
      params:                            # per recipe key a distribution; the stage's own keys need no prefix
        lr: {type: log_float, low: 1.0e-5, high: 1.0e-3}
        batch_size: {type: int, low: 4, high: 16, step: 4}
        lora.r: {type: categorical, choices: [8, 16, 32]}

Distribution types: float, log_float, int, log_int, categorical (see align/sweep/space.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from align.config import opt

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("none", "median", "successive_halving", "hyperband")


@dataclass
class SweepOptions:
    params: Dict[str, Any] = opt({}, "search space: recipe key -> {type: float|log_float|int|log_int|categorical, "
                                     "low, high[, step] | choices}; nested sections or dotted keys")
    objective: Optional[str] = opt(None, "the stage metric (in its manifest's metrics) to optimise (default: the "
                                         "stage's own: sft eval_perplexity_after, rm eval_accuracy, dpo "
                                         "eval_pref_acc_implicit_child, ppo win_rate_vs_parent, kto "
                                         "eval_label_acc_implicit_child)")
    direction: Optional[str] = opt(None, "minimize or maximize (default: the objective's known direction)",
                                   choices=("minimize", "maximize"))
    trials: int = opt(8, "finished trials (completed or pruned) the study runs to; workers stop there", min=1)
    sampler: str = opt("tpe", "Optuna sampler: tpe (gate-aware through its constraints), random, qmc",
                       choices=SAMPLERS)
    pruner: str = opt("median", "Optuna pruner on the training loss reported during training: none, median, "
                                "successive_halving, hyperband", choices=PRUNERS)
    prune_metric: str = opt("loss", "the trainer's logged value reported to the pruner at each logging step")
    prune_direction: str = opt("minimize", "whether a lower or higher prune_metric is better",
                               choices=("minimize", "maximize"))
    prune_startup_trials: int = opt(2, "trials that finish unpruned before the median pruner judges others", min=0)
    prune_warmup_steps: int = opt(1, "steps of each trial that the median pruner never prunes in", min=0)
    baseline: bool = opt(True, "the first trial uses the recipe's own values of the searched keys (where they lie "
                               "in the space), so the report shows the default settings' value beside the best")
    enqueue: List[Any] = opt([], "trials to run first: a list of {key: value} (keys as in params)")
    seed: Optional[int] = opt(None, "sampler seed (default: the recipe's seed)", min=0)
    storage: Optional[str] = opt(None, "Optuna storage URL shared by workers on several machines "
                                       "(postgresql://..., mysql://...); default: sqlite in the sweep folder")
    study: Optional[str] = opt(None, "study name (default: <run>-<stage>)")
    promote_best: bool = opt(False, "copy the best feasible trial to runs/<run>/<stage>/ when the study is done")
