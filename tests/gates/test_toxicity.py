"""The toxicity scorer: a small locally built Detoxify-format checkpoint, loaded through the real detoxify."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from align.errors import DataError, ModelError
from align.gates import toxicity_train as tt
from align.data import toxicity_labels
from align.gates.toxicity import ToxicityScorer, load_scorer
from align.gates.toxicity_bow import BagOfWords

TEXTS = [
    "Thank you, that was a lovely afternoon.",
    "You are a worthless idiot and everyone hates you, get lost.",
    "ok",
    "",
    "The council meets on Tuesday to discuss the new budget for the library and the parks department.",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with the shipped MiniLM tokenizer: the builder's base model in seconds."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(tt.shipped_minilm_dir())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def small_build(tmp_path_factory, tiny_bert) -> Path:
    out = tmp_path_factory.mktemp("toxicity") / "small"
    return tt.build_offline_checkpoint(out, progress=False, base_model=str(tiny_bert), max_steps=4, batch_size=8,
                                       max_train_rows=40, eval_rows=60, frozen_layers=0, bow_weight=0.5)


def test_build_writes_detoxify_checkpoint_and_report(small_build):
    assert tt.is_complete(small_build)
    assert not list(small_build.parent.glob(".small.*")), "no temporary folder is left behind"
    checkpoint = torch.load(small_build / tt.CHECKPOINT_NAME, weights_only=False)
    args = checkpoint["config"]["arch"]["args"]
    assert args == {"model_type": str(small_build / "hf"), "model_name": "BertForSequenceClassification",
                    "tokenizer_name": "BertTokenizer", "num_classes": 7}
    assert checkpoint["config"]["dataset"]["args"]["classes"] == tt.LABELS
    assert checkpoint["state_dict"]["classifier.weight"].shape == (7, 32)
    tokenizer_config = json.loads((small_build / "hf" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == tt.BuildOptions().max_length  # Detoxify scores what was measured

    report = tt.read_report(small_build)
    assert report["train"]["steps"] == 4
    assert report["train"]["rows"] == {"civil": 40, "davidson": 40, "jigsaw": 40}
    assert report["heldout"]["rows"] == {"civil": 60, "davidson": 60, "jigsaw": 56}
    toxicity = report["heldout"]["by_label"]["toxicity"]
    assert toxicity["rows"] == 176 and 0 < toxicity["positives"] < 176
    assert 0.0 <= report["heldout"]["auroc"]["toxicity"] <= 1.0
    parts = report["heldout"]["toxicity_auroc_of_parts"]
    assert set(parts) == {"encoder", "bow"} and set(parts["encoder"]) == {"all", "civil", "davidson", "jigsaw"}
    assert report["scorer"]["bow_weight"] == 0.5 and (small_build / tt.BOW_NAME).is_file()


def test_loads_through_detoxify_and_keeps_text_order(small_build):
    import detoxify

    scorer = load_scorer(str(small_build))
    assert isinstance(scorer, ToxicityScorer) and scorer.labels == tt.LABELS
    scores = scorer.score(TEXTS, batch_size=3)
    assert set(scores) == set(tt.LABELS)
    for values in scores.values():
        assert values.shape == (len(TEXTS),) and np.all((values >= 0) & (values <= 1))

    # The blend of Detoxify's own predict (one normalised text at a time; the scorer sorts by length) and
    # the bag of words, at the weight scorer.json names.
    spec = json.loads((small_build / tt.SCORER_NAME).read_text())
    assert spec["bow_weight"] == scorer.bow_weight == 0.5 and scorer.normalize
    direct = detoxify.Detoxify(checkpoint=str(small_build / tt.CHECKPOINT_NAME),
                               huggingface_config_path=str(small_build / "hf"))
    bow = BagOfWords.load(small_build / tt.BOW_NAME)
    assert "toxicity" in bow.labels and bow.labels == spec["bow_labels"]
    for i, text in enumerate(TEXTS):
        clean = tt.normalize_text(text)
        single, bag = direct.predict(clean), bow.score([clean])
        for label in tt.LABELS:
            expected = single[label] if label not in bag else 0.5 * single[label] + 0.5 * bag[label][0]
            assert scores[label][i] == pytest.approx(expected, abs=1e-5)

    by_file = load_scorer(str(small_build / tt.CHECKPOINT_NAME)).score(TEXTS[:2])
    np.testing.assert_allclose(by_file["toxicity"], scores["toxicity"][:2], atol=1e-6)
    empty = scorer.score([])
    assert set(empty) == set(tt.LABELS) and all(v.shape == (0,) for v in empty.values())


def test_second_build_is_cached(small_build):
    mtime = (small_build / tt.CHECKPOINT_NAME).stat().st_mtime_ns
    started = time.perf_counter()
    assert tt.build_offline_checkpoint(small_build, progress=False, max_steps=4) == small_build
    assert time.perf_counter() - started < 2
    assert (small_build / tt.CHECKPOINT_NAME).stat().st_mtime_ns == mtime


def test_cli_prints_report_of_a_build(small_build, capsys):
    from tests.helpers import run_cli

    assert run_cli("toxicity-model", "--out", small_build) == 0
    out = capsys.readouterr().out
    auroc = tt.read_report(small_build)["heldout"]["auroc"]["toxicity"]
    assert f"{auroc:.3f}" in out and "sexual_explicit" in out and str(small_build / tt.CHECKPOINT_NAME) in out


def test_bad_checkpoints_are_model_errors(tmp_path, small_build):
    with pytest.raises(ModelError, match="no such checkpoint"):
        load_scorer(str(tmp_path / "missing.ckpt"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.ckpt"):
        load_scorer(str(junk))
    # A checkpoint whose model_type names a folder that is not there (and no hf/ beside it).
    checkpoint = torch.load(small_build / tt.CHECKPOINT_NAME, weights_only=False)
    checkpoint["config"]["arch"]["args"]["model_type"] = str(tmp_path / "gone")
    moved = tmp_path / "moved.ckpt"
    torch.save(checkpoint, moved)
    with pytest.raises(ModelError, match="moved.ckpt"):
        load_scorer(str(moved))


def test_a_broken_blend_spec_is_a_model_error(tmp_path, small_build):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_build, copy)
    (copy / tt.BOW_NAME).unlink()
    with pytest.raises(ModelError, match="bow.joblib.*missing"):
        load_scorer(str(copy))
    spec = json.loads((copy / tt.SCORER_NAME).read_text())
    (copy / tt.SCORER_NAME).write_text(json.dumps({**spec, "bow_weight": 0.0}))
    alone = load_scorer(str(copy))  # weight 0 (the default build): the encoder alone, the bag of words unread
    assert alone.bow is None and alone.normalize
    np.testing.assert_allclose(alone.score(TEXTS)["toxicity"], [
        alone.detoxify.predict(tt.normalize_text(t))["toxicity"] for t in TEXTS], atol=1e-5)
    (copy / tt.SCORER_NAME).write_text(json.dumps(spec))
    (copy / tt.BOW_NAME).write_bytes(b"junk")
    with pytest.raises(ModelError, match="not a bag-of-words"):
        load_scorer(str(copy))
    (copy / tt.SCORER_NAME).write_text("{}")
    with pytest.raises(ModelError, match="scorer.json: unreadable"):
        load_scorer(str(copy))


def test_normalize_text_gives_every_source_one_surface_form():
    assert tt.normalize_text("RT @Bob:  so   goooood!!!!  http://t.co/x &amp; ok") == "RT @user: so goood!!! http & ok"
    assert tt.normalize_text("\uff29diot\n\nreally") == "Idiot really"  # NFKC full-width letter, newlines
    assert tt.normalize_text("www... is fine") == "www... is fine"  # three of a kind stay


def test_bad_build_options_leave_nothing_behind(tmp_path):
    from align.errors import ConfigError

    with pytest.raises(ConfigError, match="epoch"):
        tt.build_offline_checkpoint(tmp_path / "x", progress=False, epoch=1)
    with pytest.raises(ConfigError, match="bow_weight"):
        tt.build_offline_checkpoint(tmp_path / "x", progress=False, bow_weight=1.5)
    with pytest.raises(ModelError, match="base encoder"):
        tt.build_offline_checkpoint(tmp_path / "x", progress=False, base_model=str(tmp_path / "no-such-model"))
    assert list(tmp_path.iterdir()) == []


def test_auroc_matches_hand_computed_values():
    targets = pd.DataFrame({label: [0.0, 0.0, 0.0, 0.0, 0.0] for label in tt.LABELS})
    targets["toxicity"] = [0.9, 0.1, 0.6, 0.0, np.nan]  # positives: rows 0 and 2; row 4 unknown
    targets["threat"] = [0.0, 0.0, 0.0, 0.0, 0.0]  # one class only
    scores = {label: np.array([0.8, 0.3, 0.2, 0.1, 0.99]) for label in tt.LABELS}
    result = tt.auroc_by_label(targets, scores)
    # pairs (positive, negative): (0.8,0.3) (0.8,0.1) (0.2,0.3) (0.2,0.1) -> 3 of 4 ordered right
    assert result["toxicity"] == {"auroc": 0.75, "rows": 4, "positives": 2}
    assert result["threat"] == {"auroc": None, "rows": 5, "positives": 0}


def test_davidson_votes_map_to_soft_labels(tmp_path):
    path = tmp_path / "davidson.csv"
    path.write_text(
        ",count,hate_speech,offensive_language,neither,class,tweet\n"
        "0,3,2,1,0,0,RT @someone: hate &amp; more http://t.co/x\n"
        "1,4,0,3,1,1,offensive tweet\n"
        "2,3,0,0,3,2,a nice tweet\n"
    )
    rows = toxicity_labels.load_davidson(path)
    assert rows["toxicity"].tolist() == [1.0, 0.75, 0.0]
    assert rows["identity_attack"].tolist() == pytest.approx([2 / 3, 0.0, 0.0])
    assert rows["obscene"].tolist() == pytest.approx([1 / 3, 0.75, 0.0])
    assert rows["insult"].tolist() == [1.0, 0.75, 0.0]
    assert rows["threat"].isna().all() and rows["severe_toxicity"].isna().all()
    assert rows["text"][0] == "@user: hate & more http"

    path.write_text(",count,hate_speech,offensive_language,neither,class,tweet\n0,3,x,1,0,0,t\n")
    with pytest.raises(DataError, match=r"davidson.csv, row 1, field 'hate_speech'"):
        toxicity_labels.load_davidson(path)


def test_heldout_split_is_fixed_and_never_trained_on():
    rows = toxicity_labels.load_labeled_rows()
    pool, heldout = tt.split_heldout(rows)
    _, again = tt.split_heldout(rows)
    assert heldout.index.equals(again.index)
    assert heldout["source"].value_counts().to_dict() == {"davidson": 1000, "civil": 750, "jigsaw": 56}
    assert heldout[heldout.source == "civil"]["stratum"].value_counts().to_dict() == {"civil:0": 375, "civil:1": 375}
    for options in (tt.BuildOptions(), tt.BuildOptions(seed=3, civil_train_rows=None, davidson_train_rows=3000)):
        train = tt.select_training_rows(pool, options)
        assert not set(train.index) & set(heldout.index)


@pytest.mark.slow
def test_default_scorer_reaches_target_auroc():
    folder = tt.build_offline_checkpoint()
    report = tt.read_report(folder)
    assert report["heldout"]["auroc"]["toxicity"] >= 0.90
    scorer = load_scorer("offline")
    toxic = ["You are a disgusting idiot, shut up.", "I will kill you, you stupid bitch.",
             "What a pathetic loser you are, go to hell."]
    benign = ["Thanks for the help with my homework!", "The weather is nice today.",
              "I think the new park is a great idea for the city."]
    scores = scorer.score(toxic + benign)["toxicity"]
    assert scores[:3].min() > scores[3:].max()
