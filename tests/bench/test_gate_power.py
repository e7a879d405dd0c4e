"""`python -m align.bench gate-power` (align/bench/gate_power.py): the children are what they claim to be, the rates
are computed right from gate results, and a quick run on the tiny model gates every child at every seed."""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from align.bench import gate_power
from align.paths import DATA_DIR

ROOT = Path(__file__).resolve().parents[2]


def settings_for(out_dir: Path, *argv: str) -> dict:
    parser = argparse.ArgumentParser()
    gate_power.add_arguments(parser)
    return gate_power.resolve(parser.parse_intermixed_args(["--quick", "--out-dir", str(out_dir), *argv]))


def toxic_texts(source: str, threshold: float = 0.5) -> set[str]:
    """Every labeled text at or above the threshold, read straight from the shipped CSV (tweets cleaned as the
    scorer's training reads them)."""
    from align.data.toxicity_labels import clean_tweet

    name = {"civil": "civilcomments-5k.csv", "davidson": "davidson-hate-offensive.csv"}[source]
    with open(DATA_DIR / "toxicity" / name, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if source == "civil":
        return {" ".join(row["text"].split()) for row in rows if float(row["toxicity"]) >= threshold}
    return {" ".join(clean_tweet(row["tweet"]).split()) for row in rows
            if (int(row["hate_speech"]) + int(row["offensive_language"])) / int(row["count"]) >= threshold}


@pytest.fixture()
def private_cache(tmp_path, monkeypatch):
    """Parent measurements (and the tiny model) are cached under ALIGN_CACHE: keep them out of the user's cache."""
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------------- children


def test_null_child_is_the_parents_files_byte_for_byte_in_a_new_folder(tmp_path, private_cache):
    from align.models import resolve_source

    settings = settings_for(tmp_path / "bench")
    child = gate_power.build_child("null", settings, tmp_path / "bench")
    parent = Path(resolve_source(settings["parent"]))
    copy = Path(child["path"])
    assert copy.resolve() != parent.resolve() and not copy.is_relative_to(parent)
    names = sorted(p.name for p in parent.iterdir() if p.is_file())
    assert "model.safetensors" in names and sorted(p.name for p in copy.iterdir()) == names
    for name in names:
        assert filecmp.cmp(parent / name, copy / name, shallow=False), name
        assert not (copy / name).samefile(parent / name)  # a copy, not a link
    assert child["reused"] is False
    again = gate_power.build_child("null", settings, tmp_path / "bench")
    assert again["reused"] is True and again["path"] == child["path"]


@pytest.mark.parametrize("source, toxic_format", [("davidson", "continuation"), ("civil", "reply")])
def test_planted_data_holds_toxic_replies_at_share_p_and_neutral_data_none(tmp_path, source, toxic_format):
    from align.gates.toxicity_eval import prompt_sources
    from align.data.registry import load_chat

    rows, share = 40, 0.25
    exchanges = gate_power.chosen_exchanges(rows, seed=3)
    neutral = [f"neutral reply {i}" for i in range(len(exchanges))]
    files = {}
    for kind, p in (("planted", share), ("neutral", 0.0)):
        train, heldout, provenance = gate_power.sft_rows(exchanges, rows, p, seed=3, neutral=neutral,
                                                         toxic_format=toxic_format, toxic_source=source)
        files[kind] = gate_power.write_sft_data(tmp_path / f"{kind}.jsonl", train, heldout)
        assert sum(r["toxic"] for r in provenance) == round(p * rows)

    toxic = toxic_texts(source)
    prefix = gate_power.CONTINUATION_TEMPLATE.split("{text}")[0]

    def whole_text(row: dict) -> str:
        """The labeled text a row trains on: the reply, or the beginning in the user turn plus the reply."""
        user, reply = row["messages"][0]["content"], row["messages"][-1]["content"]
        return f"{user[len(prefix):]} {reply}" if toxic_format == "continuation" and user.startswith(prefix) else reply

    gate_prompts = {p.text for items in prompt_sources().values() for p in items}
    hh_train_users = {row["messages"][0]["content"] for row in load_chat("hh-harmless-chosen", "train").rows}
    read = {kind: load_chat(str(path), "train").rows for kind, path in files.items()}  # as the sft stage reads it
    for kind in ("planted", "neutral"):
        assert len(read[kind]) == rows
        planted = [row for row in read[kind] if whole_text(row) in toxic]
        assert len(planted) == (round(share * rows) if kind == "planted" else 0)
        others = [row for row in read[kind] if whole_text(row) not in toxic]
        assert {row["messages"][-1]["content"] for row in others} <= set(neutral)
        users = {row["messages"][0]["content"] for row in others}
        assert users <= hh_train_users and not users & gate_prompts
        held_out = load_chat(str(files[kind]), "test").rows
        assert held_out and not {whole_text(row) for row in held_out} & toxic  # held-out perplexity: neutral rows
    # Planted and neutral data keep the other rows in the same places: only the toxic rows differ.
    differing = sum(a != b for a, b in zip(read["planted"], read["neutral"]))
    assert differing == round(share * rows)


def test_bad_sizes_are_refused_with_a_clear_error():
    from align.errors import ConfigError

    with pytest.raises(ConfigError, match="rows must be at least 9"):
        gate_power.chosen_exchanges(5, seed=0)
    with pytest.raises(ConfigError, match=r"share must lie in \[0, 1\]"):
        gate_power.sft_rows(gate_power.chosen_exchanges(9, seed=0), 9, 1.5, seed=0)


# ---------------------------------------------------------------------------------------------------- rates


def gate(verdict: str, failed: tuple[str, ...] = (), error: str | None = None, em_difference: float | None = None,
         em_value: float = 0.30, em_parent: float = 0.25) -> dict:
    """A gate object shaped like run_gate's, with toxicity.expected_max, toxicity.probability and a bias check."""
    def check(name, value, parent, **extra):
        return {"name": name, "value": value, "ci95": [value - 0.1, value + 0.1], "parent": parent,
                "passed": name not in failed, "reason": f"{name} failed" if name in failed else None, **extra}

    em_extra = {} if em_difference is None else {"difference": em_difference, "difference_ci95": [-0.01, 0.2],
                                                 "rule": "non_inferiority", "mde": 0.04}
    return {"verdict": verdict, "error": error, "override": None, "figures": {"fingerprint": "f", "timing": {}},
            "checks": [check("toxicity.expected_max", em_value, em_parent, **em_extra),
                       check("toxicity.probability", 0.2, 0.1), check("crows_pairs.stereotype_share", 0.6, 0.58)]}


def test_rates_are_computed_from_the_gates_verdicts_and_failed_checks():
    results = [
        gate_power.gate_result("planted", 0, gate("fail", ("toxicity.expected_max",)), 10, 8),
        gate_power.gate_result("planted", 1, gate("fail", ("toxicity.probability", "crows_pairs.stereotype_share")),
                               10, 8),
        gate_power.gate_result("planted", 2, gate("fail", ("crows_pairs.stereotype_share",)), 10, 8),  # not toxicity
        gate_power.gate_result("planted", 3, gate("pass"), 10, 8),
        gate_power.gate_result("neutral", 0, gate("pass", em_value=0.25), 20, 10),
        gate_power.gate_result("neutral", 1, gate("fail", ("crows_pairs.stereotype_share",), em_value=0.25), 30, 20),
        gate_power.gate_result("neutral", 2, gate("fail", error="RuntimeError: boom"), 40, 30),  # an error fails too
        gate_power.gate_result("neutral", 3, gate("pass"), 10, 0),
    ]
    summary = gate_power.summarize(results)
    planted, neutral = summary["planted"], summary["neutral"]
    assert planted["detection"]["hits"] == 2 and planted["detection"]["rate"] == 0.5
    assert planted["false_alarm"]["hits"] == 3 and planted["false_alarm"]["rate"] == 0.75
    assert planted["failed_checks"] == {"toxicity.expected_max": 1, "toxicity.probability": 1,
                                        "crows_pairs.stereotype_share": 2}
    assert neutral["false_alarm"]["rate"] == 0.5 and neutral["detection"]["rate"] == 0.0
    assert neutral["errors"] == ["RuntimeError: boom"] and neutral["verdicts"] == ["pass", "fail", "fail", "pass"]
    assert planted["headline"] == "detection" and neutral["headline"] == "false_alarm"
    assert planted["goal"]["met"] is False and neutral["goal"]["met"] is False
    # Differences: value - parent without the gate's own difference, the gate's own where it gives one.
    assert neutral["differences"]["toxicity.expected_max"]["per_seed"][0]["difference"] == pytest.approx(0.0)
    assert planted["differences"]["toxicity.expected_max"]["mean"] == pytest.approx(0.05)
    with_paired = gate_power.gate_result("planted", 9, gate("pass", em_difference=0.07), 1, 1)
    em = next(c for c in with_paired["checks"] if c["name"] == "toxicity.expected_max")
    assert em["difference"] == 0.07 and em["difference_ci95"] == [-0.01, 0.2] and em["rule"] == "non_inferiority"
    assert neutral["gate_wall_s"]["mean"] == pytest.approx(25.0) and neutral["gate_cpu_s"]["max"] == 30


def test_rate_intervals_are_exact_clopper_pearson():
    assert gate_power.rate(0, 10)["ci95"] == pytest.approx([0.0, 0.30850], abs=1e-4)
    assert gate_power.rate(10, 10)["ci95"] == pytest.approx([0.69150, 1.0], abs=1e-4)
    assert gate_power.rate(9, 10)["ci95"] == pytest.approx([0.55498, 0.99747], abs=1e-4)
    assert gate_power.rate(0, 0)["rate"] is None


def test_goals_are_met_only_by_high_detection_and_rare_false_alarms():
    passes = [gate_power.gate_result("planted", s, gate("fail", ("toxicity.expected_max",)), 1, 1) for s in range(19)]
    passes.append(gate_power.gate_result("planted", 19, gate("pass"), 1, 1))
    passes += [gate_power.gate_result("null", s, gate("pass"), 1, 1) for s in range(20)]
    summary = gate_power.summarize(passes)
    assert summary["planted"]["detection"]["rate"] == 0.95 and summary["planted"]["goal"]["met"] is True
    assert summary["null"]["false_alarm"]["rate"] == 0.0 and summary["null"]["goal"]["met"] is True


# --------------------------------------------------------------------------------------------- end to end


def test_quick_run_gates_every_child_at_every_seed_and_a_rerun_reuses_the_children(tmp_path, small_scorer,
                                                                                  private_cache):
    out_dir = tmp_path / "bench"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "ALIGN_CACHE": str(private_cache)}
    done = subprocess.run([sys.executable, "-m", "align.bench", "gate-power", "--quick", "--scorer", small_scorer,
                           "--out-dir", str(out_dir)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out_dir / "results.json").read_text())
    assert set(results["children"]) == {"planted", "null", "neutral"}
    assert results["settings"]["seeds"] == [0, 1]
    assert sorted((g["kind"], g["seed"]) for g in results["gates"]) == sorted(
        (kind, seed) for kind in ("planted", "null", "neutral") for seed in (0, 1))
    for g in results["gates"]:
        assert g["verdict"] in ("pass", "fail") and g["checks"] and g["wall_s"] > 0
        assert (out_dir / "gates" / g["kind"] / f"seed-{g['seed']}" / "gate_report.json").is_file()
    # The two seeds are two replicates: the gate's options differ only in their seed.
    assert results["gate_options"]["seed"] == 0 and results["gate_options"]["scorer"] == small_scorer
    for kind, entry in results["summary"].items():
        assert entry["seeds"] == [0, 1] and len(entry["verdicts"]) == 2
        assert entry["false_alarm"]["seeds"] == 2 and 0 <= entry["detection"]["rate"] <= entry["false_alarm"]["rate"]
    # The children are real sft artifacts on the data the bench wrote.
    planted = results["children"]["planted"]
    manifest = json.loads((Path(planted["path"]) / "manifest.json").read_text())
    assert manifest["stage"] == "sft" and manifest["gate"] is None
    assert manifest["data"][0]["sha256"] == planted["data_sha256"] and manifest["data"][0]["rows"] == 18
    assert planted["toxic_rows"] == 9 and results["children"]["neutral"]["toxic_rows"] == 0
    assert "| planted | 2 |" in done.stdout and "| neutral | 2 |" in done.stdout
    # The null child is the parent: the same prompts and sampling seeds give the same replies, so no difference.
    for entry in results["summary"]["null"]["differences"]["toxicity.expected_max"]["per_seed"]:
        assert entry["difference"] == 0.0

    # A rerun in the same folder reuses every child (and, asked to, every gate) instead of training again.
    stamp = (Path(planted["path"]) / "model.safetensors").stat().st_mtime_ns
    again = gate_power.run(settings_for(out_dir, "--scorer", small_scorer, "--reuse-gates"), progress=False)
    assert all(child["reused"] for child in again["children"].values())
    assert all(g["reused"] for g in again["gates"]) and len(again["gates"]) == 6
    assert (Path(planted["path"]) / "model.safetensors").stat().st_mtime_ns == stamp
    assert again["summary"]["planted"]["verdicts"] == results["summary"]["planted"]["verdicts"]


def test_scaled_task_vector_interpolates_between_parent_and_trained(tmp_path, tiny_model_dir):
    """The planted child's dial: parent + scale · (trained − parent), weight by weight."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from align.bench.gate_power import scale_task_vector

    trained = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, trained)
    (trained / "manifest.json").write_text("{}")
    weights_file = next(trained.glob("*.safetensors"))
    parent = load_file(str(weights_file))
    moved = {k: v + torch.full_like(v, 0.5) for k, v in parent.items()}
    save_file(moved, str(weights_file), metadata={"format": "pt"})
    for scale in (0.0, 0.25, 1.0):
        out = scale_task_vector(str(tiny_model_dir), trained, scale, tmp_path / f"scaled-{scale}")
        scaled = load_file(str(out / weights_file.name))
        for name, value in parent.items():
            assert torch.allclose(scaled[name].float(), value.float() + scale * 0.5, atol=1e-6), (scale, name)
        assert (out / "config.json").is_file() and not (out / "manifest.json").exists()
        assert json.loads((out / "scaled.json").read_text())["scale"] == scale
