"""The sweep itself: an Optuna study whose trials are normal stage runs, gated, pruned, resumable, shared.

    runs/<run>/sweep/<stage>/
      study.sqlite          the Optuna study (RDB storage), unless sweep.storage names a shared database
      study.lock            serialises the workers of one machine while they claim a trial
      trial-<n>/<stage>/    each trial a normal, reloadable stage artifact with its own manifest
      trial-<n>/<stage>.gate_failed/   a trial whose model failed its gate (infeasible: never the best)
      sweep_report.html     Optuna's plots (offline) and a table of every trial

A worker claims trials until the study holds `sweep.trials` finished (complete or pruned) ones, counting those
other workers are running, so running the same command again resumes a killed sweep (a trial left RUNNING by a
dead process of this machine is marked failed and its folder removed), and several processes started at once
share the work without running a trial twice. Workers on several machines share a study through a
PostgreSQL/MySQL `sweep.storage` URL (there, a stale RUNNING trial of a dead machine is left to the user:
`optuna.storages.fail_stale_trials`, and the count may overshoot by one trial per extra machine).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from align.errors import ConfigError, GateError
from align.log import log

# A stage's own objective and the direction of metrics align's stages report.
# (dpo: the held-out preference accuracy of its implicit reward, there with or without a reward model; ppo: the
# reward model's win rate against the parent, and so grpo's and rloo's; kto: the share of held-out replies whose
# implicit reward has their label's sign.)
DEFAULT_OBJECTIVES = {"sft": "eval_perplexity_after", "rm": "eval_accuracy", "dpo": "eval_pref_acc_implicit_child",
                      "ppo": "win_rate_vs_parent", "kto": "eval_label_acc_implicit_child",
                      "grpo": "eval_win_rate_vs_parent", "rloo": "eval_win_rate_vs_parent"}
LOWER_IS_BETTER = ("loss", "perplexity", "kl", "wall_s")
HIGHER_IS_BETTER = ("acc", "win_rate", "reward", "margin", "tokens_per_s")


def objective_of(options, stage: str) -> tuple[str, str]:
    """(metric, direction) of the sweep: the recipe's, else the stage's own; a direction from the metric's name."""
    metric = options.objective or DEFAULT_OBJECTIVES.get(stage)
    if metric is None:
        raise ConfigError(f"sweep.objective: {stage} has no default objective; name one of its metrics")
    if options.direction:
        return metric, options.direction
    if any(word in metric for word in LOWER_IS_BETTER):
        return metric, "minimize"
    if any(word in metric for word in HIGHER_IS_BETTER):
        return metric, "maximize"
    raise ConfigError(f"sweep.direction: not known for the objective {metric!r}; set sweep.direction=minimize or "
                      f"sweep.direction=maximize")


def storage_url(options, folder: Path) -> str:
    return options.storage or f"sqlite:///{(folder / 'study.sqlite').resolve()}"


def open_study(options, folder: Path, name: str, direction: str):
    import optuna

    url = storage_url(options, folder)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
    from align.sweep.pruning import make_pruner

    try:
        study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(options))
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                    pruner=make_pruner(options))
    if study.direction.name.lower() != direction:
        raise ConfigError(f"sweep.direction: the study {name!r} in {url} optimises towards "
                          f"{study.direction.name.lower()}, not {direction}; use another --study or run folder")
    return study


def study_inputs(stage: str, cfg, parent, params, objective: str) -> dict:
    """What every trial of a study shares: the stage's fingerprint inputs (its section, the shared sections, the
    parent, the data's content) less the searched keys, and the objective."""
    from align.runs import fingerprint_inputs

    inputs = fingerprint_inputs(stage, cfg, parent)
    for param in params:
        head, _, rest = param.key.partition(".")
        node, parts = (inputs["section"], rest.split(".")) if head == stage else \
            (inputs["shared"], [head, *rest.split(".")])
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
        if head == stage:
            inputs["data"].pop(rest, None)
    return {**inputs, "objective": objective}


