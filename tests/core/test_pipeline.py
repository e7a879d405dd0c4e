"""The whole pipeline on the tiny recipe — every stage and gate — and what re-running it does."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli

STEPS = ["sft.max_steps=3", "rm.max_steps=3", "dpo.max_steps=3"]


def _manifest(run_dir, stage) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))


def test_pipeline_runs_every_stage_with_gates_then_resumes(tmp_path, small_scorer, tiny_model_dir, capsys):
    runs = tmp_path / "runs"
    command = ["pipeline", "--config", "tiny", f"runs_dir={runs}", "gate.enabled=true", f"gate.scorer={small_scorer}",
               *STEPS]
    assert run_cli(*command) == 0
    run_dir = runs / "tiny"
    manifests = {stage: _manifest(run_dir, stage) for stage in ("sft", "rm", "dpo")}
    assert all(m["status"] in ("promoted", "overridden", "gate_failed") for m in manifests.values())
    assert manifests["sft"]["gate"]["checks"] and manifests["dpo"]["gate"]["checks"]  # gated
    assert manifests["rm"]["gate"] is None  # a reward model generates nothing to gate
    assert manifests["rm"]["parent"]["path"] == str(run_dir / "sft")
    assert manifests["dpo"]["parent"]["path"] == str(run_dir / "sft")
    assert (run_dir / "sft" / "gate_report.html").is_file()
    report = (run_dir / "report.html").read_text()
    assert "Training curves" in report and "<td>dpo</td>" in report
    out = capsys.readouterr().out
    assert "[3/3] dpo" in out and "align pipeline" in out
    # The summary table shows each key metric whole, one per line, even when the output is not a terminal.
    assert "perplexity_after=" in out and "pref_acc_implicit_child=" in out and "win_rate_vs_parent=" in out
    # The final model against the base model, judged by the run's rm, with intervals that hold the figures.
    final = json.loads((run_dir / "final_vs_base.json").read_text())
    assert final["final"] == "dpo" and final["prompts"] > 0
    assert final["win_rate_ci95"][0] <= final["win_rate"] <= final["win_rate_ci95"][1]
    gain = final["rm_reward_final"] - final["rm_reward_base"]
    assert final["rm_reward_gain_ci95"][0] - 1e-3 <= gain <= final["rm_reward_gain_ci95"][1] + 1e-3
    assert "vs base" in out and "win rate" in report

    # The same command again: every finished stage is skipped, nothing is retrained.
    assert run_cli(*command) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier with the same inputs — skipped") == 3
    assert "judging the final model" not in out  # the comparison of unchanged models is reused
    for stage, manifest in manifests.items():
        assert _manifest(run_dir, stage)["finished_at"] == manifest["finished_at"]

    # A changed DPO setting reruns DPO only.
    assert run_cli(*command, "dpo.beta=0.3") == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier with the same inputs — skipped") == 2
    assert _manifest(run_dir, "sft")["finished_at"] == manifests["sft"]["finished_at"]
    assert _manifest(run_dir, "dpo")["config"]["dpo"]["beta"] == pytest.approx(0.3)


def test_failed_gate_stops_the_pipeline_and_override_is_recorded(tmp_path, small_scorer, tiny_model_dir, capsys):
    runs = tmp_path / "runs"
    # A limit no model meets: CrowS-Pairs stereotype share at most -1.
    command = ["pipeline", "--config", "tiny", f"runs_dir={runs}", "gate.enabled=true", f"gate.scorer={small_scorer}",
               "gate.limits.crows_pairs_stereotype_share.max=-1", *STEPS]
    assert run_cli(*command) == 2
    err = capsys.readouterr().err
    assert "failed its gate" in err and "crows_pairs.stereotype_share" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1 and "Traceback" not in err
    run_dir = runs / "tiny"
    assert _manifest(run_dir, "sft.gate_failed")["status"] == "gate_failed"  # beside, never in the stage folder
    assert not (run_dir / "sft").exists() and not (run_dir / "rm").exists()

    assert run_cli(*command, "--override-gate", "bias limit under review") == 0
    for stage in ("sft", "dpo"):
        manifest = _manifest(run_dir, stage)
        assert manifest["status"] == "overridden"
        assert manifest["gate"]["override"] == "bias limit under review"
        assert "bias limit under review" in (run_dir / stage / "README.md").read_text()
