"""Reading a dataset spec for curation: both splits, every row validated by the checks the stages use.

Any spec the stages accept (data/registry.py) works, a comma-joined mix too. The kind (chat or preference) is the
recipe's, or the first row's; a row of the other kind, a file that cannot be read or a row that is not a row at all
stops curation with a DataError naming the file, the row and the field, before anything is written. A row the
stages' checks refuse (an empty turn, a tie, identical replies, a missing field, an unknown role) also stops it
under `on_bad_rows=refuse`; under `drop` it is left out and counted with its reason, like every other step's.
"""

from __future__ import annotations

from typing import Iterator

from align.errors import DataError
from align.data.curate import CHAT, PREFERENCE, Record, Removed, StepResult
from align.data.registry import check_chat_row, mix_parts

STEP = "validate"
SPLITS = ("test", "train")  # every part's test split first: a train row duplicating a held-out one is the one that goes


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


class Reader:
    """The rows of a spec in curation's order — every part's held-out split, then every part's train split, so a
    training row that repeats a held-out one is the one that goes and the held-out rows are all known before any
    training row is checked against them — each checked, as records (kept) and Removed entries (refused).

    lazy: read files row by row (stream.py) instead of whole; share (rank, shards): only every shards-th row from
    the rank-th on (the rows a cluster task curates; numbered, counted and ordered as in the whole)."""

    def __init__(self, spec: str, kind: str = "auto", on_bad_rows: str = "drop", *, lazy: bool = False,
                 share: tuple[int, int] = (0, 1)):
        self.spec, self.on_bad_rows, self.lazy, self.share = spec, on_bad_rows, lazy, share
        self.kind = None if kind == "auto" else kind
        self.notes: dict = {"rows_read": {}}
        self._entries: dict[tuple[int, str], dict] = {}

    @property
    def entries(self) -> list[dict]:
        """Each part's and split's manifest entry (spec, split, rows, sha256, source), part by part."""
        return [self._entries[key] for key in sorted(self._entries, key=lambda k: (k[0], SPLITS.index(k[1])))]

    def __iter__(self) -> Iterator[Record | Removed]:
        from align.data.curate.stream import rows_of
        from align.data.preferences import check_preference_row

        checks = {CHAT: check_chat_row, PREFERENCE: check_preference_row}
        rank, shards = self.share
        order, kept = 0, 0
        for split in SPLITS:
            for index, part in enumerate(mix_parts(self.spec)):
                rows, source, sha = rows_of(part, split, self.lazy)
                count = 0
                for number, row in rows:
                    order += 1
                    if (order - 1) % shards != rank:
                        continue
                    count += 1
                    item = self._check(row, source, number, split, order, checks)
                    kept += isinstance(item, Record)
                    yield item
                self._entries[(index, split)] = {"spec": part, "split": split, "rows": count, "sha256": sha(),
                                                 "source": source}
                self.notes["rows_read"][split] = self.notes["rows_read"].get(split, 0) + count
        if not kept and shards == 1:
            raise DataError(self.spec, None, None, "no valid rows to curate (first problem: "
                                                   f"{self.notes.get('first_problem', 'no rows')})")
        self.notes["kind"] = self.kind

    def _check(self, row, source: str, number: int, split: str, order: int, checks) -> Record | Removed:
        this = row_kind(row, source, number)
        self.kind = self.kind or this
        if this != self.kind:
            raise DataError(source, number, None, f"a {this} row among {self.kind} rows (curate one kind at a time)")
        record_id = f"{source}:{number}"
        try:
            return Record(record_id, split, source, checks[this](row, source, number), this, order)
        except DataError as error:
            if self.on_bad_rows == "refuse":
                raise
            detail = f"{error.field or 'row'}: {error.message}"
            self.notes.setdefault("first_problem", detail)
            invalid = Record(record_id, split, source, row if isinstance(row, dict) else {}, this, order)
            return Removed(invalid, STEP, _reason(error), detail)

    def chunks(self, size: int) -> Iterator[StepResult]:
        """The rows in chunks of `size` read (each: the records kept, the rows refused)."""
        chunk = StepResult(kept=[])
        for item in self:
            (chunk.kept if isinstance(item, Record) else chunk.removed).append(item)
            if len(chunk.kept) + len(chunk.removed) >= size:
                yield chunk
                chunk = StepResult(kept=[])
        if chunk.kept or chunk.removed:
            yield chunk
