"""Length diagnostics and mitigations of reward models on constructed pairs and scores (no model, milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest

from align.reward_diagnostics import (length_balanced, length_diagnostics, length_matched, length_rule,
                                      pair_lengths, pair_metrics, pair_wins, win_rate)


def pair(chosen_chars: int, rejected_chars: int, prompt: str = "Q?") -> dict:
    return {"prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": "c" * chosen_chars}],
            "rejected": [{"role": "assistant", "content": "r" * rejected_chars}]}


def test_wins_count_ties_half():
    assert pair_wins([2, 1, 1], [1, 1, 3]).tolist() == [1.0, 0.5, 0.0]
    assert win_rate([2, 1, 1, 5], [1, 1, 3, 4]) == 0.625
    assert np.isnan(win_rate([], []))


def test_length_only_baseline_takes_its_rule_from_the_training_pairs():
    train = [pair(50, 10), pair(40, 20), pair(30, 10), pair(10, 60)]  # chosen longer in 3 of 4: "longer"
    held_out = [pair(20, 10), pair(10, 30), pair(10, 50), pair(15, 15), pair(90, 30)]
    assert length_rule(train) == "longer" and length_rule(held_out) == "shorter"  # 2 longer, 2 shorter: a tie
    scores = [1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]
    found = length_diagnostics(*scores, held_out, train_pairs=train)
    # "longer" on the held-out pairs: right on pairs 1 and 5, wrong on 2 and 3, half on the equal-length pair 4.
    assert found["length_only_rule"] == "longer" and found["length_only_rule_from"] == "train"
    assert found["length_only_accuracy"] == 0.5
    assert found["accuracy"] == 0.8 and found["accuracy_over_length_only"] == 0.3
    assert found["pairs_chosen_shorter"] == 2 and found["accuracy_chosen_shorter"] == 1.0
    assert found["pairs_chosen_longer"] == 2 and found["accuracy_chosen_longer"] == 0.5

    low, high = found["accuracy_over_length_only_ci95"]
    assert low < 0.3 < high and found["accuracy_ci95"][0] < 0.8 < found["accuracy_ci95"][1]

    # A scorer that *is* the length rule: its margin over the baseline is 0 on every resample (a paired interval).
    lengths = pair_lengths(held_out)
    detector = length_diagnostics(*lengths, held_out, train_pairs=train)
    assert detector["accuracy"] == detector["length_only_accuracy"]
    assert detector["accuracy_over_length_only"] == 0 and detector["accuracy_over_length_only_ci95"] == [0, 0]

    mostly_shorter = [pair(10, 20), pair(10, 30), pair(40, 20)]
    alone = length_diagnostics([1, 0, 0], [0, 1, 1], mostly_shorter)
    assert alone["length_only_rule"] == "shorter" and alone["length_only_rule_from"] == "held-out"
    assert alone["length_only_accuracy"] == pytest.approx(2 / 3, abs=1e-4)


def test_length_matched_accuracy_counts_only_pairs_within_the_ratio():
    pairs = [pair(100, 125), pair(100, 80), pair(100, 79), pair(100, 126), pair(100, 100), pair(50, 10)]
    assert length_matched(pairs).tolist() == [True, True, False, False, True, False]  # 0.8 and 1.25 are inside
    chosen, rejected = [1, 0, 1, 0, 1, 1], [0, 1, 0, 1, 1, 0]  # matched: a win, a loss, a tie
    found = length_diagnostics(chosen, rejected, pairs)
    assert found["length_matched_pairs"] == 3 and found["length_matched_accuracy"] == 0.5
    low, high = found["length_matched_accuracy_ci95"]
    assert 0 <= low <= 0.5 <= high <= 1 and low < high
    none = length_diagnostics([1], [0], [pair(100, 10)])
    assert none["length_matched_pairs"] == 0 and none["length_matched_accuracy"] is None
    assert none["length_matched_accuracy_ci95"] is None


def test_length_correlation_is_over_every_reply():
    pairs = [pair(10, 20), pair(30, 40), pair(50, 60)]
    found = pair_metrics([1, 3, 5], [2, 4, 6], pairs)  # reward = length / 10: perfectly correlated
    assert found["length_spearman"] == 1.0 and found["length_pearson"] == 1.0
    assert found["accuracy"] == 0.0 and found["mean_margin"] == -1.0
    assert pair_metrics([1, 1], [1, 1], [pair(1, 2), pair(3, 4)])["length_spearman"] is None  # constant reward


def test_length_balance_keeps_as_many_chosen_shorter_as_chosen_longer_pairs():
    pairs = [pair(10, 20 + i, prompt=f"s{i}") for i in range(10)]  # chosen shorter
    pairs += [pair(30 + i, 20, prompt=f"l{i}") for i in range(4)]  # chosen longer
    pairs += [pair(5, 5, prompt=f"e{i}") for i in range(2)]  # equal length
    kept, counts = length_balanced(pairs, seed=1)
    assert counts == {"chosen_shorter": 10, "chosen_longer": 4, "equal_length": 2, "kept": 10}
    chosen, rejected = pair_lengths(kept)
    assert (chosen < rejected).sum() == (chosen > rejected).sum() == 4 and (chosen == rejected).sum() == 2
    order = [p["prompt"][0]["content"] for p in pairs]
    positions = [order.index(p["prompt"][0]["content"]) for p in kept]
    assert positions == sorted(positions)  # order kept
    assert length_balanced(pairs, seed=1)[0] == kept  # seeded
    assert length_balanced(pairs, seed=2)[0] != kept  # another seed, other chosen-shorter pairs


def test_regressing_out_a_planted_length_term_restores_the_quality_ranking():
    """Rewards = quality + c * length: length dominates the ranking; after the fitted term is subtracted the
    rewards no longer follow length and rank the pairs as their quality does."""
    from scipy import stats

    from align.reward import fit_length_term

    rng = np.random.default_rng(0)
    n, c = 400, 0.05
    pairs = [pair(int(a), int(b)) for a, b in rng.integers(20, 400, size=(n, 2))]
    quality_c, quality_r = rng.normal(1.0, 0.3, n), rng.normal(0.0, 0.3, n)
    len_c, len_r = pair_lengths(pairs)
    raw_c, raw_r = quality_c + c * len_c, quality_r + c * len_r
    raw = length_diagnostics(raw_c, raw_r, pairs)
    quality_accuracy = float(pair_wins(quality_c, quality_r).mean())
    assert raw["length_spearman"] > 0.9 and raw["accuracy"] < quality_accuracy - 0.3

    term = fit_length_term(np.concatenate([raw_c, raw_r]), np.concatenate([len_c, len_r]))
    assert term["per_character"] == pytest.approx(c, rel=0.05)
    b = term["per_character"]
    fixed = length_diagnostics(raw_c - b * len_c, raw_r - b * len_r, pairs)
    assert abs(fixed["length_spearman"]) < 0.1
    assert fixed["accuracy"] == pytest.approx(quality_accuracy, abs=0.02)
    assert stats.spearmanr(raw_c - b * len_c, quality_c)[0] > 0.95
