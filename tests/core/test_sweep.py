"""`python -m align.run sweep` on the tiny recipe: real Optuna studies in SQLite, real stage runs per trial, real
gates, real pruning from the trainer, real killed and concurrent worker processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_cli

SMALL = {"max_rows": 16, "batch_size": 4, "eval_rows": 8}  # 4 optimizer steps, a trial in about 2 s
LR = {"type": "log_float", "low": 1.0e-6, "high": 1.0e-2}


def _recipe(tmp_path: Path, sweep: dict, **sections) -> Path:
    data = {"base": "tiny", "runs_dir": str(tmp_path / "runs"), "sft": dict(SMALL), "sweep": sweep, **sections}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _study(run_dir: Path, stage: str = "sft", name: str | None = None):
    import optuna

    url = f"sqlite:///{run_dir / 'sweep' / stage / 'study.sqlite'}"
    return optuna.load_study(study_name=name or f"{run_dir.name}-{stage}", storage=url)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _sweep_command(recipe: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "align.run", "sweep", "sft", "--config", str(recipe), "--run", "r", *extra]


# ------------------------------------------------------------------------------------------------ search space

@pytest.mark.parametrize("params, named, says", [
    ({"sft.lrr": LR}, "sweep.params.sft.lrr", "unknown recipe key"),
    ({"nope": {"x": LR}}, "sweep.params.nope.x", "unknown recipe key"),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.01}}, "sweep.params.lr", "above high"),
    ({"batch_size": {"type": "int", "low": 2.5, "high": 8}}, "sweep.params.batch_size", "must be an integer"),
    ({"batch_size": {"type": "categorical", "choices": [4, 4.5]}}, "sweep.params.batch_size", "4.5"),
    ({"lr": {"type": "log_float", "low": "tiny", "high": 1e-3}}, "sweep.params.lr", "must be a number"),
    ({"lr": {"type": "gaussian", "low": 1e-5, "high": 1e-3}}, "sweep.params.lr", "type='gaussian'"),
    ({"lr": {"type": "float", "low": 0.0, "high": 1e-3}}, "sweep.params.lr", "greater than 0"),
    ({"lr": {"type": "categorical", "choices": []}}, "sweep.params.lr", "non-empty list"),
    ({"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "choices": [1]}}, "sweep.params.lr", "'choices'"),
    ({"sft": {"lr": 0.001}}, "sweep.params.sft.lr", "not a distribution"),
    ({"model": LR}, "sweep.params.model", "section"),
])
def test_bad_search_space_entries_are_refused_naming_the_key(tmp_path, capsys, params, named, says):
    recipe = _recipe(tmp_path, {"params": params, "trials": 2})
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert named in err and says in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_an_empty_search_space_and_an_unknown_objective_are_refused(tmp_path, capsys):
    recipe = _recipe(tmp_path, {"trials": 1})
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r") == 2
    assert "sweep.params: empty" in capsys.readouterr().err
    recipe = _recipe(tmp_path, {"params": {"lr": LR}, "trials": 1, "objective": "eval_lozz", "direction": "minimize"})
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r") == 2
    err = capsys.readouterr().err
    assert "sweep.objective" in err and "eval_lozz" in err and "eval_perplexity_after" in err


# ------------------------------------------------------------------------------------- a sweep, its best, report

@pytest.fixture(scope="module")
def four_trials(tmp_path_factory, tiny_model_dir):
    """A 4-trial sweep over sft.lr on the tiny recipe, best promoted."""
    tmp_path = tmp_path_factory.mktemp("sweep4")
    recipe = _recipe(tmp_path, {"params": {"lr": LR}, "trials": 4, "sampler": "random", "pruner": "none"})
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r", "--promote-best") == 0
    return tmp_path / "runs" / "r"


def test_four_trial_sweep_finds_and_promotes_the_best_trial(four_trials):
    from optuna.trial import TrialState
    from transformers import AutoModelForCausalLM

    study = _study(four_trials)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[0].params["sft.lr"] == pytest.approx(3.0e-3)  # the baseline: the recipe's own value first
    measured = {}
    for t in trials:  # every trial a real, reloadable stage artifact trained with its own lr
        folder = four_trials / "sweep" / "sft" / f"trial-{t.number}" / "sft"
        manifest = _manifest(folder)
        assert manifest["config"]["sft"]["lr"] == pytest.approx(t.params["sft.lr"])
        measured[t.number] = manifest["metrics"]["eval_perplexity_after"]
        assert t.value == pytest.approx(measured[t.number])
    assert len({round(v, 6) for v in measured.values()}) == 4
    best = min(measured, key=measured.get)
    promoted = _manifest(four_trials / "sft")
    assert promoted["sweep"]["trial"] == best and promoted["run"] == "r"
    assert promoted["metrics"]["eval_perplexity_after"] == pytest.approx(measured[best])
    assert (four_trials / "sft" / "model.safetensors").stat().st_size > 0
    AutoModelForCausalLM.from_pretrained(four_trials / "sft")
    # the trial's own manifest is left as it was
    assert "sweep" not in _manifest(four_trials / "sweep" / "sft" / f"trial-{best}" / "sft")


def test_the_report_has_every_trial_and_optunas_plots_offline(four_trials):
    page = (four_trials / "sweep" / "sft" / "sweep_report.html").read_text(encoding="utf-8")
    assert page.count("<tr") == 1 + 4 and "(best)" in page
    for title in ("optimization history", "parameter importances", "parallel coordinates"):
        assert f"<h2>{title}</h2>" in page
    assert "Plotly.newPlot" in page and "plotly.js v" in page  # the library itself, inline
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched to draw it (include_plotlyjs='cdn' would)


def test_a_promoted_sweep_feeds_the_next_stage(four_trials):
    """dpo with no --from in the run's folder starts from the promoted best sft."""
    from align.runs import resolve_parent

    parent = resolve_parent(str(four_trials / "sft"), ("sft",), four_trials.parent, "tiny")
    assert parent.manifest["sweep"]["trial"] == _manifest(four_trials / "sft")["sweep"]["trial"]


