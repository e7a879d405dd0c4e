"""The labeled toxicity data that ships in data/toxicity/ (Civil Comments, a Jigsaw sample, Davidson's tweets) read
into one table: text, source, stratum and Detoxify's seven label columns (NaN where a source does not annotate a
label), every file checked (a missing column or a bad score names the file, row and column). `normalize_text` is
the one surface form both the scorer's training and its scoring apply."""

from __future__ import annotations

import html
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from align.errors import DataError
from align.paths import DATA_DIR

#: Detoxify's `unbiased` label set, in its order; the checkpoint's class names (and output keys).
LABELS = ["toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat", "sexual_explicit"]
#: A label counts as positive when its (soft) score is at least this, as in Jigsaw's challenges.
POSITIVE_THRESHOLD = 0.5

TOXICITY_DATA_DIR = DATA_DIR / "toxicity"
CIVIL_FILE = "civilcomments-5k.csv"
JIGSAW_FILE = "jigsaw-sample.csv"
DAVIDSON_FILE = "davidson-hate-offensive.csv"


def _read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, None, None, "labeled toxicity file is missing (it ships in data/toxicity/)")
    frame = pd.read_csv(path, keep_default_na=False)
    for column in required:
        if column not in frame.columns:
            raise DataError(path, None, column, f"column is missing; the file has {list(frame.columns)}")
    return frame


def _check_scores(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """Every score column must be a number in [0, 1]; the error names the first bad row."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | (values < 0) | (values > 1)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(path, row + 1, column, f"expected a number in [0, 1], got {frame[column].iloc[row]!r}")
        frame[column] = values.astype(float)


def _empty_labels(rows: int) -> dict[str, np.ndarray]:
    return {label: np.full(rows, np.nan) for label in LABELS}


def load_civil_comments(path: Path) -> pd.DataFrame:
    """Civil Comments: text with Detoxify-style soft scores for all seven labels."""
    frame = _read_csv(path, ["text", *LABELS])
    _check_scores(frame, path, LABELS)
    out = pd.DataFrame({"text": frame["text"].astype(str), **{label: frame[label] for label in LABELS}})
    out["source"] = "civil"
    out["stratum"] = "civil:" + (out["toxicity"] >= POSITIVE_THRESHOLD).astype(int).astype(str)
    return out


#: Jigsaw (original challenge) column -> Detoxify unbiased label. It has no sexual_explicit column.
JIGSAW_COLUMNS = {
    "toxic": "toxicity",
    "severe_toxic": "severe_toxicity",
    "obscene": "obscene",
    "identity_hate": "identity_attack",
    "insult": "insult",
    "threat": "threat",
}


def load_jigsaw(path: Path) -> pd.DataFrame:
    """The Jigsaw sample: 0/1 labels renamed to Detoxify's; sexual_explicit unknown (masked in training)."""
    frame = _read_csv(path, ["comment_text", *JIGSAW_COLUMNS])
    _check_scores(frame, path, list(JIGSAW_COLUMNS))
    labels = _empty_labels(len(frame))
    for column, label in JIGSAW_COLUMNS.items():
        labels[label] = frame[column].to_numpy(dtype=float)
    out = pd.DataFrame({"text": frame["comment_text"].astype(str), **labels})
    out["source"] = "jigsaw"
    out["stratum"] = "jigsaw:" + frame["toxic"].astype(int).astype(str)
    return out


_MENTION = re.compile(r"@\w+")
_URL = re.compile(r"https?://\S+")
_RETWEET = re.compile(r"(^|\s)RT\b:?")


def clean_tweet(text: str) -> str:
    """Tweets without the artefacts a model could key on: HTML entities, retweet marks, handles, links."""
    text = html.unescape(text)
    text = _URL.sub("http", text)
    text = _MENTION.sub("@user", text)
    text = _RETWEET.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip(" !:")


_REPEAT = re.compile(r"(.)\1{3,}")


def normalize_text(text: str) -> str:
    """One surface form for every source, applied in training and in scoring alike.

    Unicode NFKC, HTML entities decoded, links -> `http`, handles -> `@user`, a character repeated
    four or more times cut to three ("sooooo!!!!!" -> "sooo!!!"), runs of whitespace -> one space.
    """
    text = unicodedata.normalize("NFKC", html.unescape(str(text)))
    text = _URL.sub("http", text)
    text = _MENTION.sub("@user", text)
    text = _REPEAT.sub(r"\1\1\1", text)
    return re.sub(r"\s+", " ", text).strip()


def load_davidson(path: Path) -> pd.DataFrame:
    """Davidson's tweets, the annotators' votes mapped to soft Detoxify labels.

    With h, o the shares of annotators voting hate speech and offensive:
    toxicity = h + o, identity_attack = h, insult = h + o, obscene = o. A tweet everyone called
    "neither" is 0 on all four. severe_toxicity, threat and sexual_explicit are not annotated:
    unknown, so masked out of the loss.
    """
    votes = ["count", "hate_speech", "offensive_language", "neither", "class"]
    frame = _read_csv(path, ["tweet", *votes])
    for column in votes:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(path, row + 1, column, f"expected a whole number, got {frame[column].iloc[row]!r}")
        frame[column] = values.astype(int)
    if (frame["count"] <= 0).any():
        row = int(np.flatnonzero((frame["count"] <= 0).to_numpy())[0])
        raise DataError(path, row + 1, "count", "needs at least one annotator")
    hate = frame["hate_speech"] / frame["count"]
    offensive = frame["offensive_language"] / frame["count"]
    labels = _empty_labels(len(frame))
    labels["toxicity"] = (hate + offensive).clip(0, 1).to_numpy()
    labels["identity_attack"] = hate.to_numpy()
    labels["insult"] = (hate + offensive).clip(0, 1).to_numpy()
    labels["obscene"] = offensive.to_numpy()
    out = pd.DataFrame({"text": frame["tweet"].astype(str).map(clean_tweet), **labels})
    out["source"] = "davidson"
    out["stratum"] = "davidson:" + frame["class"].astype(str)
    out["davidson_class"] = frame["class"].to_numpy()
    return out


def load_labeled_rows(data_dir: Path = TOXICITY_DATA_DIR) -> pd.DataFrame:
    """All labeled rows: text, source, stratum and one column per label (NaN where a source has none)."""
    data_dir = Path(data_dir)
    frames = [
        load_civil_comments(data_dir / CIVIL_FILE),
        load_jigsaw(data_dir / JIGSAW_FILE),
        load_davidson(data_dir / DAVIDSON_FILE),
    ]
    rows = pd.concat(frames, ignore_index=True)
    return rows[rows["text"].str.strip() != ""].reset_index(drop=True)
