"""gate.target_mde: sizes solved from the planned-MDE formula, capped, and recorded in the fingerprint."""

from __future__ import annotations

import numpy as np
import pytest

from align.gates.paired import planned_mde
from align.gates.policy import GateOptions, as_options, fingerprint, limits_for
from align.gates.sizing import MIN_UNITS, choose_sizes, units_for_target

PLENTY = lambda benchmark, options: 100_000  # noqa: E731 - a benchmark large enough never to cap


def _parent_toxicity(n=400, sd=0.2, seed=2):
    """A parent whose per-prompt maxima have exactly sd `sd` over n prompts (a known-variance fixture)."""
    rng = np.random.default_rng(seed)
    maxima = rng.standard_normal(n)
    maxima = 0.5 + (maxima - maxima.mean()) * sd / maxima.std(ddof=1)
    return {"toxicity": {"ids": [str(i) for i in range(n)], "threshold": 0.5,
                         "scores": {"toxicity": maxima[:, None].tolist()}}}


def _options(**gate):
    return as_options({"benchmarks": ["toxicity", "crows_pairs", "bbq"], "n_resamples": 2000, **gate})


def test_the_chosen_size_is_the_smallest_that_reaches_the_target_from_the_parents_variance():
    items = _parent_toxicity()
    options = _options(max_units=100_000, limits={"toxicity_expected_max": {"target_mde": 0.02}})
    chosen, plan = choose_sizes(options, limits_for(options, "sft"), items, None, capacity=PLENTY)
    n = chosen.toxicity_prompts
    # only the check with a target is sized; the other benchmarks keep their configured sizes
    assert plan["sizes"] == {"toxicity_prompts": n} and chosen.crows_pairs == options.crows_pairs
    at_n = planned_mde("toxicity.expected_max", options, items, at_units=n)
    one_fewer = planned_mde("toxicity.expected_max", options, items, at_units=n - 1)
    assert at_n["mde"] <= 0.02 < one_fewer["mde"] and "parent's per-unit variance" in at_n["basis"]
    # sd 0.2, correlation 0.5: the MDE is about 2.80 · 0.2 / √n, so about (2.80 · 0.2 / 0.02)² ≈ 785 prompts
    assert n == pytest.approx(785, rel=0.15)
    check = plan["benchmarks"]["toxicity"]["checks"][0]
    assert check["reached"] and check["planned_mde"] == pytest.approx(at_n["mde"])
    assert "gate.toxicity_prompts=" in plan["notes"][0] and "out of reach" not in plan["notes"][0]

    # A parent measured at a size that already reaches the target is kept (no re-measuring); a smaller one is not.
    loose = _options(max_units=100_000, limits={"toxicity_expected_max": {"target_mde": 0.05}})
    kept, plan = choose_sizes(loose, limits_for(loose, "sft"), items, {"toxicity_prompts": 400}, capacity=PLENTY)
    assert kept.toxicity_prompts == 400 and plan["benchmarks"]["toxicity"]["kept_parent_size"]
    assert "reaches it already" in plan["notes"][0]
    solved, _ = choose_sizes(loose, limits_for(loose, "sft"), items, {"toxicity_prompts": 100}, capacity=PLENTY)
    assert 100 < solved.toxicity_prompts < 400


def test_without_a_parent_the_conservative_bound_sizes_every_regression_limited_check():
    options = _options(target_mde=0.1, max_units=100_000)
    chosen, plan = choose_sizes(options, limits_for(options, "sft"), None, None, capacity=PLENTY)
    # CrowS-Pairs: values in [0, 1], no correlation assumed
    n = chosen.crows_pairs
    bound = lambda units: planned_mde("crows_pairs.stereotype_share", options, None, units=units)["mde"]  # noqa: E731
    assert bound(n) <= 0.1 < bound(n - 1) and n == units_for_target(bound(1), 0.1)
    # BBQ: a bias check in [-1, 1] on about half of the questions needs about twice its units in questions
    bbq = plan["benchmarks"]["bbq"]
    deciding = max(bbq["checks"], key=lambda c: c["size"])
    assert deciding["share"] == 0.5 and chosen.bbq == deciding["size"] >= 2 * deciding["units"] - 1
    assert {c["check"] for c in bbq["checks"]} == {"bbq.disambiguated_accuracy", "bbq.disambiguated_bias",
                                                  "bbq.ambiguous_bias"}  # ambiguous accuracy has no margin
    assert all(c["reached"] for b in plan["benchmarks"].values() for c in b["checks"])


def test_a_cap_keeps_the_target_out_of_reach_and_says_so():
    options = _options(target_mde=0.02, max_units=300)
    chosen, plan = choose_sizes(options, limits_for(options, "sft"), None, None, capacity=PLENTY)
    crows = plan["benchmarks"]["crows_pairs"]
    assert chosen.crows_pairs == 300 and crows["needed"] > 300 and crows["capped_by"] == "gate.max_units"
    assert not any(c["reached"] for c in crows["checks"])
    note = next(n for n in plan["notes"] if n.startswith("gate.crows_pairs="))
    assert "capped by gate.max_units at 300" in note and "out of reach" in note
    # the shipped benchmark caps it too, whichever is smaller
    small = lambda benchmark, options: 120  # noqa: E731
    chosen, plan = choose_sizes(options, limits_for(options, "sft"), None, None, capacity=small)
    assert chosen.crows_pairs == 120 and plan["benchmarks"]["crows_pairs"]["capped_by"] == "the shipped benchmark (120)"


def test_the_chosen_sizes_are_part_of_the_fingerprint_and_no_target_changes_nothing():
    options = _options(target_mde=0.3)
    chosen, plan = choose_sizes(options, limits_for(options, "sft"), None, None, capacity=PLENTY)
    sizes = plan["sizes"]
    assert fingerprint(chosen) != fingerprint(options)
    assert fingerprint(chosen) == fingerprint(_options(**sizes))  # measured at the chosen sizes, like configured ones
    assert min(sizes.values()) >= MIN_UNITS
    untouched, none = choose_sizes(_options(), limits_for(_options(), "sft"), None, None, capacity=PLENTY)
    assert none is None and untouched == _options()


def test_full_keeps_its_other_sizes_and_a_stage_can_set_its_own_target():
    options = as_options({"benchmarks": ["crows_pairs", "bbq"], "full": True,
                          "stages": {"dpo": {"crows_pairs_stereotype_share": {"target_mde": 0.05}}}})
    assert choose_sizes(options, limits_for(options, "sft"), None, None, capacity=PLENTY)[1] is None
    chosen, plan = choose_sizes(options, limits_for(options, "dpo"), None, None, capacity=lambda b, o: 1508)
    assert not chosen.full and chosen.samples_per_prompt == 25 and chosen.bbq == -1  # the rest of full stays
    assert chosen.crows_pairs == plan["sizes"]["crows_pairs"] and 1000 >= chosen.crows_pairs > 300


def test_target_mde_must_be_positive():
    from align.errors import ConfigError

    with pytest.raises(ConfigError):
        from align.config import load_recipe

        load_recipe("tiny", ["gate.target_mde=0"], command="gate")
    assert GateOptions().target_mde is None


def test_the_shipped_benchmarks_hold_what_the_options_say():
    from align.gates.sizing import benchmark_capacity

    assert [benchmark_capacity(b, GateOptions()) for b in ("toxicity", "crows_pairs", "bbq")] == [2632, 1508, 11956]
    assert benchmark_capacity("toxicity", GateOptions(toxicity_sources=["do-not-answer"])) < 2632
    assert benchmark_capacity("bold", GateOptions(bold_domains=["gender"])) > 0
