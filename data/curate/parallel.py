"""Row-by-row steps over many rows: one process, or several through `datasets.Dataset.map(num_proc=N)`.

A row step is a module-level function `fn(row, options) -> (row or None, reason, detail, changed)`: the row kept
(perhaps changed) or None with the reason it was left out. Rows travel to the worker processes as JSON strings, so
any row shape works and the order is kept.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable

from tqdm.auto import tqdm

from align.data.curate import Record, Removed, StepResult


def _apply_batch(batch: dict, fn, options: dict) -> dict:
    out = {"row": [], "reason": [], "detail": [], "changed": []}
    for text in batch["row"]:
        row, reason, detail, changed = fn(json.loads(text), options)
        out["row"].append(json.dumps(row) if row is not None else "")
        out["reason"].append(reason or "")
        out["detail"].append(detail or "")
        out["changed"].append(bool(changed))
    return out


def run_rows(records: list[Record], fn: Callable, options: dict, step: str, *, num_proc: int = 1,
             progress: bool = True) -> StepResult:
    """Apply a row step to every record; the removed ones carry the step's name and the reason fn gave."""
    if num_proc > 1 and len(records) >= 2 * num_proc:
        from datasets import Dataset, disable_progress_bars, enable_progress_bars

        dataset = Dataset.from_dict({"row": [json.dumps(r.row) for r in records]})
        if not progress:
            disable_progress_bars()
        try:
            mapped = dataset.map(_apply_batch, batched=True, batch_size=256, num_proc=num_proc,
                                 fn_kwargs={"fn": fn, "options": options}, desc=step, load_from_cache_file=False)
        finally:
            enable_progress_bars()
        outcomes = [(json.loads(row) if row else None, reason, detail, changed)
                    for row, reason, detail, changed in zip(mapped["row"], mapped["reason"], mapped["detail"],
                                                            mapped["changed"])]
    else:
        outcomes = [fn(record.row, options) for record in tqdm(records, desc=step, unit="row", disable=not progress)]
    result = StepResult(kept=[])
    for record, (row, reason, detail, changed) in zip(records, outcomes):
        if row is None:
            result.removed.append(Removed(record, step, reason, detail or ""))
            continue
        if changed:
            record = replace(record, row=row)
            result.changed += 1
        result.kept.append(record)
    return result
