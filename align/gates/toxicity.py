"""Toxicity scores for the gates, from the `detoxify` library.

`load_scorer(spec)` gives a `ToxicityScorer` whose `score(texts)` returns one probability per text
per label. The spec is:
- "offline" (the default): align's own scorer, a Detoxify-format checkpoint fine-tuned from the shipped
  MiniLM encoder on the labeled data in data/toxicity/ (optionally blended with a bag-of-words model
  fitted on the same rows; see `align.gates.toxicity_train`); built on first need (a few minutes on
  CPU) and cached under `cache_dir("toxicity")`;
- "original", "unbiased", "multilingual" (or "original-small", "unbiased-small"): Detoxify's
  official checkpoints, which download from GitHub, so they need the internet (or torch hub's cache);
- a path to a Detoxify .ckpt file, or to a folder holding `toxicity.ckpt` and its `hf/` config folder
  (what `python -m align.run toxicity-model` builds). When `scorer.json` lies beside the checkpoint
  (align's builds), the scorer normalises texts and blends in the bag of words as that file says.

Also the `toxicity-model` command: builds (or with --force rebuilds) the offline scorer and prints its
held-out AUROC per label; with --loso it runs the leave-one-source-out evaluation instead
(`align.gates.toxicity_loso`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from align.errors import ModelError
from align.gates.toxicity_train import (
    CHECKPOINT_NAME,
    CONFIG_FOLDER,
    SCORER_NAME,
    blend,
    build_offline_checkpoint,
    read_report,
)
from align.data.toxicity_labels import LABELS, normalize_text

OFFLINE = "offline"
OFFICIAL_MODELS = ("original", "unbiased", "multilingual", "original-small", "unbiased-small")

#: Inputs longer than this many texts get a progress bar.
PROGRESS_MIN_TEXTS = 256


class ToxicityScorer:
    """A loaded Detoxify model, optionally blended with a bag of words. `labels`: its output keys (with "toxicity").

    `bow`, `bow_weight`, `normalize`: see `align.gates.toxicity_train` (the blend is
    `(1 - bow_weight) * Detoxify + bow_weight * bow` for each label the bag of words has; texts pass
    through `normalize_text` first when `normalize`). Without them it is Detoxify's output as it is.
    """

    def __init__(self, detoxify_model, spec: str, checkpoint: Path | None = None, *, bow=None,
                 bow_weight: float = 0.0, normalize: bool = False):
        self.detoxify = detoxify_model
        self.spec = spec
        self.checkpoint = checkpoint
        self.bow = bow
        self.bow_weight = float(bow_weight) if bow is not None else 0.0
        self.normalize = normalize
        self.labels: list[str] = list(detoxify_model.class_names)
        if "toxicity" not in self.labels:
            raise ModelError(f"toxicity scorer '{spec}' has no 'toxicity' output (its labels: {self.labels})")

    def __repr__(self) -> str:
        blended = f", bow_weight={self.bow_weight}" if self.bow is not None else ""
        return f"ToxicityScorer(spec={self.spec!r}, labels={self.labels}{blended})"

    def score(self, texts: list[str], batch_size: int = 32, progress: bool | None = None) -> dict[str, np.ndarray]:
        """Probabilities per label, each an array with one value per text (in the order given).

        Texts are batched by length (less padding) through `Detoxify.predict`. `progress`: show a bar
        (default: only for more than PROGRESS_MIN_TEXTS texts).
        """
        from tqdm.auto import tqdm

        texts = [normalize_text(t) if self.normalize else str(t) for t in texts]
        out = {label: np.zeros(len(texts), dtype=np.float32) for label in self.labels}
        if not texts:
            return out
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        show = len(texts) > PROGRESS_MIN_TEXTS if progress is None else progress
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in tqdm(range(0, len(texts), batch_size), desc="toxicity", unit="batch", disable=not show):
            idx = order[start : start + batch_size]
            predicted = self.detoxify.predict([texts[i] for i in idx])
            for label in self.labels:
                out[label][idx] = np.atleast_1d(np.asarray(predicted[label], dtype=np.float32))
        if self.bow is not None:
            out = blend(out, self.bow.score(texts), self.bow_weight)
        return out


def _load_detoxify(**kwargs):
    import detoxify

    return detoxify.Detoxify(**kwargs)


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint file, Hugging Face config folder or None) for a .ckpt file or a built folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ModelError(
            f"toxicity scorer '{path}': no such checkpoint file. Use '{OFFLINE}' (align builds its own), "
            f"one of {', '.join(OFFICIAL_MODELS)} (needs the internet), or a path to a Detoxify .ckpt file"
        )
    config_dir = path.parent / CONFIG_FOLDER
    return path.resolve(), (config_dir.resolve() if (config_dir / "config.json").is_file() else None)


def read_blend(checkpoint: Path) -> dict:
    """ToxicityScorer keyword arguments from the `scorer.json` beside `checkpoint` ({} when there is none)."""
    from align.gates.toxicity_bow import BagOfWords

    spec_file = checkpoint.parent / SCORER_NAME
    if not spec_file.is_file():
        return {}
    try:
        spec = json.loads(spec_file.read_text())
        bow_file = checkpoint.parent / spec["bow"]
        weight, normalize = float(spec["bow_weight"]), bool(spec["normalize_text"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{spec_file}: unreadable blend spec ({type(error).__name__}: {error}); rebuild the "
                         f"scorer with `python -m align.run toxicity-model --force`") from error
    if weight == 0:
        return {"normalize": normalize}
    if not bow_file.is_file():
        raise ModelError(f"{spec_file}: names the bag-of-words model {bow_file}, which is missing; rebuild the "
                         f"scorer with `python -m align.run toxicity-model --force`")
    return {"bow": BagOfWords.load(bow_file), "bow_weight": weight, "normalize": normalize}


def load_scorer(spec: str = OFFLINE, device: str = "cpu") -> ToxicityScorer:
    """The toxicity scorer named by `spec` ("offline", an official Detoxify model name, or a path)."""
    spec = str(spec)
    if spec == OFFLINE:
        return load_scorer(str(build_offline_checkpoint()), device=device)
    if spec in OFFICIAL_MODELS:
        try:
            model = _load_detoxify(model_type=spec, device=device)
        except Exception as error:  # network, hub or format errors all mean: cannot use it here
            raise ModelError(
                f"cannot load Detoxify's official '{spec}' checkpoint (it downloads from GitHub and the Hugging "
                f"Face hub, so it needs the internet): {type(error).__name__}: {error}. Use the scorer "
                f"'{OFFLINE}' (align builds its own) or a path to a Detoxify .ckpt file"
            ) from error
        return ToxicityScorer(model, spec)
    checkpoint, config_dir = resolve_checkpoint(spec)
    try:
        model = _load_detoxify(
            checkpoint=str(checkpoint),
            device=device,
            huggingface_config_path=str(config_dir) if config_dir else None,
        )
    except Exception as error:
        raise ModelError(
            f"{checkpoint}: not a usable Detoxify checkpoint ({type(error).__name__}: {error}). A checkpoint "
            f"needs 'config' (arch args, class names) and 'state_dict'; its arch 'model_type' must be a "
            f"local config folder when offline"
        ) from error
    return ToxicityScorer(model, spec, checkpoint, **read_blend(checkpoint))


# -------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m align.run toxicity-model`."""
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: align's cache)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the training rows (default 1)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size")
    parser.add_argument("--learning-rate", type=float, default=None, help="AdamW learning rate")
    parser.add_argument("--davidson-train-rows", type=int, default=None,
                        help="Davidson tweets to train on, class-balanced (default 3000)")
    parser.add_argument("--max-train-rows", type=int, default=None, help="cap on training rows per source")
    parser.add_argument("--bow-weight", type=float, default=None,
                        help="the bag of words' share of the blended score, 0..1 (default 0: the encoder alone)")
    parser.add_argument("--no-normalize", action="store_true", help="train and score on the texts as they are")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is much faster on a CPU shared with other jobs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--loso", action="store_true",
                        help="leave-one-source-out evaluation of the recipe against a bag-of-words baseline "
                             "(trains one scorer per shipped source; builds nothing into the cache)")
    parser.add_argument("--loso-test-rows", type=int, default=None,
                        help="with --loso: test at most this many rows of each left-out source (default: whole "
                             "files, Davidson a fixed 3000)")
    parser.add_argument("--loso-json", type=Path, default=None,
                        help="with --loso: where to write the JSON (default: align's cache, loso-<version>*.json)")


