"""Dataset specs → validated rows in TRL's conversational formats.

A spec is one of:
- a shipped dataset name from data/catalog.json (`hh-harmless-chosen`, `hh-harmless`, ...; `python -m align.run
  data` lists them), with its fixed train/test split;
- a path to the user's own file: JSONL, JSON (a list of rows), Parquet or CSV;
- `labels:<store path or database URL>`: what align's label store exports: preference pairs (the labeling app's
  rankings, the chat's compare choices) or, for unpaired data (kto), its thumbs and top/bottom-ranked replies;
- a hub id (`org/name`, loaded with `datasets.load_dataset`; needs the hub or its local cache);
- `curated` (the newest finished `python -m align.run curate` under ./runs, or $ALIGN_RUNS_DIR), `curated:<run
  folder>`, or a curate folder's path (runs/<run>/curate): the curated rows, with the splits curation kept;
- several of these joined by commas (`hh-harmless,labels:runs/demo/labels.sqlite`): their rows one after the
  other (a row limit applies to each; a part with no rows in a split, e.g. a label store of fewer than 10 rows in
  `test`, is left out of that split, said so, as long as another part has rows).

A file, a label store or a hub dataset without a `test` split is split deterministically: every 10th row
(rows 10, 20, ...) is held out as `test`, the rest is `train`.

Every row is checked before any training starts; a bad one stops the run with a DataError naming the file,
the 1-based row and the field.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from align.errors import DataError
from align.log import log
from align.paths import DATA_DIR

ROLES = ("system", "user", "assistant")


class EmptySplit(DataError):
    """A spec whose split holds no rows at all."""

HOLDOUT_EVERY = 10


_URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^:/@\s,]+):[^@/\s,]+@")


def shown_spec(spec: str) -> str:
    """A spec as manifests and logs may show it: the password of any database URL in it replaced by ***."""
    return _URL_PASSWORD.sub(r"\1:***@", spec)


@dataclass
class Rows:
    """Validated rows plus where they came from (recorded in the manifest)."""

    spec: str
    split: str
    rows: list[dict]
    source: str  # the file, store or hub id read
    sha256: str
    dropped: list[str] = field(default_factory=list)  # "row N: reason" for rows left out by policy
    prompts_trimmed: int = 0  # prompts that lost their earliest turns to a token budget
    counts: dict = field(default_factory=dict)  # a loader's own tallies for the manifest (KTO: desirable, undesirable)

    def manifest_entry(self) -> dict:
        entry = {"spec": shown_spec(self.spec), "split": self.split, "rows": len(self.rows), "sha256": self.sha256,
                 "source": shown_spec(self.source)}
        if self.dropped:
            entry["dropped"] = len(self.dropped)
        if self.prompts_trimmed:
            entry["prompts_trimmed"] = self.prompts_trimmed
        return {**entry, **self.counts}

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_list(self.rows)


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    entries = json.loads((DATA_DIR / "catalog.json").read_text(encoding="utf-8"))
    return {entry["name"]: entry for entry in entries}


# ------------------------------------------------------------------------------------------------- reading


def _read_file(path: Path) -> tuple[list, list[int]]:
    """The rows of a file and each one's row number: its line in a JSONL or CSV file (blank lines counted, so every
    error names the line an editor shows; a CSV record spanning lines by the line it starts on), its position in a
    JSON list or Parquet table."""
    rows, numbers = _read_rows(path)
    return rows, numbers if numbers is not None else list(range(1, len(rows) + 1))


def iter_file_rows(path: Path) -> Iterator[tuple[int, object]]:
    """A JSONL/JSONL.gz file's rows one at a time with their line numbers (blank lines skipped, counted), or a
    Parquet file's, batch by batch, with their positions; a bad line stops it with a DataError naming the file and
    the line. (What `curate.streaming` reads, and _read_rows's JSONL reading.)"""
    try:
        if path.name.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            number = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
            return
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(path, number, None, "not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(path, number, None, f"not valid JSON: {exc.msg}") from None
    except (OSError, EOFError) as exc:  # EOFError: a truncated .gz
        what = "cut off (truncated)" if isinstance(exc, EOFError) else "cannot read"
        raise DataError(path, None, None, f"{what}: {exc}".splitlines()[0]) from None


def _read_rows(path: Path) -> tuple[list, list[int] | None]:
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".jsonl.gz")):
            numbered = list(iter_file_rows(path))
            return [row for _, row in numbered], [number for number, _ in numbered]
        if name.endswith(".json"):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(path, None, None, f"not valid JSON (line {exc.lineno}): {exc.msg}") from None
            if isinstance(data, dict) and "data" in data:
                data = data["data"]
            if not isinstance(data, list):
                raise DataError(path, None, None, "a JSON dataset must be a list of rows (or {\"data\": [...]})")
            return data, None
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist(), None
        if name.endswith(".csv"):
            import pandas as pd

            text, numbers = _csv_text_and_line_numbers(path)
            frame = pd.read_csv(io.StringIO(text))
            rows = [{k: _maybe_json(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
            return rows, numbers if len(numbers) == len(rows) else None
    except (OSError, ValueError, EOFError) as exc:  # EOFError: a truncated .gz
        if isinstance(exc, DataError):
            raise
        what = "cut off (truncated)" if isinstance(exc, EOFError) else "cannot read"
        raise DataError(path, None, None, f"{what}: {exc}".splitlines()[0]) from None
    raise DataError(path, None, None, "unknown file type: use .jsonl, .jsonl.gz, .json, .parquet or .csv")


def _csv_text_and_line_numbers(path: Path) -> tuple[str, list[int]]:
    """The file's text (read once, for pandas too) and the line each CSV record starts on: blank lines skipped (as
    pandas does), a quoted field that spans lines counted whole, the header not a record. Raises DataError at the
    first line that is not UTF-8."""
    import csv

    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not text
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # the line the first bad byte is on
        raise DataError(path, data[:exc.start].count(b"\n") + 1, None, "not UTF-8 text") from None
    numbers, previous, header = [], 0, True
    reader = csv.reader(io.StringIO(text, newline=""))
    for record in reader:
        start, previous = previous + 1, reader.line_num
        if not record:
            continue
        if header:
            header = False
            continue
        numbers.append(start)
    return text, numbers


def _maybe_json(value):
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _holdout(rows: list, split: str) -> list:
    if split == "all":
        return rows
    test = [r for i, r in enumerate(rows, 1) if i % HOLDOUT_EVERY == 0]
    return test if split == "test" else [r for i, r in enumerate(rows, 1) if i % HOLDOUT_EVERY != 0]


#: the kinds of shipped data a loader of each kind reads (unpaired data also comes from pairs, split in two)
KINDS_READ = {"unpaired": ("unpaired", "preference")}


def _fits(kind: str | None, found: str | None) -> bool:
    return not kind or not found or found in KINDS_READ.get(kind, (kind,))


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _digest(rows: list) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def curated_folder(spec: str) -> Path | None:
    """The curate folder a spec names (`curated`, `curated:<run folder or curate folder>`, a curate folder's path),
    or None for a spec of another kind."""
    from align.manifests import MANIFEST, finished_stages

    if spec == "curated":
        runs = Path(os.environ.get("ALIGN_RUNS_DIR", "runs"))
        found = finished_stages(runs, "curate")
        if not found:
            raise DataError(spec, None, None, f"no finished curate run under {runs}/ (run `python -m align.run "
                                              f"curate` first, or name one: curated:runs/<run>)")
        return found[0]
    path = Path(spec.split(":", 1)[1] if spec.startswith("curated:") else spec).expanduser()
    for folder in (path / "curate", path):
        if (folder / MANIFEST).is_file() and (folder / "train.jsonl").is_file():
            return folder
    if spec.startswith("curated:"):
        raise DataError(path, None, None, "no finished curate folder here (runs/<run> or runs/<run>/curate)")
    return None


def _read_curated(folder: Path, split: str, kind: str | None) -> tuple[list, str, str, list[int]]:
    from align.hashing import sha256_file
    from align.manifests import read_manifest

    curated_kind = ((read_manifest(folder) or {}).get("metrics") or {}).get("kind")
    if not _fits(kind, curated_kind):
        raise DataError(folder, None, None, f"holds curated {curated_kind} data, this stage needs {kind} data")
    rows, numbers, digests = [], [], []
    for name in (("train", "test") if split == "all" else (split,)):
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(path, None, None, f"the curated {name} split is missing")
        part, part_numbers = _read_file(path)
        rows += part
        numbers += part_numbers
        digests.append(sha256_file(path))
    return rows, str(folder), hashlib.sha256("".join(digests).encode()).hexdigest(), numbers


def read_spec(spec: str, split: str, kind: str | None = None) -> tuple[list, str, str, list[int]]:
    """Raw rows of a spec's split: (rows, source name, sha256, 1-based row numbers in the source)."""
    curated = curated_folder(spec) if spec not in catalog() and not spec.startswith("labels:") else None
    if curated is not None:
        return _read_curated(curated, split, kind)
    if spec in catalog():
        entry = catalog()[spec]
        if not _fits(kind, entry["kind"]):
            raise DataError(spec, None, None, f"is {_a(entry['kind'])} dataset, this stage needs {kind} data")
        path = DATA_DIR / entry["files"][split]
        from align.hashing import sha256_file

        rows, numbers = _read_file(path)
        return rows, str(path.relative_to(DATA_DIR.parent)), sha256_file(path), numbers
    if spec.startswith("labels:"):
        target = spec.split(":", 1)[1]
        if "://" not in target and not Path(target).is_file():
            raise DataError(target, None, None, "label store not found")
        rows = _store_rows(target, kind)
        numbers = [i for i in range(1, len(rows) + 1)]
        kept = _holdout(list(zip(numbers, rows)), split)
        return [r for _, r in kept], target, _digest(rows), [n for n, _ in kept]
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or Path(spec).suffix in (".jsonl", ".json", ".parquet", ".csv", ".gz"):
        if not path.is_file():
            raise DataError(spec, None, None, "file not found")
        from align.hashing import sha256_file

        rows, numbers = _read_file(path)
        numbered = _holdout(list(zip(numbers, rows)), split)  # every 10th row held out, counted without blanks
        return [r for _, r in numbered], str(path), sha256_file(path), [n for n, _ in numbered]
    return _read_hub(spec, split)


def _store_rows(target: str, kind: str | None) -> list[dict]:
    """A label store's export: unpaired rows (`export_kto`) for unpaired data, else preference pairs; both for
    `kind="all"` (a digest of everything the store gives training)."""
    from align.data.store import open_store

    store = open_store(target)
    try:
        if kind == "unpaired":
            return store.export_kto()
        return store.export_preferences() + (store.export_kto() if kind == "all" else [])
    finally:
        store.close()


def _read_hub(spec: str, split: str):
    try:
        from datasets import load_dataset

        dataset = load_dataset(spec)
    except Exception as exc:  # offline, missing, private...
        raise DataError(spec, None, None, f"not a shipped dataset, a file, or a loadable hub dataset ({exc})".splitlines()[0]) from None
    if split in dataset:
        rows = dataset[split].to_list()
        return rows, f"hub:{spec}:{split}", _digest(rows), list(range(1, len(rows) + 1))
    first = dataset[list(dataset.keys())[0]].to_list()
    numbered = _holdout(list(enumerate(first, 1)), split)
    return [r for _, r in numbered], f"hub:{spec}", _digest(first), [n for n, _ in numbered]


# ---------------------------------------------------------------------------------------------- validation


def check_messages(messages, source: str, row: int, field_name: str = "messages", *, need_assistant_last: bool = False) -> list[dict]:
    """A list of {role, content} messages the chat template can render; returns clean copies."""
    if not isinstance(messages, list) or not messages:
        raise DataError(source, row, field_name, "must be a non-empty list of {role, content} messages")
    clean = []
    for i, message in enumerate(messages):
        where = f"{field_name}[{i}]"
        if not isinstance(message, dict):
            raise DataError(source, row, where, "must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(source, row, f"{where}.role",
                            f"role {role!r} cannot be rendered by the chat template (use one of {', '.join(ROLES)})")
        if role == "system" and i != 0:
            raise DataError(source, row, f"{where}.role", "a system message may only come first")
        if not isinstance(content, str):
            raise DataError(source, row, f"{where}.content", "must be a string")
        if not content.strip():
            raise DataError(source, row, f"{where}.content", "is empty")
        clean.append({"role": role, "content": content})
    if need_assistant_last and clean[-1]["role"] != "assistant":
        raise DataError(source, row, f"{field_name}[{len(clean) - 1}].role", "the last message must be the assistant's reply")
    return clean


def _check_chat_row(row, source: str, number: int) -> dict:
    if not isinstance(row, dict) or "messages" not in row:
        raise DataError(source, number, "messages", "missing (chat rows are {\"messages\": [{\"role\", \"content\"}, ...]})")
    messages = check_messages(row["messages"], source, number, need_assistant_last=True)
    if not any(m["role"] == "user" for m in messages):
        raise DataError(source, number, "messages", "has no user message")
    return {"messages": messages}


check_chat_row = _check_chat_row  # public: data.curate validates row by row


def _check_prompt_row(row, source: str, number: int) -> dict:
    """Prompt rows come from prompt, chat or preference data: the conversation up to the assistant's turn."""
    if not isinstance(row, dict):
        raise DataError(source, number, "prompt", "row must be an object")
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        messages = check_messages(prompt, source, number, "prompt")
    elif "messages" in row:
        messages = check_messages(row["messages"], source, number)
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
    else:
        raise DataError(source, number, "prompt", "missing (prompt rows are {\"prompt\": [messages]} or chat rows)")
    if not messages or messages[-1]["role"] != "user":
        raise DataError(source, number, "prompt", "must end with a user message")
    return {"prompt": messages}


def mix_parts(spec: str) -> list[str]:
    """The specs of a comma-joined mix (a single spec, or an existing file with a comma in its name, is one part)."""
    if "," not in spec or Path(spec).expanduser().exists():
        return [spec]
    return [part.strip() for part in spec.split(",") if part.strip()]


def spec_digest(spec: str) -> str | None:
    """A cheap content hash of what a spec reads, or None when the string is not a local dataset spec.

    Used to tell whether a finished stage's inputs changed (pipeline resume).
    """
    parts = mix_parts(spec)
    if len(parts) > 1:
        digests = [spec_digest(part) for part in parts]
        return None if None in digests else hashlib.sha256("".join(digests).encode()).hexdigest()
    from align.hashing import sha256_file

    if spec in catalog():
        files = sorted(set(catalog()[spec]["files"].values()))
        return hashlib.sha256("".join(sha256_file(DATA_DIR / f) for f in files).encode()).hexdigest()
    if spec.startswith("labels:") or spec == "curated" or spec.startswith("curated:") or Path(spec).is_dir():
        try:  # a label store: everything it exports for training (pairs and the unpaired thumbs)
            return read_spec(spec, "all", kind="all" if spec.startswith("labels:") else None)[2]
        except DataError:
            return None
    path = Path(spec).expanduser()
    return sha256_file(path) if path.is_file() else None


def load_rows(spec: str, split: str, check: Callable[[object, str, int], dict], *, kind: str | None = None,
              limit: int = -1) -> Rows:
    parts = mix_parts(spec)
    if len(parts) > 1:
        loaded = []
        for part in parts:
            try:
                loaded.append(load_rows(part, split, check, kind=kind, limit=limit))
            except EmptySplit as empty:
                log.info(f"{shown_spec(part)}: no {split} rows, left out of the {split} split ({empty.message})")
        if not loaded:
            raise EmptySplit(spec, None, None, f"the {split} split has no rows in any part")
        return Rows(spec=spec, split=split, rows=[row for part in loaded for row in part.rows],
                    source=" + ".join(part.source for part in loaded),
                    sha256=hashlib.sha256("".join(part.sha256 for part in loaded).encode()).hexdigest())
    rows, source, sha, numbers = read_spec(spec, split, kind)
    if not rows:
        raise EmptySplit(source, None, None, f"the {split} split has no rows")
    if limit is not None and limit >= 0:
        rows, numbers = rows[:limit], numbers[:limit]
    clean = [check(row, source, number) for row, number in zip(rows, numbers)]
    return Rows(spec=spec, split=split, rows=clean, source=source, sha256=sha)


def load_chat(spec: str, split: str = "train", limit: int = -1) -> Rows:
    """Chat rows for SFT: {"messages": [...]} ending with the assistant's reply."""
    return load_rows(spec, split, _check_chat_row, kind="chat", limit=limit)


def load_prompts(spec: str, split: str = "train", limit: int = -1) -> Rows:
    """Prompt rows for generation: {"prompt": [...]} ending with a user message (from any conversational data)."""
    return load_rows(spec, split, _check_prompt_row, limit=limit)


def describe() -> list[dict]:
    return list(catalog().values())
