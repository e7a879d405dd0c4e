"""Balance (optional, off by default): caps on rows per source and per first user turn.

`max_per_source`: rows kept from each dataset of a comma-joined mix (`data=a.jsonl,b.jsonl`); `max_per_first_turn`:
rows that open with the same user turn (normalised: lower case, words only), so one popular question does not fill
the data. The first rows of each group stay; -1 is no cap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from align.config import opt
from align.data.curate import Removed, StepResult, first_user_turn
from align.data.curate.dedup import words

STEP = "balance"
ORDERED = True  # the first rows of each group stay
CAP = {"min": 1, "also": (-1,)}


@dataclass
class Options:
    enabled: bool = opt(False, "cap rows per source and per first user turn")
    max_per_source: int = opt(-1, "rows kept per dataset of a mix (-1: no cap)", **CAP)
    max_per_first_turn: int = opt(-1, "rows kept that open with the same user turn (-1: no cap)", **CAP)


class Step:
    """The caps over chunks of rows in order: what it keeps is a count per source and per first turn."""

    def __init__(self, options, env):
        self.options = options
        self.per_source: Counter = Counter()
        self.per_turn: Counter = Counter()

    def apply(self, records) -> StepResult:
        options, per_source, per_turn = self.options, self.per_source, self.per_turn
        result = StepResult(kept=[])
        for record in records:
            turn = " ".join(words(first_user_turn(record.row)))
            if 0 < options.max_per_source <= per_source[record.source]:
                result.removed.append(Removed(record, STEP, "source_cap",
                                              f"{record.source}: {options.max_per_source} kept"))
                continue
            if 0 < options.max_per_first_turn <= per_turn[turn]:
                result.removed.append(Removed(record, STEP, "first_turn_cap",
                                              f"{options.max_per_first_turn} rows open with {turn[:60]!r}"))
                continue
            per_source[record.source] += 1
            per_turn[turn] += 1
            result.kept.append(record)
        return result


def apply(records, options, env) -> StepResult:
    return Step(options, env).apply(records)
