"""run_gate end to end on the tiny model with tiny sample sizes and a real (small, locally built) scorer."""

from __future__ import annotations

import json

import pytest

from align.gates.policy import GateOptions, as_options, fingerprint
from align.gates.runner import run_gate
from tests.helpers import run_cli

TINY_SIZES = dict(toxicity_prompts=9, samples_per_prompt=2, max_new_tokens=6, crows_pairs=12, bbq=12,
                  bold_prompts_per_group=1, bold_domains=["gender", "religious_ideology"], n_resamples=200)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Parent measurements are cached under ALIGN_CACHE: keep them out of the user's cache."""
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))


def test_gate_measures_judges_and_writes_both_reports(tmp_path, tiny_model_dir, small_scorer):
    options = GateOptions(scorer=small_scorer, **TINY_SIZES)
    gate = run_gate(str(tiny_model_dir), options, stage="sft", out_dir=tmp_path / "child",
                    parent_source=str(tiny_model_dir), parent_gate=None, progress=False)
    assert gate["error"] is None
    assert gate["verdict"] in ("pass", "fail") and gate["override"] is None
    names = {c["name"] for c in gate["checks"]}
    assert {"toxicity.expected_max", "toxicity.probability", "toxicity.mean.toxicity", "crows_pairs.stereotype_share",
            "bbq.ambiguous_bias", "bbq.disambiguated_accuracy", "bold.sentiment_gap", "bold.toxicity_gap"} <= names
    for check in gate["checks"]:
        assert set(check) >= {"name", "value", "ci95", "parent", "max", "min", "max_increase", "max_decrease", "passed"}
        # The parent is the same model measured the same way: every figure equals its parent's, and the paired
        # difference is exactly 0 with a zero-width interval (same units, same sampling seeds).
        assert check["parent"] == pytest.approx(check["value"])
        if check["value"] is not None:
            assert check["difference"] == 0.0 and check["difference_ci95"] == [0.0, 0.0], check
        if check["max_increase"] is not None or check["max_decrease"] is not None:
            # shown within any margin: only an absolute limit (the tiny model's own values) can fail it
            assert check["rule"] == "non_inferiority" and "margin" not in (check["reason"] or ""), check
    tox = next(c for c in gate["checks"] if c["name"] == "toxicity.expected_max")
    assert 0.0 <= tox["ci95"][0] <= tox["value"] <= tox["ci95"][1] <= 1.0
    assert gate["figures"]["parent_from"] == "measured"
    # 12 CrowS-Pairs pairs cannot see a 0.05 rise: the gate says so up front, with the pairs it would need.
    crows = next(c for c in gate["checks"] if c["name"] == "crows_pairs.stereotype_share")
    warning = next(w for w in gate["figures"]["power_warnings"] if w.startswith("crows_pairs.stereotype_share"))
    assert "it needs about" in warning and "gate.crows_pairs" in warning and crows["planned_mde"] > 0.05
    assert gate["verdict"] == ("pass" if all(c["passed"] for c in gate["checks"]) else "fail")

    report = json.loads((tmp_path / "child" / "gate_report.json").read_text())
    assert report["gate"]["checks"] == gate["checks"]
    assert report["parent"]["metrics"]["crows_pairs.stereotype_share"]["value"] == pytest.approx(
        next(c["value"] for c in gate["checks"] if c["name"] == "crows_pairs.stereotype_share"))
    assert len(report["most_toxic_replies"]) == 5
    page = (tmp_path / "child" / "gate_report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6 and "toxicity.expected_max" in page  # + the forest plot
    assert "non-inferiority: passes only when" in page and "+0.000 [0.000, 0.000]" in page
    from align.card import gate_table

    card = gate_table(gate)
    assert "| toxicity.expected_max |" in card and "+0.0000 [0, 0]" in card and "non_inferiority" in card

    # A second gate reuses the parent's figures from its manifest (and its per-unit values from the gate_items.json
    # beside it, in the parent's folder) and records the failing check and the override.
    assert json.loads((tmp_path / "child" / "gate_items.json").read_text())["items"]["toxicity"]["ids"]
    strict = as_options({**TINY_SIZES, "scorer": small_scorer,
                         "limits": {"crows_pairs_stereotype_share": {"max": -1.0}}})
    second = run_gate(str(tiny_model_dir), strict, stage="dpo", out_dir=tmp_path / "second",
                      parent_source=str(tmp_path / "child"), parent_gate=gate, progress=False,
                      override_reason="testing the override")
    assert second["figures"]["parent_from"] == "manifest"
    assert all(c["difference"] == 0.0 for c in second["checks"] if c["value"] is not None)
    assert second["verdict"] == "fail" and second["override"] == "testing the override"
    failed = {c["name"]: c for c in second["checks"] if not c["passed"]}
    assert "> max -1.0" in failed["crows_pairs.stereotype_share"]["reason"]
    first_results = {c["name"]: c["passed"] for c in gate["checks"]}
    # Only the tightened limit changed: every other check keeps its result (the figures are the same).
    assert all(first_results[name] == c["passed"] for name, c in
               ((c["name"], c) for c in second["checks"]) if name != "crows_pairs.stereotype_share")


def test_a_scorer_error_fails_the_gate_and_still_writes_the_report(tmp_path, tiny_model_dir):
    options = GateOptions(scorer=str(tmp_path / "no-such-scorer.ckpt"), **TINY_SIZES)
    gate = run_gate(str(tiny_model_dir), options, stage="sft", out_dir=tmp_path / "out", parent_source=None,
                    parent_gate=None, progress=False)
    assert gate["verdict"] == "fail"
    assert "no-such-scorer.ckpt" in gate["error"] and gate["error"].startswith("ModelError")
    report = json.loads((tmp_path / "out" / "gate_report.json").read_text())
    assert report["gate"]["verdict"] == "fail" and "ModelError" in report["error_trace"]
    assert "fails closed" in (tmp_path / "out" / "gate_report.html").read_text()


def test_a_model_error_fails_the_gate(tmp_path):
    options = GateOptions(scorer="none", benchmarks=["crows_pairs"], crows_pairs=4)
    gate = run_gate(str(tmp_path / "missing-model"), options, stage="sft", out_dir=tmp_path / "out", progress=False)
    assert gate["verdict"] == "fail" and "not found" in gate["error"]
    assert (tmp_path / "out" / "gate_report.html").is_file()


def test_gate_command_compares_with_a_baseline(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "reports"
    code = run_cli("gate", "--model", tiny_model_dir, "--baseline", tiny_model_dir, "--out", out, "--no-progress",
                   "gate.scorer=none", "gate.benchmarks=[crows_pairs,bbq]", "crows_pairs=8", "bbq=8",
                   "gate.n_resamples=100")
    printed = capsys.readouterr().out
    gate = json.loads((out / "gate_report.json").read_text())["gate"]
    assert code == (0 if gate["verdict"] == "pass" else 1)
    assert "crows_pairs.stereotype_share" in printed and "bbq.ambiguous_bias" in printed
    assert all(c["parent"] == pytest.approx(c["value"]) for c in gate["checks"])
    assert run_cli("gate", "--model", tmp_path / "nothing-here", "--out", out) == 2  # usage error, one line


def test_target_mde_chooses_the_size_the_child_and_parent_are_measured_and_paired_at(tmp_path, tiny_model_dir):
    """No parent measurement at hand: the conservative bound sizes CrowS-Pairs (values in [0, 1], no correlation:
    MDE 1.98 / √n, so 11 pairs for 0.6); both are measured at 11 pairs and the manifest records it."""
    options = as_options({"scorer": "none", "benchmarks": ["crows_pairs"], "crows_pairs": 4, "n_resamples": 100,
                          "target_mde": 0.6})
    gate = run_gate(str(tiny_model_dir), options, stage="sft", out_dir=tmp_path / "child",
                    parent_source=str(tiny_model_dir), parent_gate=None, progress=False)
    assert gate["error"] is None and gate["figures"]["parent_from"] == "measured"
    assert gate["figures"]["sizes"]["crows_pairs"] == 11
    plan = gate["figures"]["size_plan"]
    assert plan["sizes"] == {"crows_pairs": 11} and "conservative bound" in plan["notes"][0]
    crows = next(c for c in gate["checks"] if c["name"] == "crows_pairs.stereotype_share")
    assert crows["paired_units"] == 11 and crows["planned_mde"] <= 0.6 and crows["difference"] == 0.0
    items = json.loads((tmp_path / "child" / "gate_items.json").read_text())
    assert len(items["items"]["crows_pairs"]["ids"]) == 11
    assert items["fingerprint"] == gate["figures"]["fingerprint"] != fingerprint(options)
    report = json.loads((tmp_path / "child" / "gate_report.json").read_text())
    assert report["options"]["crows_pairs"] == 11 and report["gate"]["figures"]["size_plan"] == plan
    assert "size chosen by target_mde: gate.crows_pairs=11" in (tmp_path / "child" / "gate_report.html").read_text()
    # The next gate plans from this one's per-unit values (its manifest, at the sizes it recorded): 11 pairs reach
    # the target on the parent's variance, so it keeps them and pairs with the parent's manifest as it is.
    second = run_gate(str(tiny_model_dir), options, stage="dpo", out_dir=tmp_path / "second",
                      parent_source=str(tmp_path / "child"), parent_gate=gate, progress=False)
    assert second["error"] is None and second["figures"]["parent_from"] == "manifest"
    note = second["figures"]["size_plan"]["notes"][0]
    assert "parent's per-unit variance" in note and "gate.crows_pairs=11" in note
    crows = next(c for c in second["checks"] if c["name"] == "crows_pairs.stereotype_share")
    assert crows["paired_units"] == 11 and crows["difference"] == 0.0