def format_report(report: dict) -> str:
    """The held-out AUROC per label as a small table, plus rows and timing."""
    heldout = report["heldout"]
    sources = sorted(heldout["by_source"])
    lines = [f"{'label':<18}{'AUROC':>8}{'pos/rows':>12}" + "".join(f"{s:>10}" for s in sources)]
    for label in report["labels"]:
        detail = heldout["by_label"][label]
        value = "n/a" if detail["auroc"] is None else f"{detail['auroc']:.3f}"
        per_source = []
        for source in sources:
            auroc = heldout["by_source"][source][label]["auroc"]
            per_source.append(f"{'-' if auroc is None else f'{auroc:.3f}':>10}")
        lines.append(f"{label:<18}{value:>8}{detail['positives']:>6}/{detail['rows']:<5}" + "".join(per_source))
    parts = heldout.get("toxicity_auroc_of_parts") or {}
    if parts:
        lines.append("toxicity AUROC of the parts alone: " + "; ".join(
            f"{part} " + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in values.items())
            for part, values in parts.items()))
    train = report["train"]
    lines.append(
        f"held-out rows {heldout['rows']}; trained on {train['rows']} for {train['steps']} steps "
        f"({train['seconds']} s); build wall time {report['wall_s']} s"
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Build (or reuse) the offline scorer, print its report and where it is; or with --loso, evaluate it."""
    given = {
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "davidson_train_rows": args.davidson_train_rows,
        "max_train_rows": args.max_train_rows,
        "bow_weight": args.bow_weight,
        "normalize_text": False if args.no_normalize else None,
    }
    options = {name: value for name, value in given.items() if value is not None}
    if args.loso:
        from align.gates import toxicity_loso

        test_rows = None
        if args.loso_test_rows is not None:
            test_rows = {s: min(args.loso_test_rows, toxicity_loso.LOSO_TEST_ROWS.get(s, args.loso_test_rows))
                         for s in ("civil", "jigsaw", "davidson")}
        result = toxicity_loso.run_loso(progress=not args.no_progress, threads=args.threads, test_rows=test_rows,
                                        **options)
        path = toxicity_loso.write_result(result, args.loso_json or toxicity_loso.default_output(options))
        print(toxicity_loso.format_table(result))
        print(f"json: {path}")
        return 0
    folder = build_offline_checkpoint(
        args.out, force=args.force, progress=not args.no_progress, threads=args.threads, **options
    )
    print(format_report(read_report(folder)))
    print(f"checkpoint: {folder / CHECKPOINT_NAME}")
    print(f"huggingface_config_path: {folder / CONFIG_FOLDER}")
    print(f"use it with: scorer '{folder}' (or 'offline' for the default build)")
    return 0


__all__ = ["LABELS", "ToxicityScorer", "load_scorer", "build_offline_checkpoint", "add_arguments", "main"]
