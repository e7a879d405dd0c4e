"""Leave-one-source-out evaluation of the toxicity scorer: fold provenance, same rows for every scorer, the table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from align.gates import toxicity_bow, toxicity_loso as tl
from align.gates import toxicity_train as tt
from align.data import toxicity_labels
from tests.gates.test_toxicity import tiny_bert  # noqa: F401  (the 2-layer BERT fixture)


def labeled(source: str, n: int, start: int) -> pd.DataFrame:
    """n rows of one source, half toxic, with a text that names the source and the row."""
    toxic = np.arange(n) % 2 == 0
    frame = pd.DataFrame({"text": [f"{source} row {start + i} {'you idiot' if t else 'thanks'}"
                                   for i, t in enumerate(toxic)],
                          "source": source, "stratum": [f"{source}:{int(t)}" for t in toxic]},
                         index=range(start, start + n))
    for label in tt.LABELS:
        frame[label] = np.where(toxic, 0.9, 0.0) if label == "toxicity" else np.nan
    return frame


@pytest.fixture
def rows() -> pd.DataFrame:
    return pd.concat([labeled("civil", 40, 0), labeled("jigsaw", 10, 100), labeled("davidson", 60, 200)])


def test_a_fold_never_trains_on_its_left_out_source(rows):
    train_rows = rows.drop(index=[0, 1, 100, 200, 201])  # what the build would train on (held-out rows removed)
    folds = tl.loso_folds(rows, train_rows, test_rows={"davidson": 20})
    assert [f.left_out for f in folds] == ["civil", "davidson", "jigsaw"]
    for fold in folds:
        assert fold.left_out not in set(fold.train["source"])
        assert set(fold.test["source"]) == {fold.left_out}
        # Provenance by row: the train rows are exactly the build's rows of the other sources.
        others = train_rows[train_rows["source"] != fold.left_out]
        assert fold.train.index.equals(others.index)
        assert not set(fold.train.index) & set(fold.test.index)
    by_source = {f.left_out: f for f in folds}
    assert len(by_source["civil"].test) == 40 and len(by_source["jigsaw"].test) == 10  # whole files
    davidson = by_source["davidson"].test
    assert len(davidson) == 20 and davidson["stratum"].value_counts().to_dict() == {"davidson:0": 10,
                                                                                     "davidson:1": 10}
    again = tl.loso_folds(rows, train_rows, test_rows={"davidson": 20})
    assert again[1].test.index.equals(davidson.index)  # a fixed sample


def test_the_shipped_folds_keep_their_sources_apart():
    rows = toxicity_labels.load_labeled_rows()
    pool, _ = tt.split_heldout(rows)
    train_rows = tt.select_training_rows(pool, tt.BuildOptions())
    for fold in tl.loso_folds(rows, train_rows):
        assert fold.left_out not in set(rows.loc[fold.train.index, "source"])
        assert set(rows.loc[fold.test.index, "source"]) == {fold.left_out}
        assert len(fold.test) == tl.LOSO_TEST_ROWS.get(fold.left_out, (rows["source"] == fold.left_out).sum())


def test_encoder_and_baseline_train_on_the_same_rows_and_every_source_is_reported(tiny_bert, monkeypatch, tmp_path):
    seen = {"encoder": [], "bow": []}
    real_train, real_fit = tt.train_classifier, toxicity_bow.BagOfWords.fit.__func__

    def spy_train(model, tokenizer, rows, options, progress):
        seen["encoder"].append(list(rows["text"]))
        return real_train(model, tokenizer, rows, options, progress)

    def spy_fit(cls, texts, targets, labels):
        seen["bow"].append(list(texts))
        return real_fit(cls, texts, targets, labels)

    monkeypatch.setattr(tt, "train_classifier", spy_train)
    monkeypatch.setattr(toxicity_bow.BagOfWords, "fit", classmethod(spy_fit))
    result = tl.run_loso(progress=False, threads=1, test_rows={"civil": 40, "jigsaw": 40, "davidson": 40},
                         base_model=str(tiny_bert), max_steps=2, batch_size=8, max_train_rows=30, frozen_layers=0)

    assert seen["encoder"] == seen["bow"] and len(seen["encoder"]) == 3
    assert [f["left_out"] for f in result["folds"]] == ["civil", "davidson", "jigsaw"]
    for fold, texts in zip(result["folds"], seen["encoder"]):
        assert fold["left_out"] not in fold["train_rows"] and sum(fold["train_rows"].values()) == len(texts) == 60
        assert fold["test_rows"] == 40 and 0 < fold["test_positives"] < 40
        for scorer in tl.SCORERS:
            assert 0.0 <= fold[scorer] <= 1.0

    path = tl.write_result(result, tmp_path / "loso.json")
    saved = json.loads(path.read_text())
    assert saved["options"]["bow_weight"] == tt.BuildOptions().bow_weight and "TF-IDF" in saved["baseline"]
    table = tl.format_table(saved)
    for fold in saved["folds"]:
        assert f"{fold['baseline']:.3f}" in table and fold["left_out"] in table
    assert "of 3 left-out sources" in table


def test_blend_weighs_the_parts_and_keeps_labels_the_bag_of_words_lacks():
    encoder = {"toxicity": np.array([0.2, 0.8]), "threat": np.array([0.1, 0.3])}
    blended = tt.blend(encoder, {"toxicity": np.array([0.6, 0.0])}, 0.25)
    np.testing.assert_allclose(blended["toxicity"], [0.3, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(blended["threat"], encoder["threat"])
    np.testing.assert_allclose(tt.blend(encoder, {"toxicity": np.array([0.6, 0.0])}, 0.0)["toxicity"], [0.2, 0.8])


def test_default_output_names_version_and_options():
    assert tl.default_output({}).name == f"loso-{tt.BUILD_VERSION}.json"
    other = tl.default_output({"davidson_train_rows": 300, "normalize_text": False})
    assert other.name.startswith(f"loso-{tt.BUILD_VERSION}-") and other != tl.default_output({})


@pytest.mark.slow
def test_reduced_loso_on_the_shipped_minilm(tmp_path, capsys):
    """A real (reduced) LOSO through the CLI: the blend ranks each left-out source better than chance."""
    from tests.helpers import run_cli

    out = tmp_path / "loso.json"
    assert run_cli("toxicity-model", "--loso", "--max-train-rows", "600", "--loso-test-rows", "600",
                   "--threads", "1", "--no-progress", "--loso-json", out) == 0
    result = json.loads(out.read_text())
    assert {f["left_out"] for f in result["folds"]} == {"civil", "jigsaw", "davidson"}
    for fold in result["folds"]:
        assert fold["scorer"] > 0.6, fold
    assert "scorer beats the baseline on" in capsys.readouterr().out
