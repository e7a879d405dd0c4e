"""`python -m align.run sweep <stage>`: hyperparameter search over any stage on Optuna, gated.

options.py  the recipe's `sweep:` section          space.py    search space → Optuna distributions, checked
study.py    the study, its workers and trials      pruning.py  the trainer's callback and the pruner
promote.py  --promote-best                         report.py   sweep_report.html
command.py  the command line, and `run_sweep` (also what `pipeline` calls for a stage in pipeline.sweep)
"""
