"""A bag-of-words toxicity model: TF-IDF word and character n-grams, one logistic regression per label.

Two uses: it is the baseline that align's offline scorer is measured against (leave-one-source-out, see
`align.gates.toxicity_loso`), and it is one half of that scorer (`align.gates.toxicity_train` blends it
with the fine-tuned MiniLM encoder). The features are word 1-2-grams and within-word character 2-5-grams
(sublinear TF, IDF, min_df 2), lowercased. Each label's regression is fitted to the soft targets (a
row with score p counts as a positive with weight p and a negative with weight 1 - p) over the rows
where that label is known; a label with too few rows of either class gets no model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from align.errors import ModelError

WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
MAX_WORD_FEATURES = 100_000
MAX_CHAR_FEATURES = 200_000
#: Inverse regularisation strength of each label's logistic regression.
C = 4.0
#: A label needs at least this many rows on each side of 0.5 to get a model.
MIN_CLASS_ROWS = 5


def _vectorizer(min_df: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    return make_union(
        TfidfVectorizer(ngram_range=WORD_NGRAMS, min_df=min_df, sublinear_tf=True, max_features=MAX_WORD_FEATURES),
        TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, min_df=min_df, sublinear_tf=True,
                        max_features=MAX_CHAR_FEATURES),
    )


class BagOfWords:
    """Fitted TF-IDF features and per-label regressions. `labels`: the labels it scores."""

    def __init__(self, vectorizer, models: dict):
        self.vectorizer = vectorizer
        self.models = models
        self.labels: list[str] = list(models)

    @classmethod
    def fit(cls, texts: list[str], targets: pd.DataFrame, labels: list[str]) -> "BagOfWords":
        """Fit on `texts` with soft `targets` (one column per label, NaN where unknown)."""
        import scipy.sparse as sp
        from sklearn.linear_model import LogisticRegression

        vectorizer = _vectorizer(min_df=2 if len(texts) >= 200 else 1)
        features = vectorizer.fit_transform(list(texts))
        models = {}
        for label in labels:
            truth = targets[label].to_numpy(dtype=float)
            known = np.flatnonzero(~np.isnan(truth))
            p = truth[known]
            if min((p >= 0.5).sum(), (p < 0.5).sum()) < MIN_CLASS_ROWS:
                continue
            rows = features[known]
            stacked = sp.vstack([rows, rows])
            y = np.r_[np.ones(len(p)), np.zeros(len(p))]
            models[label] = LogisticRegression(C=C, max_iter=2000).fit(stacked, y, sample_weight=np.r_[p, 1 - p])
        return cls(vectorizer, models)

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Probability per label (of the labels it has a model for), one per text."""
        if not len(texts):
            return {label: np.zeros(0, dtype=np.float32) for label in self.labels}
        features = self.vectorizer.transform(list(texts))
        return {label: model.predict_proba(features)[:, 1].astype(np.float32) for label, model in self.models.items()}

    def save(self, path: Path) -> None:
        import joblib

        joblib.dump({"vectorizer": self.vectorizer, "models": self.models}, path, compress=3)

    @classmethod
    def load(cls, path: Path) -> "BagOfWords":
        import joblib

        try:
            saved = joblib.load(path)
            return cls(saved["vectorizer"], saved["models"])
        except Exception as error:  # a truncated or foreign file
            raise ModelError(f"{path}: not a bag-of-words toxicity model ({type(error).__name__}: {error})") from error


def describe() -> str:
    """One line saying what the model is (for reports and tables)."""
    return (f"TF-IDF word {WORD_NGRAMS[0]}-{WORD_NGRAMS[1]}-grams + char {CHAR_NGRAMS[0]}-{CHAR_NGRAMS[1]}-grams, "
            f"logistic regression (C={C}) per label on soft targets")
