"""Reading a spec's rows lazily, for curation that streams (`curate.streaming`): one row at a time, never the file.

JSONL, JSONL.gz and Parquet files (your own or a shipped dataset's) are read line by line or batch by batch, a hub
id through `datasets.load_dataset(..., streaming=True)`; the held-out split of a file without one is every 10th
row, as data/registry.py splits it, so the rows, their numbers, sources and hashes are the ones `read_spec` gives.
Other specs (a JSON list, CSV, a label store, a curated folder) are read whole, one part at a time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

from align.errors import DataError
from align.paths import DATA_DIR
from align.data.registry import HOLDOUT_EVERY, catalog, curated_folder, iter_file_rows, read_spec

LAZY_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
Rows = Iterator[tuple[int, object]]  # (row number in the source, raw row)


def held_out(rows: Rows, split: str) -> Rows:
    """Every 10th row (counted without blank lines) as `test`, the others as `train`."""
    for position, (number, row) in enumerate(rows, 1):
        if (position % HOLDOUT_EVERY == 0) == (split == "test"):
            yield number, row


def lazy_path(spec: str, split: str) -> Path | None:
    """The file a spec's split reads when it can be read lazily (a shipped dataset's file, a JSONL/Parquet file)."""
    if spec in catalog():
        path = DATA_DIR / catalog()[spec]["files"][split]
    elif spec.startswith("labels:") or curated_folder(spec) is not None:
        return None
    else:
        path = Path(spec).expanduser()
    return path if path.is_file() and path.name.lower().endswith(LAZY_SUFFIXES) else None


def is_hub_id(spec: str) -> bool:
    path = Path(spec).expanduser()
    return (spec not in catalog() and not spec.startswith(("labels:", "curated", ".", "/", "~")) and not path.exists()
            and not path.suffix)


def rows_of(spec: str, split: str, lazy: bool) -> tuple[Rows, str, Callable[[], str]]:
    """(the split's rows with their numbers, the source name, the source's sha256 once read): lazily when `lazy`
    and the spec allows, else through read_spec."""
    path = lazy_path(spec, split) if lazy else None
    if path is not None:
        from align.hashing import sha256_file

        rows = iter_file_rows(path)
        if spec in catalog():
            return rows, str(path.relative_to(DATA_DIR.parent)), lambda: sha256_file(path)
        return held_out(rows, split), str(path), lambda: sha256_file(path)
    if lazy and is_hub_id(spec):
        return _hub_rows(spec, split)
    rows, source, sha, numbers = read_spec(spec, split)
    return iter(zip(numbers, rows)), source, lambda: sha


def _hub_rows(spec: str, split: str) -> tuple[Rows, str, Callable[[], str]]:
    try:
        from datasets import load_dataset

        dataset = load_dataset(spec, streaming=True)
    except Exception as exc:  # offline, missing, private...
        raise DataError(spec, None, None, f"not a shipped dataset, a file, or a loadable hub dataset "
                                          f"({exc})".splitlines()[0]) from None
    digest = hashlib.sha256()  # of the rows streamed (a streamed hub split has no file to hash)

    def hashed(rows):
        for number, row in rows:
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
            yield number, row

    if split in dataset:
        return hashed(enumerate(dataset[split], 1)), f"hub:{spec}:{split}", digest.hexdigest
    first = dataset[list(dataset.keys())[0]]
    return held_out(hashed(enumerate(first, 1)), split), f"hub:{spec}", digest.hexdigest


def size_mb(parts: list[str]) -> float:
    """Megabytes of the local files a spec's parts read (a hub id, a label store: 0)."""
    total = 0
    for part in parts:
        paths = {DATA_DIR / name for name in catalog()[part]["files"].values()} if part in catalog() else \
            {Path(part).expanduser()}
        total += sum(path.stat().st_size for path in paths if path.is_file())
    return total / 1e6