def test_a_dpo_sweep_optimises_its_own_default_objective(tmp_path, tiny_sft):
    """Any stage: dpo from a finished sft, over beta, towards its implicit-reward preference accuracy (maximize)."""
    recipe = _recipe(tmp_path, {"params": {"beta": {"type": "float", "low": 0.05, "high": 0.5}}, "trials": 2,
                                "sampler": "random", "pruner": "none"},
                     dpo={"max_rows": 16, "batch_size": 4, "eval_rows": 8, "eval_prompts": 2})
    assert run_cli("sweep", "dpo", "--config", recipe, "--from", tiny_sft, "--run", "d", "--promote-best") == 0
    run_dir = tmp_path / "runs" / "d"
    study = _study(run_dir, "dpo")
    assert study.direction.name == "MAXIMIZE"
    trials = study.get_trials()
    for t in trials:
        manifest = _manifest(run_dir / "sweep" / "dpo" / f"trial-{t.number}" / "dpo")
        assert t.value == pytest.approx(manifest["metrics"]["eval_pref_acc_implicit_child"])
        assert manifest["parent"]["path"] == str(tiny_sft) and manifest["config"]["dpo"]["beta"] == t.params["dpo.beta"]
    assert _manifest(run_dir / "dpo")["sweep"]["trial"] == max(trials, key=lambda t: t.value).number


# ---------------------------------------------------------------------------------------------- gate, pruning

