"""Preference pairs for the reward-model and DPO stages: loading, normalising and row-by-row validation.

Accepted row shapes (the TRL preference formats), all normalised to the conversational one:
- explicit prompt: `{"prompt": [messages...], "chosen": [assistant message], "rejected": [assistant message]}`;
  `prompt` may also be a plain string (one user turn) and `chosen`/`rejected` plain strings (one assistant reply);
- implicit prompt: `{"chosen": [whole conversation], "rejected": [whole conversation]}`; the shared leading
  messages become the prompt, the differing last assistant message the replies.

The label store's export (`data.store.LabelStore.export_preferences`, spec `labels:<store>`) is the explicit,
conversational shape, so labels flow into training unchanged.

Bad rows are never silently trained on. Each is one of:
- malformed: a missing field, a message that is not {role, content}, an unknown role, a prompt that does not end
  with the user's turn, a reply that is not the assistant's;
- empty reply: `chosen` or `rejected` has no text;
- identical: `chosen` and `rejected` are the same reply (compared after stripping surrounding whitespace);
- tie: the row says so (`"tie": true`, or equal `score_chosen` / `score_rejected`).

`on_bad="refuse"` stops with a DataError naming the file, the first bad row, its field, and how many more there
are; `on_bad="drop"` leaves them out, prints a summary and lists each one ("row N, field 'f': reason") in
`Rows.dropped`, which the manifest counts and the stages write to `dropped_rows.txt`.
"""

from __future__ import annotations


from align.errors import ConfigError, DataError
from align.data.registry import Rows, check_messages, load_rows
from align.log import log

ON_BAD = ("drop", "refuse")
SHOWN_IN_SUMMARY = 5


def _as_messages(value, role: str):
    """A plain string becomes one message of `role`; anything else is returned for check_messages to judge."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):  # a single message instead of a list of one
        return [value]
    return value


def _split_implicit(chosen: list, rejected: list, source: str, number: int) -> tuple[list, list, list]:
    """Whole conversations → (shared prompt, chosen tail, rejected tail)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == len(chosen) == len(rejected):
        raise DataError(source, number, "chosen", "chosen and rejected are identical")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _check_reply(messages: list[dict], source: str, number: int, field_name: str) -> list[dict]:
    if any(m["role"] != "assistant" for m in messages):
        bad = next(i for i, m in enumerate(messages) if m["role"] != "assistant")
        raise DataError(source, number, f"{field_name}[{bad}].role", "a reply must be the assistant's message")
    return messages


def _is_tie(row: dict) -> bool:
    if row.get("tie") in (True, 1, "true", "yes"):
        return True
    scores = row.get("score_chosen"), row.get("score_rejected")
    return None not in scores and scores[0] == scores[1]


