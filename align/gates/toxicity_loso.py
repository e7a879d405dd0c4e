"""Leave-one-source-out (LOSO) evaluation of the offline toxicity scorer against a bag-of-words baseline.

How well the scorer ranks toxicity on text unlike anything it was trained on: for each shipped source
(civil, jigsaw, davidson) the build recipe (`align.gates.toxicity_train`, same options) is trained on
the default build's training rows of every *other* source, and tested on the left-out source: its whole
shipped file, or for Davidson (24,783 tweets) a fixed sample of LOSO_TEST_ROWS["davidson"] rows,
stratified by annotator class and seeded with SPLIT_SEED. The metric is the AUROC of the `toxicity`
label (a row is positive when its score is >= 0.5), for three scorers trained on exactly the same rows:
- `scorer`: what the gate loads (the encoder/bag-of-words blend at the options' bow_weight);
- `encoder`: the fine-tuned MiniLM alone;
- `baseline`: the bag of words alone (`align.gates.toxicity_bow`).

`python -m align.run toxicity-model --loso` runs it, prints the table and writes the JSON
(default: `cache_dir("toxicity") / "loso-<version>[-<options hash>].json"`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from align.gates import toxicity_bow
from align.gates.toxicity_train import (
    BUILD_VERSION,
    SPLIT_SEED,
    BuildOptions,
    auroc_by_label,
    make_options,
    select_training_rows,
    split_heldout,
    train_scorer,
)
from align.data.toxicity_labels import load_labeled_rows
from align.log import get
from align.paths import cache_dir

log = get("toxicity")  # [align] toxicity: …

#: Left-out rows tested per source (a fixed, class-stratified sample); a source not named: its whole file.
LOSO_TEST_ROWS = {"davidson": 3000}
#: The scorers compared in each fold, in table order.
SCORERS = ("scorer", "encoder", "baseline")
PART_OF = {"scorer": "scorer", "encoder": "encoder", "baseline": "bow"}


@dataclasses.dataclass
class Fold:
    """One LOSO fold: train on `train` (no row of `left_out`), test on `test` (only rows of `left_out`)."""

    left_out: str
    train: pd.DataFrame
    test: pd.DataFrame


def _stratified_sample(rows: pd.DataFrame, size: int | None, seed: int) -> pd.DataFrame:
    """About `size` rows (rounded per stratum), sampled within each stratum in proportion (all when size is None or larger)."""
    if size is None or size >= len(rows):
        return rows
    parts = [g.sample(max(1, round(size * len(g) / len(rows))), random_state=seed)
             for _, g in rows.groupby("stratum", sort=True)]
    return pd.concat(parts).sort_index()


def loso_folds(rows: pd.DataFrame, train_rows: pd.DataFrame, test_rows: dict[str, int | None] | None = None,
               sources: list[str] | None = None) -> list[Fold]:
    """The folds: per source, `train_rows` less that source, and that source's rows of `rows` (sampled).

    `test_rows`: rows tested per source (default LOSO_TEST_ROWS; a source not named is tested whole).
    """
    test_rows = LOSO_TEST_ROWS if test_rows is None else test_rows
    folds = []
    for source in sources or sorted(rows["source"].unique()):
        test = _stratified_sample(rows[rows["source"] == source], test_rows.get(source), SPLIT_SEED)
        folds.append(Fold(source, train_rows[train_rows["source"] != source], test))
    return folds


def fold_scores(fold: Fold, opts: BuildOptions, progress: bool) -> tuple[dict, dict, float]:
    """Train the recipe on the fold's rows and score its test rows: (parts' scores, training stats, seconds)."""
    scorer, training = train_scorer(fold.train, opts, progress)
    started = time.perf_counter()
    parts = scorer.score_parts(fold.test["text"].tolist(), progress=progress)
    return parts, training, time.perf_counter() - started


def evaluate_fold(fold: Fold, opts: BuildOptions, progress: bool) -> dict:
    """Train the recipe on the fold's rows; AUROC of `toxicity` on its test rows for each of SCORERS."""
    started = time.perf_counter()
    parts, training, score_s = fold_scores(fold, opts, progress)
    texts = fold.test["text"].tolist()
    result = {"left_out": fold.left_out,
              "train_rows": fold.train["source"].value_counts().sort_index().to_dict(),
              "test_rows": len(fold.test)}
    for name in SCORERS:
        toxicity = auroc_by_label(fold.test, parts[PART_OF[name]])["toxicity"]
        result[name] = toxicity["auroc"]
        result["test_positives"] = toxicity["positives"]
    result.update(train_steps=training["steps"], train_s=training["seconds"], score_s=round(score_s, 1),
                  texts_per_s=round(len(texts) / score_s, 1) if score_s > 0 else None,
                  wall_s=round(time.perf_counter() - started, 1))
    return result


def run_loso(progress: bool = True, threads: int | None = None, test_rows: dict[str, int | None] | None = None,
             sources: list[str] | None = None, **options) -> dict:
    """Every fold of the build recipe with `options` (BuildOptions fields); returns the JSON-ready result."""
    import torch

    opts = make_options(**options)
    rows = load_labeled_rows()
    pool, _ = split_heldout(rows)
    train_rows = select_training_rows(pool, opts)
    folds = loso_folds(rows, train_rows, test_rows, sources)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        results = []
        for number, fold in enumerate(folds, 1):
            if progress:
                log.info(f"LOSO fold {number}/{len(folds)}: leave out {fold.left_out} "
                         f"(train {len(fold.train)} rows, test {len(fold.test)})")
            results.append(evaluate_fold(fold, opts, progress))
    finally:
        torch.set_num_threads(previous)
    return {
        "version": BUILD_VERSION,
        "metric": "AUROC of the toxicity label on the left-out source (positive: score >= 0.5)",
        "baseline": toxicity_bow.describe(),
        "test_rows": {f.left_out: (LOSO_TEST_ROWS if test_rows is None else test_rows).get(f.left_out) or "all"
                      for f in folds},
        "sample_seed": SPLIT_SEED,
        "options": dataclasses.asdict(opts),
        "folds": results,
        "wall_s": round(time.perf_counter() - started, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def default_output(options: dict) -> Path:
    """Where `--loso` writes its JSON by default: beside the cached scorers, named by version and options."""
    opts = make_options(**options)
    name = f"loso-{BUILD_VERSION}"
    if opts != BuildOptions():
        name += "-" + hashlib.sha256(json.dumps(dataclasses.asdict(opts), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir("toxicity") / f"{name}.json"


def format_table(result: dict) -> str:
    """The LOSO result as a terminal table: one row per left-out source, one column per scorer."""
    header = f"{'left out':<10}{'train rows':>12}{'test (pos)':>14}" + "".join(f"{s:>10}" for s in SCORERS)
    lines = [header]
    for fold in result["folds"]:
        cells = "".join(f"{'n/a' if fold[s] is None else format(fold[s], '.3f'):>10}" for s in SCORERS)
        trained = sum(fold["train_rows"].values())
        tested = f"{fold['test_rows']} ({fold['test_positives']})"
        lines.append(f"{fold['left_out']:<10}{trained:>12}{tested:>14}" + cells)
    wins = [f["left_out"] for f in result["folds"] if None not in (f["scorer"], f["baseline"])
            and f["scorer"] > f["baseline"]]
    lines.append(f"scorer beats the baseline on {len(wins)} of {len(result['folds'])} left-out sources"
                 f"{' (' + ', '.join(wins) + ')' if wins else ''}; baseline: {result['baseline']}")
    lines.append(f"wall time {result['wall_s']} s")
    return "\n".join(lines)


def write_result(result: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
