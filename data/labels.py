"""Rankings → pairwise preferences, the consensus rule, and inter-annotator agreement.

Pure functions over plain data, so they are easy to check by hand; `data.store` feeds them rows.

A *ranking* is a list of tiers, best first; a tier is a list of reply ids that the annotator
judged equally good (a tie). ``[[7], [5, 6], [8]]`` reads "7 is best, 5 and 6 tie, 8 is worst".
Every reply of the item appears exactly once. A label marked *all unacceptable* may carry an
empty ranking.

Consensus rule (what `export` turns into preference rows):
    For every pair of replies (a, b) of an item, each annotator who labeled the item casts one
    vote: "a better than b", "b better than a", or no preference (a tie, or a label marked
    all unacceptable). The pair becomes a row (chosen=a, rejected=b) only when **more than half
    of the item's annotators** prefer a over b. A single annotator's strict preferences are
    therefore kept; with two annotators both must agree; with three, two of three. Ties,
    split votes and all-unacceptable labels never produce a row, and an item whose annotators
    are not strictly in majority for any pair gives no rows.

Unpaired rule (what `export_kto` turns into desirable / undesirable examples for KTO):
    Each annotator who labeled the item votes "top" for the replies of their first tier and "bottom" for those of
    their last tier (a ranking of one tier, all tied, votes neither); a label marked all unacceptable votes
    "bottom" for every reply. A reply is desirable when **more than half of the item's annotators** vote it top,
    undesirable when more than half vote it bottom; otherwise it gives no example.

Agreement (the admin view), over items with at least two ranked (not all-unacceptable) labels:
    * pairwise agreement: for every item, every pair of annotators and every pair of replies,
      do the two annotators give the same relation (a>b, a<b, or tie)? The figure is the share
      of such comparisons that agree.
    * Kendall's tau: tau-b (scipy) between the two annotators' rank vectors, for every item and
      pair of annotators; the figure is the mean over those with a defined tau (a ranking that
      ties everything has none).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

FLAG_NAMES = ("toxic", "unsafe", "factually wrong")

Ranking = list[list[int]]


class RankingError(ValueError):
    """A submitted ranking or flag set does not fit the item it is for."""


@dataclass(frozen=True)
class RankedLabel:
    """One annotator's judgement of one item, as the math needs it."""

    annotator: str
    ranking: Ranking
    all_unacceptable: bool = False
    flags: Mapping[int, Sequence[str]] = field(default_factory=dict)


def validate_label(ranking: Sequence[Sequence[int]], reply_ids: Iterable[int], *,
                   all_unacceptable: bool = False,
                   flags: Mapping[int, Sequence[str]] | None = None) -> tuple[Ranking, dict[int, list[str]]]:
    """Check a submission against the item's replies; return the normalised ranking and flags.

    The ranking must name every reply exactly once, unless the label says all unacceptable, in
    which case it may be empty. Flags must name replies of the item and known flag names.
    """
    expected = set(reply_ids)
    tiers = [sorted(int(r) for r in tier) for tier in ranking if len(tier)]
    seen = [r for tier in tiers for r in tier]
    if not (all_unacceptable and not seen):
        if len(seen) != len(set(seen)):
            raise RankingError(f"ranking names a reply twice: {ranking}")
        if set(seen) != expected:
            missing, unknown = sorted(expected - set(seen)), sorted(set(seen) - expected)
            raise RankingError(f"ranking must name every reply once (missing {missing}, unknown {unknown})")
    clean_flags: dict[int, list[str]] = {}
    for reply_id, names in (flags or {}).items():
        reply_id = int(reply_id)
        if reply_id not in expected:
            raise RankingError(f"flag for reply {reply_id}, which is not a reply of this item")
        unknown = sorted(set(names) - set(FLAG_NAMES))
        if unknown:
            raise RankingError(f"unknown flag(s) {unknown}; known: {list(FLAG_NAMES)}")
        if names:
            clean_flags[reply_id] = sorted(set(names))
    return tiers, clean_flags


def ranks_from_tiers(ranking: Sequence[Sequence[int]]) -> dict[int, int]:
    """Reply id → rank (1 = best; tied replies share a rank)."""
    return {reply: position for position, tier in enumerate(ranking, start=1) for reply in tier}


