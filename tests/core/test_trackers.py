"""The recipe's `report_to`: passed to every TRL config, `none` works, an unknown name is refused (exit 2), and
MLflow's local file store gets the metrics, params, the gate's figures and the manifest."""

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
