"""Unpaired examples for the KTO stage: loading, normalising and row-by-row validation.

The format is TRL's unpaired preference one, conversational: `{"prompt": [messages...], "completion": [assistant
message], "label": true|false}` — `true` marks a desirable reply, `false` an undesirable one. Accepted row shapes:
- unpaired: `prompt` (messages, or a plain string for one user turn), `completion` (a list of assistant messages,
  one message, or a plain string) and `label`;
- a labelled conversation: `{"messages": [..., assistant reply], "label": ...}` (LLaMA-Factory's KTO format): the
  last assistant message is the completion, the turns before it the prompt;
- a preference pair, in any shape data/preferences.py accepts: the chosen reply becomes a desirable example and
  the rejected one an undesirable example of the same prompt (two rows).

`label` must be a boolean (JSON true/false, or 0/1, "true"/"false" as CSV files write them). The label store's
export (`data.store.LabelStore.export_kto`, spec `labels:<store>`) is the unpaired shape: thumbs up/down from the
chat app and the serve API, the labeling app's top- and bottom-ranked replies.

Bad rows — malformed, an empty completion, a missing or non-boolean label, or a bad pair — are dropped with their
row numbers or refused, as for pairs (data/preferences.py: `on_bad_rows`).
"""

from __future__ import annotations

from align.data.preferences import check_preference_row, load_checked
from align.data.registry import Rows, check_messages
from align.errors import DataError

LABELS = {True: True, False: False, 1: True, 0: False, "true": True, "false": False}


def _label(value, source: str, number: int) -> bool:
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, float) and key in (0.0, 1.0):
        key = int(key)
    try:
        return LABELS[key]
    except (KeyError, TypeError):
        raise DataError(source, number, "label", f"must be true (desirable) or false (undesirable), not "
                                                 f"{value!r}") from None


def _unpaired(prompt: list[dict], completion: list[dict], label: bool, source: str, number: int) -> dict:
    if prompt[-1]["role"] != "user":
        raise DataError(source, number, f"prompt[{len(prompt) - 1}].role", "the prompt must end with the user's turn")
    if any(m["role"] != "assistant" for m in completion):
        bad = next(i for i, m in enumerate(completion) if m["role"] != "assistant")
        raise DataError(source, number, f"completion[{bad}].role", "a completion must be the assistant's message")
    return {"prompt": prompt, "completion": completion, "label": label}


def check_unpaired_row(row, source: str, number: int) -> dict | list[dict]:
    """One row → an unpaired example (or two, from a preference pair), or a DataError saying why not."""
    if not isinstance(row, dict):
        raise DataError(source, number, None, "an unpaired row must be an object with prompt, completion and label")
    if "chosen" in row or "rejected" in row:
        pair = check_preference_row(row, source, number)
        return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
    if "label" not in row:
        raise DataError(source, number, "label", "missing (unpaired rows are {prompt, completion, label})")
    label = _label(row["label"], source, number)
    if "messages" in row and "completion" not in row:
        messages = check_messages(row["messages"], source, number, "messages", need_assistant_last=True)
        if len(messages) < 2:
            raise DataError(source, number, "messages", "needs the turns before the reply as its prompt")
        return _unpaired(messages[:-1], messages[-1:], label, source, number)
    for name in ("prompt", "completion"):
        if row.get(name) is None:
            raise DataError(source, number, name, "missing (unpaired rows are {prompt, completion, label})")
    prompt, completion = row["prompt"], row["completion"]
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    completion = [completion] if isinstance(completion, dict) else completion
    if isinstance(completion, str):
        if not completion.strip():
            raise DataError(source, number, "completion", "empty reply")
        completion = [{"role": "assistant", "content": completion}]
    prompt = check_messages(prompt, source, number, "prompt")
    completion = check_messages(completion, source, number, "completion")
    return _unpaired(prompt, completion, label, source, number)


def load_unpaired(spec: str, split: str = "train", limit: int = -1, on_bad: str = "drop") -> Rows:
    """Validated unpaired examples of a spec's split, with their desirable/undesirable counts in `Rows.counts`
    (the manifest's data entry). `limit` counts rows read (a pair is one row read, two examples)."""
    rows = load_checked(spec, split, check_unpaired_row, kind="unpaired", limit=limit, on_bad=on_bad)
    desirable = sum(1 for row in rows.rows if row["label"])
    rows.counts = {"desirable": desirable, "undesirable": len(rows.rows) - desirable}
    return rows


def balanced_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that balance the two kinds by their counts, as the KTO paper suggests
    (its eq. 8: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) in [1, 4/3]): the more common
    kind weighs 1, the rarer one the ratio of the counts, rounded to 2 decimals on the side that keeps the ratio
    in the range (a desirable weight up, an undesirable one down); (1, 1) when either is absent."""
    import math

    if not desirable or not undesirable:
        return 1.0, 1.0
    if desirable >= undesirable:
        return 1.0, math.floor(100 * desirable / undesirable) / 100
    return math.ceil(100 * undesirable / desirable) / 100, 1.0
