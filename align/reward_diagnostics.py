"""Is a reward model more than a length detector? Diagnostics of scores on preference pairs, and length balancing.

Used by the rm stage (its held-out metrics), by `align.compare` and by any evaluation that scores pairs with a
reward model. Definitions (length is always in **characters** of the reply's text, the assistant message(s) after
the prompt, so it needs no tokenizer and means the same for every model):

- wins: a pair is won when the chosen reply scores above the rejected one; a tie counts half (`pair_wins`).
- length-only baseline: a rule that ignores the text and picks the longer reply, or the shorter, whichever ranks
  more *training* pairs right (`length_rule`); its accuracy on the held-out pairs is what a pure length detector
  scores there. A reward model worth having beats it.
- length-matched pairs: pairs whose chosen/rejected length ratio lies within [0.8, 1.25]; length cannot decide
  them, so the accuracy there shows what was learned beyond length.
- intervals: 95% percentile bootstrap over the pairs (align.gates.stats); the margin over the length-only baseline
  is paired (both on the same resampled pairs).
- length correlation: Pearson and Spearman of the score with the reply length over every reply (chosen and
  rejected) of the pairs.
- length balance (`length_balanced`): training pairs subsampled so that pairs whose chosen reply is the shorter
  and pairs whose chosen reply is the longer are equally many (equal-length pairs all stay), so the pairs
  themselves teach no length preference.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

MATCHED_RATIO = (0.8, 1.25)


# ------------------------------------------------------------------------------------------------------ wins


def pair_wins(better: Sequence[float], worse: Sequence[float]) -> np.ndarray:
    """Per pair: 1 when `better` scores above `worse`, 0.5 on a tie, 0 otherwise."""
    b, w = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    if b.shape != w.shape:
        raise ValueError(f"pair_wins: {len(b)} scores against {len(w)}")
    return (b > w) + 0.5 * (b == w)


def win_rate(better: Sequence[float], worse: Sequence[float]) -> float:
    """Share of pairs won (a tie counts half), rounded to 4 places; nan when there are no pairs."""
    wins = pair_wins(better, worse)
    return round(float(wins.mean()), 4) if wins.size else float("nan")


# ---------------------------------------------------------------------------------------------------- lengths


def reply_length(reply: Sequence[dict]) -> int:
    """Characters of a reply (a list of assistant messages)."""
    return sum(len(m["content"]) for m in reply)


def pair_lengths(pairs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of the chosen and of the rejected reply of each preference row {prompt, chosen, rejected}."""
    return (np.array([reply_length(p["chosen"]) for p in pairs], dtype=float),
            np.array([reply_length(p["rejected"]) for p in pairs], dtype=float))


def length_rule(pairs: Sequence[dict]) -> str:
    """"shorter" or "longer": the length-only rule that ranks more of these pairs right (a tie goes to shorter)."""
    chosen, rejected = pair_lengths(pairs)
    return "longer" if (chosen > rejected).sum() > (chosen < rejected).sum() else "shorter"


def length_only_wins(pairs: Sequence[dict], rule: str) -> np.ndarray:
    """Per pair, the wins of the length-only rule ("shorter" or "longer"); equal lengths count half."""
    if rule not in ("shorter", "longer"):
        raise ValueError(f"length rule {rule!r}: use shorter or longer")
    chosen, rejected = pair_lengths(pairs)
    return pair_wins(-chosen, -rejected) if rule == "shorter" else pair_wins(chosen, rejected)


def length_matched(pairs: Sequence[dict], ratio: tuple[float, float] = MATCHED_RATIO) -> np.ndarray:
    """Boolean mask of the pairs whose chosen/rejected length ratio lies within `ratio` (inclusive)."""
    chosen, rejected = pair_lengths(pairs)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = chosen / rejected
    return (r >= ratio[0]) & (r <= ratio[1])


def length_balanced(pairs: Sequence[dict], seed: int = 0) -> tuple[list[dict], dict]:
    """The pairs with the larger of the chosen-shorter / chosen-longer groups subsampled (seeded) to the size of the
    smaller; equal-length pairs all stay; order kept. Returns (kept pairs, counts before and after)."""
    chosen, rejected = pair_lengths(pairs)
    shorter, longer = np.flatnonzero(chosen < rejected), np.flatnonzero(chosen > rejected)
    keep = min(len(shorter), len(longer))
    rng = random.Random(seed)
    dropped = set()
    for group in (shorter, longer):
        dropped.update(rng.sample(sorted(group.tolist()), len(group) - keep))
    kept = [p for i, p in enumerate(pairs) if i not in dropped]
    counts = {"chosen_shorter": int(len(shorter)), "chosen_longer": int(len(longer)),
              "equal_length": int(len(pairs) - len(shorter) - len(longer)), "kept": len(kept)}
    return kept, counts


