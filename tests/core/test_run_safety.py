"""No good model is lost and nothing is built silently on an unchecked one: a gate-failed re-run lands beside the
promoted model and exits 2; an ungated model is marked so and a gated stage needs --allow-ungated to build on it;
a resume (by hand, or the pipeline's own) is refused when the settings changed since the stage started, unless
--resume-changed, which the manifest records with both values. The kill is real: a stage process, SIGKILLed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import align_process, kill_after_first_checkpoint, run_cli

# A gate of one cheap check (CrowS-Pairs likelihoods: no generation, no toxicity scorer) on 6 pairs.
GATE = ["gate.enabled=true", "gate.benchmarks=[crows_pairs]", "gate.crows_pairs=6"]
IMPOSSIBLE = "gate.limits.crows_pairs_stereotype_share.max=-1"  # a limit no model meets


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_gate_failed_rerun_keeps_the_promoted_model_and_exits_2(tmp_path, tiny_model_dir, capsys):
    runs = tmp_path / "runs"
    command = ["sft", "--config", "tiny", f"runs_dir={runs}", "--run", "r", "max_steps=2", *GATE]
    assert run_cli(*command) == 0
    promoted = _manifest(runs / "r" / "sft")
    assert promoted["status"] == "promoted" and promoted["gate"]["verdict"] == "pass"
    capsys.readouterr()

    assert run_cli(*command, IMPOSSIBLE) == 2  # the CLI promise: a failed gate is exit code 2, so `sft && dpo` stops
    err = capsys.readouterr().err
    [line] = _error_lines(err)
    assert "sft failed its gate (crows_pairs.stereotype_share)" in line and "sft.gate_failed" in line
    assert "Traceback" not in err
    assert _manifest(runs / "r" / "sft") == promoted  # the good model is untouched
    failed = _manifest(runs / "r" / "sft.gate_failed")
    assert failed["status"] == "gate_failed" and failed["gate"]["verdict"] == "fail"
    assert not (runs / "r" / ".work").exists()

    # The next stage still finds the promoted model by default; the gate-failed one is refused by name.
    from align.runs import latest_promoted

    assert latest_promoted(runs, "sft") == runs / "r" / "sft"
    assert run_cli("dpo", "--config", "tiny", f"runs_dir={runs}", "--from", runs / "r" / "sft.gate_failed") == 2
    assert "failed its gate" in _error_lines(capsys.readouterr().err)[0]


def test_a_stage_folder_left_empty_by_a_failed_gate_names_the_folder_beside_it(tmp_path, tiny_model_dir, capsys):
    runs = tmp_path / "runs"
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs}", "--run", "r", "max_steps=1", *GATE, IMPOSSIBLE) == 2
    assert not (runs / "r" / "sft").exists() and (runs / "r" / "sft.gate_failed").is_dir()
    capsys.readouterr()
    assert run_cli("dpo", "--config", "tiny", f"runs_dir={runs}", "--from", runs / "r" / "sft") == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "holds no promoted model" in line and "sft.gate_failed" in line


def test_an_ungated_model_is_marked_and_a_gated_stage_needs_allow_ungated(tiny_sft, tmp_path, capsys):
    parent = _manifest(tiny_sft)
    assert parent["status"] == "ungated" and parent["gate"] is None  # the tiny recipe turns the gate off
    runs = tmp_path / "runs"
    dpo = ["dpo", "--config", "tiny", f"runs_dir={runs}", "--from", tiny_sft, "--run", "d", "max_steps=1", *GATE]
    assert run_cli(*dpo) == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "never gated" in line and "--allow-ungated" in line
    assert not runs.exists()  # refused before anything was written

    assert run_cli(*dpo, "--allow-ungated") == 0
    child = _manifest(runs / "d" / "dpo")
    assert child["status"] == "promoted" and child["gate"]["verdict"] == "pass"
    assert child["parent"]["status"] == "ungated" and child["parent"]["allow_ungated"] is True


def _sft_process(runs: Path, *extra: str) -> subprocess.Popen:
    return align_process("sft", "--config", "tiny", f"runs_dir={runs}", "--run", "tiny", "max_steps=40",
                         "save_steps=2", *extra)


def test_resume_after_a_real_kill_refuses_changed_settings_unless_told(tmp_path, tiny_model_dir, capsys):
    runs = tmp_path / "runs"
    work = runs / "tiny" / ".work" / "sft"
    kill_after_first_checkpoint(_sft_process(runs, "lr=0.003"), work / "checkpoints")
    started = json.loads((work / "started.json").read_text())
    assert started["inputs"]["section"]["lr"] == pytest.approx(0.003)

    # The pipeline's automatic resume of the interrupted stage, with another lr: refused, the keys named.
    pipeline = ["pipeline", "--config", "tiny", f"runs_dir={runs}", "pipeline.stages=[sft]", "pipeline.eval_final=false",
                "sft.max_steps=40", "sft.save_steps=2"]
    assert run_cli(*pipeline, "sft.lr=0.001") == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "started with other settings (sft.lr 0.003 -> 0.001)" in line and "--resume-changed" in line
    # By hand, likewise; the interrupted work is kept for a proper resume.
    sft = ["sft", "--config", "tiny", f"runs_dir={runs}", "--run", "tiny", "max_steps=40", "save_steps=2"]
    assert run_cli(*sft, "lr=0.001", "max_steps=41", "--resume") == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "sft.lr 0.003 -> 0.001" in line and "sft.max_steps 40 -> 41" in line
    checkpoint = Path(max(work.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])))
    assert checkpoint.is_dir()

    assert run_cli(*sft, "lr=0.001", "--resume-changed") == 0
    manifest = _manifest(runs / "tiny" / "sft")
    assert manifest["resumed"]["checkpoint"] == str(checkpoint)
    assert manifest["resumed"]["changed"] == {"sft.lr": {"started": pytest.approx(0.003),
                                                         "resumed": pytest.approx(0.001)}}
    assert manifest["metrics"]["steps"] == 40


def test_a_resume_with_the_same_settings_is_marked_in_the_manifest(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    kill_after_first_checkpoint(_sft_process(runs), runs / "tiny" / ".work" / "sft" / "checkpoints")
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs}", "--run", "tiny", "max_steps=40", "save_steps=2",
                   "--resume") == 0
    manifest = _manifest(runs / "tiny" / "sft")
    assert manifest["resumed"]["changed"] == {} and manifest["resumed"]["checkpoint"]
    assert run_cli("sft", "--config", "tiny", f"runs_dir={runs}", "--run", "tiny", "max_steps=2") == 0
    assert _manifest(runs / "tiny" / "sft")["resumed"] is None  # a run from the start


def _pairs_file(path: Path, bad_rows: set[int], rows: int = 20) -> Path:
    """Preference rows; a file's every 10th row is its held-out split. A bad row has identical replies."""
    lines = []
    for number in range(1, rows + 1):
        chosen = f"A kind answer number {number}."
        rejected = chosen if number in bad_rows else f"A rude answer number {number}."
        lines.append(json.dumps({"prompt": [{"role": "user", "content": f"Question {number}?"}],
                                 "chosen": [{"role": "assistant", "content": chosen}],
                                 "rejected": [{"role": "assistant", "content": rejected}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ppo_held_out_pairs_are_an_error_or_a_counted_drop_never_a_silent_skip(tiny_sft, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert run_cli("rm", "--config", "tiny", "--from", tiny_sft, f"runs_dir={runs}", "--run", "r", "max_steps=2") == 0
    ppo = ["ppo", "--config", "tiny", "--from", tiny_sft, f"runs_dir={runs}", "--run", "p", f"reward={runs / 'r' / 'rm'}",
           "max_steps=1"]
    capsys.readouterr()
    every_held_out_pair_bad = _pairs_file(tmp_path / "bad.jsonl", {10, 20})
    assert run_cli(*ppo, f"eval_data={every_held_out_pair_bad}") == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert str(every_held_out_pair_bad) in line and "no usable preference rows" in line
    assert not (runs / "p").exists()

    one_bad = _pairs_file(tmp_path / "one-bad.jsonl", {10})
    assert run_cli(*ppo, f"eval_data={one_bad}") == 0
    manifest = _manifest(runs / "p" / "ppo")
    assert manifest["metrics"]["eval_rows"] == 1 and manifest["metrics"]["dropped_rows"] == 1
    assert "win_rate_vs_parent" in manifest["metrics"]  # the comparison ran on the good pair
    assert "row 10" in (runs / "p" / "ppo" / "dropped_rows.txt").read_text()
