"""An obviously learnable synthetic preference: the reply containing a marker word is always the chosen one.

Chosen and rejected replies are built from the same filler phrases and have equal length in words, so only the
marker separates them (no length shortcut).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

MARKER = "banana"
TOPICS = ["the sea", "a garden", "my dog", "the city", "a train", "winter", "music", "a book", "the sky", "coffee",
          "a bicycle", "the moon", "a river", "the market", "rain", "a letter"]
FILLERS = ["it is nice", "I like it", "that is fine", "it is good", "sounds right", "very well", "of course",
           "sure thing", "not bad", "quite so"]


def marker_reply(rng: random.Random, with_marker: bool) -> str:
    first, second = rng.sample(FILLERS, 2)
    return f"{first}, {MARKER if with_marker else 'indeed'}, {second}."


def marker_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = [{"role": "user", "content": f"Tell me about {rng.choice(TOPICS)}."}]
        state = rng.getstate()
        chosen = marker_reply(rng, True)
        rng.setstate(state)  # the same fillers in the same order: only the marker differs
        rejected = marker_reply(rng, False)
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}]})
    return rows


def write_marker_pairs(path: Path, n: int = 200, seed: int = 0) -> Path:
    """JSONL preference file; as a file spec, every 10th row is the held-out test split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in marker_pairs(n, seed)), encoding="utf-8")
    return path
