"""The recipe's `report_to`: passed to every TRL config and to align's own PPO loop, `none` works, an unknown name is
refused (exit 2), and MLflow's local file store gets the metrics, params, the gate's figures and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.mark.parametrize("value, expected", [
    (None, ["tensorboard"]), ("none", []), ("mlflow", ["mlflow"]), (["tensorboard", "mlflow"], ["tensorboard", "mlflow"]),
    ("tensorboard,mlflow", ["tensorboard", "mlflow"]),
])
def test_report_to_is_read_as_a_list_of_trackers(value, expected):
    from align import config as config_mod
    from align.training import trackers

    cfg = config_mod.load_recipe("tiny", [] if value is None else [f"report_to={json.dumps(value)}"
                                                                   if isinstance(value, list) else f"report_to={value}"])
    assert trackers(cfg) == expected


def test_unknown_tracker_is_refused_with_exit_2(runs_dir, tiny_model_dir):
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs_dir}", "--run", "bad", "max_steps=1",
                   "report_to=tensorbored") == 2


def test_report_to_none_trains_without_tensorboard_events(runs_dir, tiny_model_dir):
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs_dir}", "--run", "quiet", "max_steps=2",
                   "report_to=none") == 0
    folder = runs_dir / "quiet" / "sft"
    assert (folder / "manifest.json").is_file()
    assert not list(folder.rglob("events.out.tfevents*")), "report_to=none must write no TensorBoard events"


def test_mlflow_file_store_holds_metrics_params_and_artifacts(runs_dir, tiny_model_dir, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the run sets both: removed after the test
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs_dir}", "--run", "tracked", "max_steps=2",
                   "logging_steps=1", "report_to=[tensorboard,mlflow]",
                   # a gate of one cheap check (CrowS-Pairs likelihoods on 6 pairs), as tests/core/test_run_safety.py
                   "gate.enabled=true", "gate.benchmarks=[crows_pairs]", "gate.crows_pairs=6") == 0
    store = runs_dir / "mlruns"
    assert store.is_dir(), "the MLflow file store goes under the runs folder"
    metas = [m for m in store.rglob("meta.yaml") if m.parent.parent.name != ".trash" and (m.parent / "metrics").is_dir()]
    assert len(metas) == 1
    run = metas[0].parent
    assert (run / "metrics" / "train_loss").is_file() or (run / "metrics" / "loss").is_file()
    assert (run / "params" / "learning_rate").is_file()
    artifacts = {p.relative_to(run / "artifacts").as_posix() for p in (run / "artifacts").rglob("*") if p.is_file()}
    assert "manifest.json" in artifacts
    manifest = json.loads((run / "artifacts" / "manifest.json").read_text())
    assert manifest["stage"] == "sft" and manifest["run"] == "tracked"
    assert (run / "tags" / "align.status").read_text() == manifest["status"]
    gate_checks = [c["name"] for c in (manifest.get("gate") or {}).get("checks") or [] if c.get("value") is not None]
    assert gate_checks, "the tiny recipe gates sft: its figures must reach MLflow"
    for name in gate_checks:
        assert (run / "metrics" / f"gate.{name}").is_file(), name
    assert any(folder.rglob("events.out.tfevents*") for folder in [runs_dir / "tracked" / "sft"])


def _mlflow_runs(store: Path) -> list[Path]:
    return [m.parent for m in store.rglob("meta.yaml")
            if m.parent.parent.name != ".trash" and (m.parent / "metrics").is_dir()]


def test_ppo_reports_its_steps_to_mlflow_and_tensorboard(runs_dir, tiny_sft, tiny_rm, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert run_cli("ppo", "--config", "tiny", "--from", tiny_sft, f"runs_dir={runs_dir}", "--run", "tracked",
                   f"reward={tiny_rm}", "report_to=[tensorboard,mlflow]") == 0
    folder = runs_dir / "tracked" / "ppo"
    history = json.loads((folder / "logs" / "history.json").read_text())
    runs = _mlflow_runs(runs_dir / "mlruns")
    assert len(runs) == 1
    run = runs[0]
    for name in ("reward", "kl", "policy_loss", "value_loss", "entropy"):
        lines = (run / "metrics" / name).read_text().split("\n")
        logged = [line.split() for line in lines if line.strip()]  # "<timestamp> <value> <step>" per step
        assert [int(step) for _, _, step in logged] == [h["step"] for h in history], name
        assert [float(value) for _, value, _ in logged] == pytest.approx([h[name] for h in history]), name
    assert (run / "params" / "kl_coef").read_text() == "0.05" and (run / "params" / "ppo_epochs").read_text() == "2"
    manifest = json.loads((run / "artifacts" / "manifest.json").read_text())  # the driver closed the run
    assert manifest["stage"] == "ppo" and (run / "tags" / "align.status").read_text() == manifest["status"]
    events = list(folder.rglob("events.out.tfevents*"))
    assert events, "tensorboard was asked for too"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"ppo/reward", "ppo/kl"} <= set(tags)


def test_ppo_with_report_to_none_writes_no_tracker_logs(runs_dir, tiny_sft, tiny_rm, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert run_cli("ppo", "--config", "tiny", "--from", tiny_sft, f"runs_dir={runs_dir}", "--run", "quiet",
                   f"reward={tiny_rm}", "report_to=none", "ppo_epochs=1", "max_steps=1") == 0
    folder = runs_dir / "quiet" / "ppo"
    assert json.loads((folder / "manifest.json").read_text())["metrics"]["steps"] == 1
    assert not list(folder.rglob("events.out.tfevents*")), "report_to=none must write no TensorBoard events"
    assert not (runs_dir / "mlruns").exists()
