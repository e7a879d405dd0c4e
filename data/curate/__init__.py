"""Curation of training data before SFT, RM and DPO (`python -m align.run curate`, stages/curate.py).

One module per step, each with its recipe options (`Options`, with `enabled`) and `apply(records, options, env)`
returning the records it keeps and a `Removed` entry for each one it leaves out (the row, the step, the reason).
A step that keeps something from one chunk of rows to the next (a loaded model, the hashes seen so far) has a
`Step(options, env)` class whose `apply(records)` is called once per chunk; `ORDERED = True` marks the steps
whose verdict on a row depends on the rows before it (dedup, decontaminate, balance): those see every row in
order in one process, the others can run on shards (flow.py runs them, cluster.py splits them):

    normalise      Unicode repair (ftfy), whitespace, empty and truncated turns, role order
    dedup          exact (normalised-text hash) and near duplicates (MinHash LSH over word shingles, rensa)
    toxicity       toxic replies, scored by the gates' own offline scorer, batched
    pii            e-mail addresses, phone numbers, IP addresses, card numbers (Luhn): masked or dropped
    language       an offline detector that ships its models (lingua)
    length         tokens per turn and per conversation under the policy's tokenizer
    balance        caps per source and per first user turn
    decontaminate  n-gram overlap with the gate benchmarks and the held-out split
    report         curate_report.json and curate_report.html
    load, stream   reading a spec: all of it at once, or lazily in chunks (`curate.streaming`)
    flow           the steps over chunks of rows, the kept and removed rows written as they come
    cluster        the same steps as datatrove pipeline stages over shards (local processes, Slurm, Ray)

A record is one row of the input, in TRL's conversational format ({"messages"} for chat data, {"prompt",
"chosen", "rejected"} for preference pairs), with where it came from: its split, its source and its row number
there (what the removed-rows file names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHAT, PREFERENCE = "chat", "preference"


@dataclass
class Record:
    id: str  # "<split>:<row number in the source>" (the line of a JSONL file)
    split: str
    source: str
    row: dict
    kind: str  # chat or preference
    order: int = 0  # its place in the order curation reads rows (the held-out split first): what shards merge by


@dataclass
class Removed:
    record: Record
    step: str
    reason: str  # a short tag counted in the report (exact_duplicate, toxic_reply, ...)
    detail: str = ""  # what a person checking it needs: the duplicate's id, the score, the detected language

    def to_json(self) -> dict:
        return {"id": self.record.id, "split": self.record.split, "source": self.record.source, "step": self.step,
                "reason": self.reason, "detail": self.detail, "row": self.record.row}


@dataclass
class StepResult:
    kept: list[Record]
    removed: list[Removed] = field(default_factory=list)
    changed: int = 0  # rows kept but modified (normalised text, masked PII)
    notes: dict = field(default_factory=dict)  # step figures for the report (engine, thresholds, ...)
    counts: dict = field(default_factory=dict)  # step figures that add up over chunks (replies scored, ...)


# ---------------------------------------------------------------------------------------------- row texts


def messages_of(row: dict) -> list[dict]:
    """Every message of a row: a chat's messages, or a pair's prompt, chosen and rejected."""
    if "messages" in row:
        return row["messages"]
    return [*row["prompt"], *row["chosen"], *row["rejected"]]


def prompt_of(row: dict) -> list[dict]:
    """The conversation before the trained reply: a pair's prompt, a chat's messages before its last reply."""
    if "prompt" in row:
        return row["prompt"]
    return row["messages"][:-1]


def user_text(row: dict) -> str:
    return "\n".join(m["content"] for m in prompt_of(row) if m["role"] == "user")


def first_user_turn(row: dict) -> str:
    return next((m["content"] for m in prompt_of(row) if m["role"] == "user"), "")


def trained_replies(row: dict, rejected: bool = False) -> list[str]:
    """The replies a model is trained to give: a chat's assistant turns (SFT targets), a pair's chosen reply (and
    its rejected one when `rejected`)."""
    if "messages" in row:
        return [m["content"] for m in row["messages"] if m["role"] == "assistant"]
    replies = [m["content"] for m in row["chosen"]]
    return replies + ([m["content"] for m in row["rejected"]] if rejected else [])


def row_text(row: dict) -> str:
    return "\n".join(m["content"] for m in messages_of(row))


def map_contents(row: dict, fn) -> dict:
    """A copy of `row` with fn applied to the content of every message."""
    def convert(messages):
        return [{**m, "content": fn(m["content"])} for m in messages]

    if "messages" in row:
        return {**row, "messages": convert(row["messages"])}
    return {**row, **{key: convert(row[key]) for key in ("prompt", "chosen", "rejected")}}


@dataclass
class Env:
    """What the steps need besides their own options (set by stages/curate.py)."""

    num_proc: int = 1
    progress: bool = True
    model_source: str = "tiny"  # the policy: its tokenizer counts tokens (length)
    model_options: object = None
    scorer: str = "offline"  # the gates' toxicity scorer (toxicity)
    device: str = "cpu"
