"""Reading a dataset spec for curation: both splits, every row validated by the checks the stages use.

Any spec the stages accept (data/registry.py) works, a comma-joined mix too. The kind (chat or preference) is the
recipe's, or the first row's; a row of the other kind, a file that cannot be read or a row that is not a row at all
stops curation with a DataError naming the file, the row and the field, before anything is written. A row the
stages' checks refuse (an empty turn, a tie, identical replies, a missing field, an unknown role) also stops it
under `on_bad_rows=refuse`; under `drop` it is left out and counted with its reason, like every other step's.
"""

from __future__ import annotations

from align.errors import DataError
from align.data.curate import CHAT, PREFERENCE, Record, Removed, StepResult
from align.data.registry import check_chat_row, mix_parts, read_spec

STEP = "validate"
SPLITS = ("test", "train")  # the test split first: a train row duplicating a held-out one is the one that goes


def row_kind(row, source: str, number: int) -> str:
    if isinstance(row, dict) and "messages" in row:
        return CHAT
    if isinstance(row, dict) and ("chosen" in row or "rejected" in row):
        return PREFERENCE
    raise DataError(source, number, "messages", "neither a chat row ({\"messages\": [...]}) nor a preference pair "
                                                "({\"prompt\", \"chosen\", \"rejected\"})")


def _reason(error: DataError) -> str:
    message = error.message
    if message in ("is empty", "empty reply"):
        return "empty_turn"
    if "identical" in message:
        return "identical_pair"
    if "tie" in message:
        return "tie"
    return "invalid"


def load(spec: str, kind: str = "auto", on_bad_rows: str = "drop") -> tuple[StepResult, list[dict]]:
    """(the valid rows of both splits as records, and those left out; each part's manifest entry)."""
    from align.data.preferences import check_preference_row

    checks = {CHAT: check_chat_row, PREFERENCE: check_preference_row}
    result = StepResult(kept=[], notes={"rows_read": {}})
    entries = []
    chosen_kind = None if kind == "auto" else kind
    for part in mix_parts(spec):
        for split in SPLITS:
            rows, source, sha, numbers = read_spec(part, split)
            entries.append({"spec": part, "split": split, "rows": len(rows), "sha256": sha, "source": source})
            result.notes["rows_read"][split] = result.notes["rows_read"].get(split, 0) + len(rows)
            for row, number in zip(rows, numbers):
                this = row_kind(row, source, number)
                chosen_kind = chosen_kind or this
                if this != chosen_kind:
                    raise DataError(source, number, None, f"a {this} row among {chosen_kind} rows (curate one kind "
                                                          f"at a time)")
                record_id = f"{source}:{number}"
                try:
                    clean = checks[this](row, source, number)
                except DataError as error:
                    if on_bad_rows == "refuse":
                        raise
                    invalid = Record(record_id, split, source, row if isinstance(row, dict) else {}, this)
                    result.removed.append(Removed(invalid, STEP, _reason(error),
                                                  f"{error.field or 'row'}: {error.message}"))
                    continue
                result.kept.append(Record(record_id, split, source, clean, this))
    if not result.kept:
        first = result.removed[0].detail if result.removed else "no rows"
        raise DataError(spec, None, None, f"no valid rows to curate (first problem: {first})")
    result.notes["kind"] = chosen_kind
    return result, entries
