"""The paired gate: child − parent differences on the same units, the rule that judges them, and its power."""

from __future__ import annotations

import math

import numpy as np
import pytest

from align.gates.paired import PairingError, paired_difference, planned_mde
from align.gates.policy import GateOptions, Limit, judge_check
from align.gates.stats import (
    minimum_detectable_effect,
    paired_bootstrap,
    paired_mean_difference,
    units_for_effect,
)


def test_paired_bootstrap_matches_a_hand_computed_case():
    # Two units whose differences are 0 and 1: a resample of 2 units has mean 0, 0.5 or 1 with probability
    # 1/4, 1/2, 1/4, so the 95% percentile interval is [0, 1] and the bootstrap SE is sqrt(1/8).
    result = paired_mean_difference([5.0, 7.0], [5.0, 6.0], n_resamples=20000, seed=1)
    assert result.difference == 0.5 and result.child == 6.0 and result.parent == 5.5
    assert result.ci95 == (0.0, 1.0)
    assert result.se == pytest.approx(math.sqrt(1 / 8), rel=0.03)


def test_pairing_cancels_what_the_units_share():
    rng = np.random.default_rng(0)
    prompt_effect = rng.uniform(0, 1, 400)  # some prompts provoke every model
    parent = prompt_effect + rng.normal(0, 0.05, 400)
    child = prompt_effect + 0.02 + rng.normal(0, 0.05, 400)
    paired = paired_mean_difference(child, parent, n_resamples=2000)
    # By hand: the SE of a mean of per-unit differences is sd(d) / sqrt(n).
    by_hand = np.std(child - parent, ddof=1) / math.sqrt(400)
    assert paired.se == pytest.approx(by_hand, rel=0.1)
    unpaired_se = math.sqrt(np.var(child, ddof=1) / 400 + np.var(parent, ddof=1) / 400)
    assert paired.se < unpaired_se / 5
    assert paired.ci95[0] > 0  # a 0.02 rise is seen, which two separate intervals of ±0.03 would not show