def check_preference_row(row, source: str, number: int) -> dict:
    """One row → {"prompt", "chosen", "rejected"} in the conversational format, or a DataError saying why not."""
    if not isinstance(row, dict):
        raise DataError(source, number, None, "a preference row must be an object with chosen and rejected")
    for name in ("chosen", "rejected"):
        if row.get(name) is None:
            raise DataError(source, number, name, "missing (preference rows are {prompt, chosen, rejected})")
        if isinstance(row[name], str) and not row[name].strip():
            raise DataError(source, number, f"{name}", "empty reply")
    if _is_tie(row):
        raise DataError(source, number, "chosen", "a tie: neither reply is preferred")
    chosen, rejected = _as_messages(row["chosen"], "assistant"), _as_messages(row["rejected"], "assistant")
    if row.get("prompt") is None:
        chosen = check_messages(chosen, source, number, "chosen", need_assistant_last=True)
        rejected = check_messages(rejected, source, number, "rejected", need_assistant_last=True)
        prompt, chosen, rejected = _split_implicit(chosen, rejected, source, number)
        if not prompt:
            raise DataError(source, number, "prompt", "missing, and chosen/rejected share no leading messages")
    else:
        prompt = check_messages(_as_messages(row["prompt"], "user"), source, number, "prompt")
        chosen = check_messages(chosen, source, number, "chosen")
        rejected = check_messages(rejected, source, number, "rejected")
    if prompt[-1]["role"] != "user":
        raise DataError(source, number, f"prompt[{len(prompt) - 1}].role", "the prompt must end with the user's turn")
    chosen = _check_reply(chosen, source, number, "chosen")
    rejected = _check_reply(rejected, source, number, "rejected")
    if [m["content"].strip() for m in chosen] == [m["content"].strip() for m in rejected]:
        raise DataError(source, number, "rejected", "chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _empty_reply_message(exc: DataError) -> DataError:
    """check_messages says a content 'is empty'; for a reply, call it what it is."""
    if exc.message == "is empty" and exc.field and exc.field.startswith(("chosen", "rejected", "completion")):
        return DataError(exc.file, exc.row, exc.field, "empty reply")
    return exc


def load_preferences(spec: str, split: str = "train", limit: int = -1, on_bad: str = "drop") -> Rows:
    """Validated preference pairs of a spec's split (see the module docstring for shapes and the bad-row policy).

    `limit` counts rows read, before bad ones are dropped, so the same rows are read whatever the policy.
    """
    return load_checked(spec, split, check_preference_row, kind="preference", limit=limit, on_bad=on_bad)


def load_checked(spec: str, split: str, check_row, *, kind: str, limit: int = -1, on_bad: str = "drop") -> Rows:
    """A spec's split checked row by row with `check_row(row, source, number)` (a clean row, a list of clean rows,
    or a DataError), under the bad-row policy of the module docstring: `refuse` raises the first DataError with the
    numbers of the others, `drop` leaves them out and lists them in `Rows.dropped`. `kind` names the rows in
    messages and decides which shipped datasets fit (data.registry)."""
    if on_bad not in ON_BAD:
        raise ConfigError(f"on_bad_rows={on_bad!r}: choose drop or refuse")
    bad: list[DataError] = []

    def check(row, source: str, number: int):
        try:
            return check_row(row, source, number)
        except DataError as exc:
            bad.append(_empty_reply_message(exc))
            return None

    loaded = load_rows(spec, split, check, kind=kind, limit=limit)
    if bad and on_bad == "refuse":
        first = bad[0]
        more = f" ({len(bad) - 1} more bad rows: {_row_list(bad[1:])}; on_bad_rows=drop leaves them out)" if len(bad) > 1 else ""
        raise DataError(first.file, first.row, first.field, first.message + more)
    kept = [clean for row in loaded.rows if row is not None for clean in (row if isinstance(row, list) else [row])]
    dropped = [_describe(exc) for exc in bad]
    if dropped:
        shown = "; ".join(dropped[:SHOWN_IN_SUMMARY]) + (" ..." if len(dropped) > SHOWN_IN_SUMMARY else "")
        log.info(f"{spec} ({split}): dropped {len(dropped)} of {len(loaded.rows)} {kind} rows: {shown}")
    if not kept:
        raise DataError(loaded.source, None, None, f"the {split} split has no usable {kind} rows "
                                                   f"({len(dropped)} dropped)")
    return Rows(spec=loaded.spec, split=split, rows=kept, source=loaded.source, sha256=loaded.sha256,
                dropped=dropped)


def _describe(exc: DataError) -> str:
    where = f"row {exc.row}" if exc.row is not None else "row ?"
    if exc.field:
        where += f", field '{exc.field}'"
    return f"{where}: {exc.message}"


def _row_list(errors: list[DataError], shown: int = 10) -> str:
    rows = ", ".join(str(e.row) for e in errors[:shown])
    return rows + (", ..." if len(errors) > shown else "")


def write_dropped(rows: Rows, folder) -> None:
    """The dropped rows of a dataset, one per line, in the stage's output folder (nothing when none)."""
    if not rows.dropped:
        return
    from pathlib import Path

    path = Path(folder) / "dropped_rows.txt"
    with path.open("a", encoding="utf-8") as out:
        out.write(f"# {rows.spec} ({rows.split}) from {rows.source}: {len(rows.dropped)} rows dropped\n")
        out.writelines(line + "\n" for line in rows.dropped)


def trim_prompt(prompt: list[dict], tokenizer, max_tokens: int) -> list[dict]:
    """The prompt without its earliest turns, as few left out as it takes for the rendered prompt (chat template,
    generation prompt included) to fit `max_tokens`. A leading system message stays; the conversation restarts at
    a user turn; the last user turn always stays, even when it alone is longer."""
    def length(messages):
        return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                 return_dict=True)["input_ids"])

    if max_tokens < 0 or length(prompt) <= max_tokens:
        return prompt
    system = [m for m in prompt[:1] if m["role"] == "system"]
    turns = prompt[len(system):]
    starts = [i for i, m in enumerate(turns) if m["role"] == "user"]
    for start in starts[1:]:
        if length(system + turns[start:]) <= max_tokens:
            return system + turns[start:]
    return system + turns[starts[-1]:]


def trim_prompts(rows: Rows, tokenizer, max_tokens: int) -> int:
    """Trim every pair's prompt to `max_tokens` in place (see trim_prompt); returns how many were shortened."""
    if max_tokens < 0:
        return 0
    trimmed = 0
    for row in rows.rows:
        shorter = trim_prompt(row["prompt"], tokenizer, max_tokens)
        if len(shorter) != len(row["prompt"]):
            row["prompt"], trimmed = shorter, trimmed + 1
    return trimmed


def unique_prompts(pairs: list[dict]) -> list[list[dict]]:
    """Each distinct prompt of the pairs once, in order (several pairs can share a prompt)."""
    import json

    seen, prompts = set(), []
    for pair in pairs:
        key = json.dumps(pair["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(pair["prompt"])
    return prompts