def test_a_trial_that_fails_its_gate_is_never_the_best(tmp_path, tiny_model_dir):
    """Trial 0 trains well (low perplexity) but its gate fails; trial 1 barely trains and passes: 1 is the best."""
    limit = "gate.limits.crows_pairs_stereotype_share.max"
    recipe = _recipe(tmp_path, {
        "params": {"lr": {"type": "categorical", "choices": [3.0e-3, 1.0e-6]},
                   limit: {"type": "categorical", "choices": [-1.0, 1.0]}},
        "baseline": False, "enqueue": [{"lr": 3.0e-3, limit: -1.0}, {"lr": 1.0e-6, limit: 1.0}],
        "trials": 2, "pruner": "none"},
        gate={"enabled": True, "scorer": "none", "benchmarks": ["crows_pairs"], "crows_pairs": 4,
              "n_resamples": 50})
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r", "--promote-best") == 0
    run_dir = tmp_path / "runs" / "r"
    study = _study(run_dir)
    failed, passed = study.get_trials()
    assert failed.value < passed.value  # the better objective...
    assert failed.user_attrs["feasible"] is False and failed.user_attrs["status"] == "gate_failed"
    assert failed.constraints == {"gate": 1.0} and passed.constraints == {"gate": 0.0}
    assert failed.user_attrs["gate.crows_pairs.stereotype_share.passed"] is False
    assert isinstance(failed.user_attrs["gate.crows_pairs.stereotype_share"], float)
    assert (run_dir / "sweep" / "sft" / "trial-0" / "sft.gate_failed" / "manifest.json").is_file()
    assert not (run_dir / "sweep" / "sft" / "trial-0" / "sft").exists()
    assert study.best_trial.number == 1  # Optuna itself agrees: the constraint makes trial 0 infeasible
    assert _manifest(run_dir / "sft")["sweep"]["trial"] == 1
    assert "gate failed: infeasible" in (run_dir / "sweep" / "sft" / "sweep_report.html").read_text()


def test_a_pruned_trial_leaves_no_promoted_folder(tmp_path, tiny_model_dir):
    """The median pruner, fed the training loss by the trainer's callback, stops a trial whose lr barely moves it."""
    from optuna.trial import TrialState

    recipe = _recipe(tmp_path, {
        "params": {"lr": {"type": "categorical", "choices": [3.0e-3, 1.0e-7]}}, "baseline": False,
        "enqueue": [{"lr": 3.0e-3}, {"lr": 1.0e-7}], "trials": 2, "pruner": "median",
        "prune_startup_trials": 1, "prune_warmup_steps": 1})
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r", "--promote-best") == 0
    run_dir = tmp_path / "runs" / "r"
    good, hopeless = _study(run_dir).get_trials()
    assert good.state == TrialState.COMPLETE and hopeless.state == TrialState.PRUNED
    assert len(good.intermediate_values) >= 3  # the trainer reported its loss at every logging step
    assert max(hopeless.intermediate_values) < max(good.intermediate_values)  # stopped before the end
    assert not (run_dir / "sweep" / "sft" / "trial-1").exists()  # no model, no work folder
    assert _manifest(run_dir / "sft")["sweep"]["trial"] == 0


# ---------------------------------------------------------------------------------------- resume and workers