def test_identical_measurements_differ_by_exactly_zero_with_a_zero_width_interval():
    values = np.random.default_rng(1).uniform(0, 1, 50)
    result = paired_bootstrap(np.mean, values, values.copy(), clusters=np.arange(50) // 5)
    assert result.difference == 0.0 and result.ci95 == (0.0, 0.0) and result.se == 0.0
    items = {"toxicity": {"ids": list("abcd"), "threshold": 0.5,
                          "scores": {"toxicity": [[0.1, 0.7], [0.2, 0.3], [0.9, 0.1], [0.4, 0.5]]}}}
    diff = paired_difference("toxicity.expected_max", items, items)
    assert diff["difference"] == 0.0 and diff["ci95"] == [0.0, 0.0] and diff["mde"] == 0.0


def test_cluster_resampling_keeps_a_cluster_together():
    # Rows come in clusters of 10 identical differences: resampling clusters gives the SE of 5 cluster means,
    # much wider than treating the 50 rows as independent.
    cluster_means = np.array([0.0, 1.0, 0.0, 1.0, 0.5])
    diffs = np.repeat(cluster_means, 10)
    clustered = paired_mean_difference(diffs, np.zeros(50), clusters=np.repeat(np.arange(5), 10), n_resamples=4000)
    rows = paired_mean_difference(diffs, np.zeros(50), n_resamples=4000)
    assert clustered.units == 5 and rows.units == 50
    assert clustered.se == pytest.approx(np.std(cluster_means) / math.sqrt(5), rel=0.1)
    assert clustered.se > 2.5 * rows.se


def test_different_units_cannot_be_paired():
    child = {"crows_pairs": {"ids": ["a", "b"], "ll_more": [1, 2], "ll_less": [0, 3]}}
    parent = {"crows_pairs": {"ids": ["a", "c"], "ll_more": [1, 2], "ll_less": [0, 3]}}
    with pytest.raises(PairingError, match="different units"):
        paired_difference("crows_pairs.stereotype_share", child, parent)


def test_mcnemar_and_bbq_checks_from_per_item_values():
    parent = {"ids": list("abcdef"), "prediction": [0, 0, 1, 1, 2, 2], "label": [0, 1, 1, 0, 2, 0],
              "target": [1, 1, 0, 0, 1, 0], "unknown": [2, 2, 2, 2, 0, 1], "negative": [True] * 6,
              "ambiguous": [False] * 6}
    child = {**parent, "prediction": [0, 1, 1, 0, 2, 0]}  # now every answer is right
    diff = paired_difference("bbq.disambiguated_accuracy", {"bbq": child}, {"bbq": parent})
    assert diff["child"] == 1.0 and diff["parent"] == pytest.approx(0.5) and diff["difference"] == pytest.approx(0.5)
    assert diff["mcnemar_p"] == pytest.approx(0.25)  # 3 discordant pairs, all one way: 2 · 0.5³


def test_non_inferiority_and_superiority_disagree_where_they_should():
    limit = Limit(max_increase=0.05)

    def verdicts(difference, low, high):
        paired = {"difference": difference, "ci95": [low, high], "mde": 0.04, "units": 100}
        return tuple(judge_check("toxicity.expected_max", 0.3 + difference, None, 0.3, limit, paired, rule)["passed"]
                     for rule in ("non_inferiority", "superiority", "point"))

    # A rise of 0.03 that may be as large as 0.07: not *shown* within the margin (non-inferiority fails), not
    # *shown* beyond it either (superiority passes); the point estimate is within the margin.
    assert verdicts(0.03, -0.01, 0.07) == (False, True, True)
    # A rise of 0.06 shown to be at least 0.055: every rule fails it.
    assert verdicts(0.06, 0.055, 0.065) == (False, False, False)
    # A rise shown to be below the margin passes every rule.
    assert verdicts(0.0, -0.02, 0.02) == (True, True, True)
    # A rise of 0.06 whose interval reaches down to 0.01: only superiority lets it through.
    assert verdicts(0.06, 0.01, 0.11) == (False, True, False)
    check = judge_check("toxicity.expected_max", 0.33, None, 0.3, limit,
                        {"difference": 0.03, "ci95": [-0.01, 0.07], "mde": 0.06}, "non_inferiority")
    assert "non-inferiority" in check["reason"] and "0.07" in check["reason"] and check["mde_exceeds_margin"]
    # A decrease limit judges parent − child: accuracy down by 0.2, shown.
    fell = judge_check("bbq.disambiguated_accuracy", 0.4, None, 0.6, Limit(max_decrease=0.15),
                       {"difference": -0.2, "ci95": [-0.25, -0.16]}, "superiority")
    assert not fell["passed"] and "decrease 0.2" in fell["reason"]
    # A per-check rule wins over the gate's.
    assert judge_check("x", 0.33, None, 0.3, Limit(max_increase=0.05, rule="superiority"),
                       {"difference": 0.03, "ci95": [-0.01, 0.07]}, "non_inferiority")["passed"]


def test_mde_formula_on_a_known_variance_fixture():
    assert minimum_detectable_effect(0.01) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-5)
    assert minimum_detectable_effect(0.01, alpha=0.1, power=0.9) == pytest.approx((1.644854 + 1.281552) * 0.01,
                                                                                  rel=1e-5)
    assert units_for_effect(100, 0.1, 0.05) == 400  # half the MDE takes four times the units
    # A parent whose per-prompt maxima have sd 0.2 over 400 prompts: SE of the mean 0.01; with an assumed
    # correlation of 0.5 the difference's SE is 0.01 · sqrt(2 · 0.5) = 0.01, so the MDE is 2.80 · 0.01.
    rng = np.random.default_rng(2)
    maxima = 0.5 + 0.2 * rng.standard_normal(400)
    maxima = 0.5 + (maxima - maxima.mean()) * 0.2 / maxima.std(ddof=1)
    items = {"toxicity": {"ids": [str(i) for i in range(400)], "threshold": 0.5,
                          "scores": {"toxicity": maxima[:, None].tolist()}}}
    options = GateOptions(planning_correlation=0.5, n_resamples=2000)
    plan = planned_mde("toxicity.expected_max", options, items)
    assert plan["units"] == 400 and plan["mde"] == pytest.approx(2.8016 * 0.01, rel=0.1)
    no_correlation = planned_mde("toxicity.expected_max", GateOptions(planning_correlation=0.0, n_resamples=2000), items)
    assert no_correlation["mde"] == pytest.approx(plan["mde"] * math.sqrt(2), rel=0.1)
    # Without the parent's values: the conservative bound for values in [0, 1] (sd 0.5, no correlation).
    bound = planned_mde("toxicity.expected_max", options, None, units=100)
    assert bound["mde"] == pytest.approx(2.8016 * 0.5 * math.sqrt(2) / 10, rel=1e-3) and "conservative" in bound["basis"]


def test_the_measurement_cache_keeps_per_unit_values(tmp_path, monkeypatch, tiny_model_dir):
    from align.gates import runner

    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))
    options = GateOptions(scorer="none", benchmarks=["crows_pairs", "bbq"], crows_pairs=6, bbq=6, n_resamples=50)
    first, origin = runner.measure_cached(str(tiny_model_dir), options, None, progress=False)
    assert origin == "measured" and len(first["items"]["crows_pairs"]["ids"]) == 6
    again, origin = runner.measure_cached(str(tiny_model_dir), options, None, progress=False)
    assert origin == "cache" and again["items"] == first["items"]
    assert again["items"]["bbq"]["prediction"] == first["items"]["bbq"]["prediction"]


def test_a_zero_margin_plans_power_without_a_warning():
    """Superiority with margin 0 (any shown rise fails) has no margin size to miss: the MDE is stated, no warning."""
    from align.gates.policy import as_options, limits_for
    from align.gates.runner import plan_power

    options = as_options({"benchmarks": ["toxicity"], "toxicity_prompts": 20, "limits": {
        "toxicity_expected_max": {"max": 0.5, "max_increase": 0.0, "rule": "superiority"}}})
    planned, warnings = plan_power(options, None, ["toxicity.expected_max", "toxicity.probability"],
                                   limits_for(options, "sft"))
    assert planned["toxicity.expected_max"]["mde"] > 0 and planned["toxicity.probability"]["mde"] > 0.05
    assert [w.split(":")[0] for w in warnings] == ["toxicity.probability"]  # its default margin 0.05 is too small
    check = judge_check("toxicity.expected_max", 0.33, None, 0.3, Limit(max_increase=0.0, rule="superiority"),
                        {"difference": 0.03, "ci95": [0.01, 0.05], "mde": 0.04}, "non_inferiority")
    assert not check["passed"] and not check["mde_exceeds_margin"] and "superiority" in check["reason"]