# -------------------------------------------------------------------------------------------- diagnostics


def _round(value) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 4)


def length_correlation(scores: Sequence[float], lengths: Sequence[float]) -> dict:
    """Pearson and Spearman correlation of scores with lengths (None where either is constant)."""
    from scipy import stats

    s, n = np.asarray(scores, dtype=float), np.asarray(lengths, dtype=float)
    if s.size < 2 or np.std(s) == 0 or np.std(n) == 0:
        return {"length_pearson": None, "length_spearman": None}
    return {"length_pearson": _round(stats.pearsonr(s, n)[0]), "length_spearman": _round(stats.spearmanr(s, n)[0])}


def length_diagnostics(chosen_scores: Sequence[float], rejected_scores: Sequence[float], pairs: Sequence[dict],
                       train_pairs: Sequence[dict] | None = None) -> dict:
    """Length diagnostics of scores on preference pairs (definitions in the module docstring).

    train_pairs: the pairs the scorer was trained on; the length-only rule is chosen there. Without them it is
    chosen on `pairs` themselves (an optimistic baseline), and `length_only_rule_from` says so.
    Keys: accuracy (with accuracy_ci95), length_only_rule, length_only_rule_from, length_only_accuracy,
    accuracy_over_length_only (with a paired interval over the same pairs), length_matched_accuracy (None when no
    pair is matched), length_matched_accuracy_ci95, length_matched_pairs, length_pearson, length_spearman,
    accuracy_chosen_shorter / _longer and pairs_chosen_shorter / _longer. Intervals: 95% percentile bootstrap.
    """
    from align.gates.stats import bootstrap_ci

    chosen, rejected = np.asarray(chosen_scores, dtype=float), np.asarray(rejected_scores, dtype=float)
    if not (len(chosen) == len(rejected) == len(pairs)):
        raise ValueError(f"length_diagnostics: {len(chosen)} chosen and {len(rejected)} rejected scores for "
                         f"{len(pairs)} pairs")
    wins = pair_wins(chosen, rejected)
    rule = length_rule(train_pairs if train_pairs is not None else pairs)
    baseline = length_only_wins(pairs, rule)
    matched = length_matched(pairs)
    chosen_len, rejected_len = pair_lengths(pairs)
    shorter, longer = chosen_len < rejected_len, chosen_len > rejected_len
    accuracy, baseline_accuracy = _round(wins.mean()), _round(baseline.mean())
    matched_ci = bootstrap_ci(np.mean, wins[matched]) if matched.any() else (float("nan"), float("nan"))
    accuracy_ci, over_ci = bootstrap_ci(np.mean, wins), bootstrap_ci(np.mean, wins - baseline)  # paired: same pairs
    return {
        "accuracy": accuracy,
        "accuracy_ci95": [_round(accuracy_ci[0]), _round(accuracy_ci[1])],
        "length_only_rule": rule,
        "length_only_rule_from": "train" if train_pairs is not None else "held-out",
        "length_only_accuracy": baseline_accuracy,
        "accuracy_over_length_only": _round(wins.mean() - baseline.mean()),
        "accuracy_over_length_only_ci95": [_round(over_ci[0]), _round(over_ci[1])],
        "length_matched_accuracy": _round(wins[matched].mean()) if matched.any() else None,
        "length_matched_accuracy_ci95": [_round(matched_ci[0]), _round(matched_ci[1])] if matched.any() else None,
        "length_matched_pairs": int(matched.sum()),
        **length_correlation(np.concatenate([chosen, rejected]), np.concatenate([chosen_len, rejected_len])),
        "accuracy_chosen_shorter": _round(wins[shorter].mean()) if shorter.any() else None,
        "pairs_chosen_shorter": int(shorter.sum()),
        "accuracy_chosen_longer": _round(wins[longer].mean()) if longer.any() else None,
        "pairs_chosen_longer": int(longer.sum()),
    }


def pair_metrics(chosen_scores: Sequence[float], rejected_scores: Sequence[float], pairs: Sequence[dict],
                 train_pairs: Sequence[dict] | None = None) -> dict:
    """Everything a reward model's held-out report shows: accuracy, mean margin, the rewards' mean and spread, and
    the length diagnostics (`length_diagnostics`)."""
    chosen, rejected = np.asarray(chosen_scores, dtype=float), np.asarray(rejected_scores, dtype=float)
    rewards = np.concatenate([chosen, rejected])
    return {**length_diagnostics(chosen, rejected, pairs, train_pairs),
            "mean_margin": _round((chosen - rejected).mean()),
            "reward_mean": _round(rewards.mean()), "reward_std": _round(rewards.std())}