def test_a_killed_sweep_resumes_and_runs_only_the_remaining_trials(tmp_path, tiny_model_dir):
    from optuna.trial import TrialState

    recipe = _recipe(tmp_path, {"params": {"lr": LR}, "trials": 4, "sampler": "random", "pruner": "none"})
    sweep = tmp_path / "runs" / "r" / "sweep" / "sft"
    worker = subprocess.Popen(_sweep_command(recipe), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.time() + 240
    while not (sweep / "trial-1" / "sft" / "manifest.json").is_file() or \
            sum(t.state == TrialState.COMPLETE for t in _study(sweep.parent.parent).get_trials()) < 2:
        assert worker.poll() is None and time.time() < deadline, "the sweep ended before its second trial"
        time.sleep(0.1)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    before = {t.number: t for t in _study(sweep.parent.parent).get_trials()}
    done = [n for n, t in before.items() if t.state == TrialState.COMPLETE]
    assert 2 <= len(done) < 4
    stamps = {n: (sweep / f"trial-{n}" / "sft" / "manifest.json").stat().st_mtime_ns for n in done}

    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r") == 0
    after = _study(sweep.parent.parent).get_trials()
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    resumed = [t for t in complete if t.number not in done]
    assert len(resumed) == 4 - len(done)  # only the rest ran
    assert {t.user_attrs["worker"] for t in resumed} == {f"{os.uname().nodename}:{os.getpid()}"}
    for n in done:  # the finished trials were neither rerun nor rewritten
        assert (sweep / f"trial-{n}" / "sft" / "manifest.json").stat().st_mtime_ns == stamps[n]
    for t in after:  # the trial the kill interrupted is failed and leaves no folder
        if t.state == TrialState.FAIL:
            assert before[t.number].state == TrialState.RUNNING and not (sweep / f"trial-{t.number}").exists()
    assert sorted(p.name for p in sweep.glob("trial-*")) == sorted(f"trial-{t.number}" for t in complete)


def test_a_study_resumed_with_other_settings_is_refused(tmp_path, tiny_model_dir, capsys):
    recipe = _recipe(tmp_path, {"params": {"lr": LR}, "trials": 1, "sampler": "random", "pruner": "none"})
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r") == 0
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r", "--trials", "2", "max_rows=8") == 2
    err = capsys.readouterr().err
    assert "started with other settings (sft.max_rows 16 -> 8)" in err and "--study NAME" in err
    assert len(_study(tmp_path / "runs" / "r").get_trials()) == 1
    # the searched key itself may differ (that is the point), and more trials may be asked for
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r", "--trials", "2", "lr=1e-4") == 0
    assert len(_study(tmp_path / "runs" / "r").get_trials()) == 2


def test_two_worker_processes_share_one_study_without_running_a_trial_twice(tmp_path, tiny_model_dir):
    from optuna.trial import TrialState

    recipe = _recipe(tmp_path, {"params": {"lr": LR}, "trials": 4, "sampler": "random", "pruner": "none"})
    workers = [subprocess.Popen(_sweep_command(recipe), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    trials = _study(tmp_path / "runs" / "r").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # exactly the 4 asked for, none failed
    assert len({t.params["sft.lr"] for t in trials}) == 4  # no trial's settings run twice
    by_worker = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t.number)
    assert set(by_worker) == {f"{os.uname().nodename}:{w.pid}" for w in workers}  # both took part
    sweep = tmp_path / "runs" / "r" / "sweep" / "sft"
    assert sorted(p.name for p in sweep.glob("trial-*")) == [f"trial-{n}" for n in range(4)]
    for n in range(4):
        assert _manifest(sweep / f"trial-{n}" / "sft")["run"] == f"trial-{n}"


# ------------------------------------------------------------------------------------------------- pipeline

def test_the_pipeline_runs_a_sweep_in_place_of_a_stage_and_resumes_it(tmp_path, tiny_model_dir, capsys):
    from optuna.trial import TrialState

    recipe = _recipe(tmp_path, {"params": {"sft": {"lr": LR}, "dpo": {"beta": {"type": "float", "low": 0.05,
                                                                              "high": 0.5}}},
                                "trials": 2, "sampler": "random", "pruner": "none"},
                     pipeline={"stages": ["sft"], "sweep": ["sft"], "eval_final": False, "final_eval_prompts": 0})
    assert run_cli("pipeline", "--config", recipe, "--run", "p") == 0
    run_dir = tmp_path / "runs" / "p"
    trials = _study(run_dir).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert set(trials[0].params) == {"sft.lr"}  # dpo's key is left to a sweep of dpo
    promoted = _manifest(run_dir / "sft")
    best = min(trials, key=lambda t: t.value)
    assert promoted["sweep"]["trial"] == best.number and (run_dir / "report.html").is_file()
    stamp = (run_dir / "sft" / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run_cli("pipeline", "--config", recipe, "--run", "p") == 0  # again: the study is done, nothing reruns
    assert "0 trial(s) run here" in capsys.readouterr().out
    assert len(_study(run_dir).get_trials()) == 2
    assert (run_dir / "sft" / "manifest.json").stat().st_mtime_ns == stamp


def test_a_pipeline_sweep_of_an_unlisted_stage_and_another_stages_key_are_refused(tmp_path, capsys):
    recipe = _recipe(tmp_path, {"params": {"lr": LR}}, pipeline={"stages": ["sft"], "sweep": ["dpo"]})
    assert run_cli("pipeline", "--config", recipe, "--run", "p") == 2
    assert "pipeline.sweep: 'dpo' is not one of pipeline.stages" in capsys.readouterr().err
    recipe = _recipe(tmp_path, {"params": {"dpo.beta": {"type": "float", "low": 0.05, "high": 0.5}}})
    assert run_cli("sweep", "sft", "--config", recipe, "--run", "r") == 2
    assert "sweep.params.dpo.beta: an option of dpo, which a sweep of sft does not run" in capsys.readouterr().err
