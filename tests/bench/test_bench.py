"""`python -m align.bench --quick` end to end: every part measured, the JSON self-consistent (ratio, FLOPs, MFU).
No timing is asserted: the figures depend on the machine and its load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory, small_scorer):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "align.bench", "--quick", "--scorer", small_scorer, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_every_training_stage_has_both_sides_with_positive_throughput(quick_bench):
    results, _ = quick_bench
    assert set(results["stages"]) == {"sft", "rm", "dpo", "kto", "grpo", "rloo"}
    for stage, entry in results["stages"].items():
        for side in ("align", "trl"):
            r = entry[side]
            assert r["tokens"] > 0 and r["train_s"] > 0 and r["tokens_per_s"] > 0, (stage, side)
            assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["train_s"])
            assert r["steps"] == results["settings"]["steps"] == 3
            assert r["peak_rss_mb"] > 0 and r["parameters"] > 0
        assert entry["ratio"] == pytest.approx(entry["align"]["tokens_per_s"] / entry["trl"]["tokens_per_s"])
        # Both sides ran the same workload; only align's settings differ from TRL's defaults.
        align_ran, trl_ran = entry["align"]["ran"], entry["trl"]["ran"]
        for key in ("batch_size", "gradient_accumulation_steps", "max_length"):
            assert align_ran[key] == trl_ran[key]
        assert trl_ran["gradient_checkpointing"] and not align_ran["gradient_checkpointing"]
        assert trl_ran["align_speedups"] == []
        if stage in ("grpo", "rloo"):  # TRL's sampler repeats each prompt num_generations times: kept
            assert "length-grouped batches" not in align_ran["align_speedups"]
            assert align_ran["settings"]["num_generations"] == trl_ran["settings"]["num_generations"]
        elif stage == "kto":  # KTO's KL term pairs rows with their batch neighbours: TRL's order is kept
            assert "length-grouped batches" not in align_ran["align_speedups"]
            assert "LM head on labelled positions only" in align_ran["align_speedups"]
        else:
            assert "length-grouped batches" in align_ran["align_speedups"]


def test_mfu_is_achieved_flops_over_the_measured_peak(quick_bench):
    results, _ = quick_bench
    peaks = results["peak_flops"]
    assert peaks["float32"] > 0 and peaks["bfloat16"] > 0
    for stage, entry in results["stages"].items():
        for side in ("align", "trl"):
            r = entry[side]
            assert r["flops_per_token"] == {"dpo": 8, "kto": 12, "grpo": 8, "rloo": 8}.get(stage, 6) * r["parameters"]
            assert r["achieved_flops"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"])
            assert r["mfu"] == pytest.approx(r["achieved_flops"] / peaks[r["mfu_dtype"]])
            assert r["mfu"] > 0


def test_gate_and_label_store_are_timed(quick_bench):
    results, stdout = quick_bench
    gate, store = results["gate"], results["store"]
    assert gate["replies"] > 0 and gate["replies_per_s"] > 0 and gate["texts_per_s"] > 0
    assert store["submits"] == 40 and 0 < store["p50_ms"] <= store["p95_ms"] <= store["max_ms"]
    assert "| stage | side | tokens/s |" in stdout and "label store submit" in stdout
    assert results["machine"]["torch_threads"] == 1
