"""Length filter: tokens under the policy's tokenizer, per turn and per conversation.

A turn is one message's content, a conversation all of a row's messages (a pair: its prompt and its longer reply,
what one training sequence holds). A bound of -1 is off. Rows outside a bound go, naming the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from align.config import opt
from align.data.curate import Removed, StepResult

STEP = "length"
OFF = {"min": 0, "also": (-1,)}


@dataclass
class Options:
    enabled: bool = opt(True, "drop rows with turns or conversations outside the token bounds")
    min_turn_tokens: int = opt(1, "fewest tokens in any message (-1: no bound)", **OFF)
    max_turn_tokens: int = opt(-1, "most tokens in any message (-1: no bound)", **OFF)
    min_conversation_tokens: int = opt(-1, "fewest tokens in a conversation (-1: no bound)", **OFF)
    max_conversation_tokens: int = opt(-1, "most tokens in a conversation (-1: no bound)", **OFF)
    batch_size: int = opt(512, "texts per tokenizer call", min=1)


def _count_tokens(tokenizer, texts: list[str], batch_size: int, progress: bool) -> list[int]:
    counts: list[int] = []
    for start in tqdm(range(0, len(texts), batch_size), desc=STEP, unit="batch", disable=not progress):
        encoded = tokenizer(texts[start:start + batch_size], add_special_tokens=False)["input_ids"]
        counts.extend(len(ids) for ids in encoded)
    return counts


class Step:
    """The policy's tokenizer loaded once, each chunk's messages counted in batches."""

    def __init__(self, options, env):
        from align.models import load_tokenizer

        self.options, self.progress, self.source = options, env.progress, env.model_source
        self.tokenizer = load_tokenizer(env.model_source, env.model_options)

    def apply(self, records) -> StepResult:
        shapes = []  # per record: [(field, number of its messages)]
        texts: list[str] = []
        for record in records:
            keys = ("messages",) if "messages" in record.row else ("prompt", "chosen", "rejected")
            shape = []
            for key in keys:
                shape.append((key, len(record.row[key])))
                texts.extend(m["content"] for m in record.row[key])
            shapes.append(shape)
        counts = iter(_count_tokens(self.tokenizer, texts, self.options.batch_size, self.progress))
        result = StepResult(kept=[], notes={"tokenizer": self.source})
        for record, shape in zip(records, shapes):
            per_field = {key: [next(counts) for _ in range(n)] for key, n in shape}
            reason = _out_of_bounds(per_field, self.options)
            if reason:
                result.removed.append(Removed(record, STEP, reason[0], reason[1]))
            else:
                result.kept.append(record)
        return result


def apply(records, options, env) -> StepResult:
    return Step(options, env).apply(records)


def _out_of_bounds(per_field: dict[str, list[int]], options) -> tuple[str, str] | None:
    turns = [(key, i, n) for key, ns in per_field.items() for i, n in enumerate(ns)]
    if options.min_turn_tokens >= 0:
        short = [t for t in turns if t[2] < options.min_turn_tokens]
        if short:
            return "turn_too_short", f"{short[0][0]}[{short[0][1]}]: {short[0][2]} tokens < {options.min_turn_tokens}"
    if options.max_turn_tokens >= 0:
        long = [t for t in turns if t[2] > options.max_turn_tokens]
        if long:
            return "turn_too_long", f"{long[0][0]}[{long[0][1]}]: {long[0][2]} tokens > {options.max_turn_tokens}"
    if "messages" in per_field:
        total = sum(per_field["messages"])
    else:
        total = sum(per_field["prompt"]) + max(sum(per_field["chosen"]), sum(per_field["rejected"]))
    if 0 <= options.max_conversation_tokens < total:
        return "conversation_too_long", f"{total} tokens > {options.max_conversation_tokens}"
    if options.min_conversation_tokens >= 0 and total < options.min_conversation_tokens:
        return "conversation_too_short", f"{total} tokens < {options.min_conversation_tokens}"
    return None