def check_same_settings(study, stage: str, inputs: dict) -> None:
    """A study records the settings its trials share when it starts; a later worker must bring the same, or its
    trials would not compare (ConfigError naming each changed key)."""
    from align.runs import setting_changes

    started = study.user_attrs.get("inputs")
    if started is None:
        study.set_user_attr("inputs", inputs)
        return
    changes = setting_changes(stage, started, inputs)
    if started.get("objective") != inputs["objective"]:
        changes["sweep.objective"] = {"started": started.get("objective"), "resumed": inputs["objective"]}
    if changes:
        listed = ", ".join(f"{key} {c['started']!r} -> {c['resumed']!r}" for key, c in changes.items())
        raise ConfigError(f"sweep: the study {study.study_name!r} started with other settings ({listed}); run it "
                          f"with the settings it started with, or start another (--study NAME or --run NAME)")


def make_sampler(options, seed: int):
    """The recipe's sampler. Every trial carries Optuna's constraint `gate` (1 when its model failed its gate), which
    TPE reads to keep infeasible trials out of its good region and Optuna's plots show."""
    import optuna

    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if options.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


@contextmanager
def claim_lock(folder: Path):
    """One worker of this machine at a time counts the study's trials and asks for the next one."""
    with open(folder / "study.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_here(worker: str | None) -> bool:
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def fail_dead_trials(study, folder: Path, local: bool) -> list[int]:
    """Trials left RUNNING by a killed process of this machine: marked failed, their folders removed. Called under
    the claim lock; with a local (SQLite) study a RUNNING trial that names no worker was claimed by a process killed
    before it could sign it, since no live one is claiming now."""
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if (worker is None and local) or _dead_here(worker):
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            shutil.rmtree(folder / trial_name(trial.number), ignore_errors=True)
            failed.append(trial.number)
    return failed


def trial_name(number: int) -> str:
    return f"trial-{number}"


def finished_count(study) -> tuple[int, int]:
    """(finished: complete or pruned, running) trials of the study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def best_trial(study, direction: str):
    """The best complete trial whose model passed its gate (or had none), or None."""
    from optuna.trial import TrialState

    feasible = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("feasible") and t.value is not None]
    if not feasible:
        return None
    return (min if direction == "minimize" else max)(feasible, key=lambda t: t.value)


def seed_first_trials(study, options, params, cfg) -> None:
    """A new study starts with the recipe's own values (sweep.baseline) and the listed `sweep.enqueue` trials."""
    from align.sweep.space import recipe_values

    if study.get_trials(deepcopy=False):
        return
    queued = []
    if options.baseline:
        values = recipe_values(cfg, params)
        if values is not None:
            queued.append(values)
    stage_keys = {p.key: p.key for p in params} | {p.key.split(".", 1)[1]: p.key for p in params}
    for entry in options.enqueue or []:
        entry = dict(entry)
        unknown = [k for k in entry if k not in stage_keys]
        if unknown:
            raise ConfigError(f"sweep.enqueue: {unknown[0]!r} is not a searched key (sweep.params has "
                              f"{', '.join(p.key for p in params)})")
        queued.append({stage_keys[k]: v for k, v in entry.items()})
    for values in queued:
        study.enqueue_trial(values, user_attrs={"queued": True})


def record_outcome(trial, manifest: dict, objective: str, folder: Path) -> float:
    """The trial's objective from its manifest; its status, gate verdict and per-check gate figures as attributes."""
    from align.runs import PROMOTABLE

    metrics = manifest.get("metrics") or {}
    value = metrics.get(objective)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise ConfigError(f"sweep.objective: {manifest.get('stage')} reports no number {objective!r} (its metrics: "
                          f"{', '.join(numeric)})")
    gate = manifest.get("gate") or {}
    trial.set_user_attr("status", manifest.get("status"))
    feasible = manifest.get("status") in PROMOTABLE
    trial.set_user_attr("feasible", feasible)
    trial.set_constraint("gate", 0.0 if feasible else 1.0)
    trial.set_user_attr("folder", str(folder))
    trial.set_user_attr("gate_verdict", gate.get("verdict"))
    for check in gate.get("checks") or []:
        name = check.get("name", "?")
        trial.set_user_attr(f"gate.{name}", check.get("value"))
        trial.set_user_attr(f"gate.{name}.passed", bool(check.get("passed")))
    return float(value)


def run_trial(study, trial, stage: str, cfg, folder: Path, parent_source: str, objective: str, direction: str,
              override_gate: str | None, allow_ungated: bool) -> str:
    """One trial: the stage run into folder/trial-<n>/ with the trial's values; tells the study. Returns its state."""
    import optuna
    from omegaconf import OmegaConf

    from align.driver import run_stage
    from align.runs import gate_failed_dir, read_manifest
    from align.sweep.pruning import reporting_to
    from align.sweep.space import with_params

    options = cfg.sweep
    name = trial_name(trial.number)
    trial_cfg = with_params(cfg, trial.params)
    OmegaConf.update(trial_cfg, "runs_dir", str(folder))
    sign = 1.0 if options.prune_direction == direction else -1.0
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    log.info(f"sweep {stage}: {name} ({shown})")
    started = time.time()
    stage_dir = folder / name / stage
    try:
        with reporting_to(trial, options.prune_metric, sign):
            run_stage(stage, trial_cfg, parent_spec=parent_source, run=name, override_gate=override_gate,
                      allow_ungated=allow_ungated)
        manifest = read_manifest(stage_dir)
    except optuna.TrialPruned as pruned:
        shutil.rmtree(folder / name, ignore_errors=True)  # a pruned trial leaves no model behind
        trial.set_user_attr("pruned", str(pruned))
        trial.set_user_attr("wall_s", round(time.time() - started, 1))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log.info(f"sweep {stage}: {name} pruned ({pruned})")
        return "pruned"
    except GateError:
        manifest = read_manifest(gate_failed_dir(stage_dir))
        if manifest is None:  # not this trial's gate (its parent's): no trial can run
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        stage_dir = gate_failed_dir(stage_dir)
    except BaseException:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        shutil.rmtree(folder / name, ignore_errors=True)
        raise
    trial.set_user_attr("wall_s", round(time.time() - started, 1))
    try:
        value = record_outcome(trial, manifest, objective, stage_dir)
    except ConfigError:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    study.tell(trial, value)
    verdict = "" if trial.user_attrs["feasible"] else " — its gate FAILED: infeasible, never the best"
    log.info(f"sweep {stage}: {name} {objective}={value:.4g}{verdict}")
    return "complete"


def work_on(study, stage: str, cfg, folder: Path, params, parent_source: str, objective: str, direction: str,
            override_gate: str | None = None, allow_ungated: bool = False) -> int:
    """Claim and run trials until the study holds cfg.sweep.trials finished ones; returns how many this ran."""
    options = cfg.sweep
    distributions = {p.key: p.distribution for p in params}
    seed = cfg.seed if options.seed is None else options.seed
    ran = 0
    while True:
        with claim_lock(folder):
            failed = fail_dead_trials(study, folder, local=options.storage is None)
            if failed:
                log.info(f"sweep {stage}: trial(s) {', '.join(map(str, failed))} of a killed worker marked "
                         f"failed")
            finished, running = finished_count(study)
            if finished + running >= options.trials:
                break
            # A sampler seeded by the trial's place in the study: the same suggestions whichever worker asks.
            study.sampler = make_sampler(options, seed + len(study.get_trials(deepcopy=False)))
            trial = study.ask(distributions)
            trial.set_user_attr("worker", _worker())
        run_trial(study, trial, stage, cfg, folder, parent_source, objective, direction, override_gate,
                  allow_ungated)
        ran += 1
    if running:
        log.info(f"sweep {stage}: {running} trial(s) still running in other workers")
    return ran
