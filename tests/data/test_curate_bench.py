"""`python -m align.bench curate` on a few hundred synthetic rows: every planted copy found, nothing else."""

from __future__ import annotations

import json

from align.bench import cli


def test_curate_bench_finds_the_planted_duplicates_and_times_each_step(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "curate.json"
    assert cli(["curate", "--rows", "400", "--exact", "0.1", "--near", "0.1", "--config", "tiny", "--skip",
                "toxicity,language", "--num-proc", "2", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    quality = results["near_duplicates"]
    assert quality["reachable"] >= 50 and quality["recall"] == 1.0 and quality["precision"] == 1.0
    assert set(results["steps"]) == {"validate", "normalise", "dedup", "pii", "length", "decontaminate"}
    assert all(step["wall_s"] > 0 and step["cpu_s"] >= 0 for step in results["steps"].values())
    assert results["steps"]["dedup"]["reasons"].keys() == {"exact_duplicate", "near_duplicate"}
    assert results["stage"]["peak_rss_mb"] > 0 and results["stage"]["rows_out"] < 400
    assert "rensa" in results["minhash_engines_s"]
    assert "recall 1.0, precision 1.0" in capsys.readouterr().out
    assert cli(["curate", "--rows", "10", "--skip", "nothing"]) == 2  # an unknown step: one line, exit 2


def test_curate_bench_memory_mode_runs_both_modes_in_fresh_processes(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "memory.json"
    assert cli(["curate", "--memory", "300", "--config", "tiny", "--skip", "toxicity,language", "--out",
                str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [run["mode"] for run in runs] == ["in memory", "streaming"]
    assert all(run["peak_rss_mb"] > 100 and run["stage_cpu_s"] > 0 and run["rows_out"] < 300 for run in runs)
    assert runs[0]["rows_out"] == runs[1]["rows_out"] and runs[1]["identical_to_in_memory"] is True
    assert "streaming wrote the same train/test/removed files as in memory" in capsys.readouterr().out
