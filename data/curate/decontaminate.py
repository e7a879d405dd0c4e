"""Decontamination: training rows whose prompts overlap what the gates and the evaluation measure on go, so a gate
never scores a model on what it trained on.

Overlap is word n-grams (lower case, words only): a training row's user turns share an `ngram`-word sequence with a
benchmark prompt (a benchmark text shorter than `ngram` words counts as one sequence when it has at least
`min_words`). Benchmarks (data/benchmarks/): `toxicity` (the gate's provoking prompts: RealToxicityPrompts,
its by-attribute sets, Do-Not-Answer), `crows_pairs`, `bbq` (context and question), `bold`, `benign_requests`
(the eval's over-refusal set); and `held_out`: the user turns of the curated test split itself (only train rows
are decontaminated).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from tqdm.auto import tqdm

from align.config import opt
from align.data.curate import Removed, StepResult, user_text
from align.data.curate.dedup import words

STEP = "decontaminate"
ORDERED = True  # the held-out rows are read before the training rows checked against them
BENCHMARKS = ("toxicity", "crows_pairs", "bbq", "bold", "benign_requests", "held_out")


@dataclass
class Options:
    enabled: bool = opt(True, "drop training rows whose prompts overlap the gate benchmarks or the held-out split")
    against: list = opt(list(BENCHMARKS), "what to check against", choices=BENCHMARKS)
    ngram: int = opt(13, "words in an overlapping sequence (13 as in GPT-3's decontamination: 8 catches templated "
                         "openings such as 'i am trying to locate the residential address')", min=2)
    min_words: int = opt(5, "a benchmark text shorter than `ngram` words counts whole when it has this many", min=1)


def benchmark_texts(name: str) -> list[str]:
    """The prompts of one shipped benchmark."""
    if name == "toxicity":
        from align.gates.toxicity_eval import prompt_sources

        return [p.text for prompts in prompt_sources().values() for p in prompts]
    from align.gates import bias

    if name == "crows_pairs":
        return [text for pair in bias.load_crows_pairs() for text in (pair.sent_more, pair.sent_less)]
    if name == "bbq":
        return [f"{item.context} {item.question}" for item in bias.load_bbq()]
    if name == "bold":
        return [prompt.text for prompt in bias.load_bold()]
    if name == "benign_requests":
        path = bias.BENCHMARK_DIR / "benign-requests" / "benign-requests.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [row["prompt"] if isinstance(row.get("prompt"), str) else row.get("text", "") for row in rows]
    raise ValueError(name)


class NgramIndex:
    """Word n-grams of reference texts; `hit(text)` is the first shared sequence, or None."""

    def __init__(self, n: int, min_words: int):
        self.n, self.min_words = n, min_words
        self.grams: dict[tuple, str] = {}
        self.short_lengths: set[int] = set()

    def add(self, text: str, origin: str) -> None:
        tokens = words(text)
        if len(tokens) < self.n:
            if len(tokens) >= self.min_words:
                self.grams.setdefault(tuple(tokens), origin)
                self.short_lengths.add(len(tokens))
            return
        for i in range(len(tokens) - self.n + 1):
            self.grams.setdefault(tuple(tokens[i:i + self.n]), origin)

    def hit(self, text: str) -> tuple[str, str] | None:
        tokens = words(text)
        for size in (self.n, *sorted(self.short_lengths)):
            for i in range(len(tokens) - size + 1):
                origin = self.grams.get(tuple(tokens[i:i + size]))
                if origin is not None:
                    return origin, " ".join(tokens[i:i + size])
        return None


@lru_cache(maxsize=2)
def _shipped_index(names: tuple[str, ...], n: int, min_words: int) -> NgramIndex:
    index = NgramIndex(n, min_words)
    for name in names:
        for text in benchmark_texts(name):
            index.add(text, name)
    return index


class Step:
    """Decontamination over chunks of rows in order (the held-out split comes first): what it keeps is the
    benchmarks' n-grams and those of the held-out rows seen so far."""

    def __init__(self, options, env):
        self.progress = env.progress
        shipped = tuple(name for name in options.against if name != "held_out")
        self.index = _shipped_index(shipped, options.ngram, options.min_words)
        self.held_out = NgramIndex(options.ngram, options.min_words) if "held_out" in options.against else None
        self.notes = {"against": list(options.against), "ngram": options.ngram,
                      "reference_ngrams": len(self.index.grams)}

    def apply(self, records) -> StepResult:
        if self.held_out is not None:
            for record in records:
                if record.split != "train":
                    self.held_out.add(user_text(record.row), f"held_out {record.id}")
        result = StepResult(kept=[], notes=self.notes)
        for record in tqdm(records, desc=STEP, unit="row", disable=not self.progress):
            if record.split != "train":
                result.kept.append(record)
                continue
            text = user_text(record.row)
            hit = self.index.hit(text) or (self.held_out.hit(text) if self.held_out is not None else None)
            if hit:
                reason = "held_out_overlap" if hit[0].startswith("held_out") else "benchmark_overlap"
                result.removed.append(Removed(record, STEP, reason, f"{hit[0]}: {hit[1]!r}"))
            else:
                result.kept.append(record)
        return result


def apply(records, options, env) -> StepResult:
    return Step(options, env).apply(records)