def tiers_from_ranks(ranks: Mapping[int, int]) -> Ranking:
    """Reply id → rank number (ties share a number, gaps allowed) → tiers, best first."""
    by_rank: dict[int, list[int]] = {}
    for reply, rank in ranks.items():
        by_rank.setdefault(int(rank), []).append(int(reply))
    return [sorted(by_rank[rank]) for rank in sorted(by_rank)]


def _relation(ranks: Mapping[int, int], a: int, b: int) -> int:
    """+1 when a is better than b, -1 when worse, 0 for a tie."""
    return (ranks[a] < ranks[b]) - (ranks[a] > ranks[b])


def consensus_pairs(labels: Sequence[RankedLabel], reply_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(chosen, rejected) reply-id pairs the item's annotators agree on, by the module's rule.

    Pairs come out in a stable order: by the chosen reply's consensus position, then reply ids.
    """
    if not labels:
        return []
    needed = len(labels) // 2 + 1
    rank_maps = [ranks_from_tiers(label.ranking) for label in labels if not label.all_unacceptable]
    pairs = []
    for a, b in itertools.combinations(sorted(reply_ids), 2):
        votes = [_relation(ranks, a, b) for ranks in rank_maps if a in ranks and b in ranks]
        if sum(v > 0 for v in votes) >= needed:
            pairs.append((a, b))
        elif sum(v < 0 for v in votes) >= needed:
            pairs.append((b, a))
    wins = {r: sum(1 for chosen, _ in pairs if chosen == r) for r in reply_ids}
    return sorted(pairs, key=lambda p: (-wins[p[0]], p[0], p[1]))


def consensus_unpaired(labels: Sequence[RankedLabel], reply_ids: Sequence[int]) -> list[tuple[int, bool]]:
    """(reply id, desirable) for the replies the item's annotators agree are its best or worst, by the module's
    unpaired rule, in reply-id order."""
    if not labels:
        return []
    needed = len(labels) // 2 + 1
    top: dict[int, int] = {}
    bottom: dict[int, int] = {}
    for label in labels:
        if label.all_unacceptable:
            worst, best = list(reply_ids), []
        elif len(label.ranking) >= 2:
            best, worst = label.ranking[0], label.ranking[-1]
        else:
            continue
        for reply in best:
            top[reply] = top.get(reply, 0) + 1
        for reply in worst:
            bottom[reply] = bottom.get(reply, 0) + 1
    verdicts = []
    for reply in sorted(reply_ids):
        if top.get(reply, 0) >= needed:
            verdicts.append((reply, True))
        elif bottom.get(reply, 0) >= needed:
            verdicts.append((reply, False))
    return verdicts


def agreement(items: Mapping[int, Sequence[RankedLabel]]) -> dict:
    """Inter-annotator agreement over items with at least two ranked labels (see module docs).

    Returns ``{"items": n, "comparisons": n, "pairwise_agreement": float|None,
    "kendall_tau": float|None, "tau_pairs": n, "per_annotator": {name: pairwise agreement}}``.
    """
    from scipy.stats import kendalltau

    agree = comparisons = items_used = 0
    taus: list[float] = []
    per_annotator: dict[str, list[int]] = {}
    for labels in items.values():
        ranked = [label for label in labels if not label.all_unacceptable and label.ranking]
        if len(ranked) < 2:
            continue
        items_used += 1
        for first, second in itertools.combinations(ranked, 2):
            ranks_1, ranks_2 = ranks_from_tiers(first.ranking), ranks_from_tiers(second.ranking)
            replies = sorted(set(ranks_1) & set(ranks_2))
            for a, b in itertools.combinations(replies, 2):
                same = _relation(ranks_1, a, b) == _relation(ranks_2, a, b)
                agree += same
                comparisons += 1
                for name in (first.annotator, second.annotator):
                    tally = per_annotator.setdefault(name, [0, 0])
                    tally[0] += same
                    tally[1] += 1
            if len(replies) >= 2:
                tau = kendalltau([ranks_1[r] for r in replies], [ranks_2[r] for r in replies]).statistic
                if not math.isnan(tau):
                    taus.append(float(tau))
    return {
        "items": items_used,
        "comparisons": comparisons,
        "pairwise_agreement": agree / comparisons if comparisons else None,
        "kendall_tau": sum(taus) / len(taus) if taus else None,
        "tau_pairs": len(taus),
        "per_annotator": {name: a / n for name, (a, n) in sorted(per_annotator.items()) if n},
    }
