"""The reward-model stage on the tiny model: it learns an obvious preference, saves a loadable reward model, and
trains on the label store's pairs."""

from __future__ import annotations

import json

import pytest

from align.stages.rm import LENGTH_FIT_PAIRS
from tests.helpers import run_cli
from tests.stages.marker_pairs import MARKER, write_marker_pairs


@pytest.fixture(scope="module")
def marker_rm(tmp_path_factory, tiny_model_dir):
    """A tiny reward model trained briefly on the marker preference (180 train pairs, 20 held out)."""
    root = tmp_path_factory.mktemp("rm")
    data = write_marker_pairs(root / "marker.jsonl")
    runs = root / "runs"
    code = run_cli("rm", "--config", "tiny", "--from", "tiny", "--run", "marker", f"runs_dir={runs}",
                   f"data={data}", "max_rows=-1", "eval_rows=-1", "max_steps=16", "lr=3e-3", "eval_before=true")
    assert code == 0
    return runs / "marker" / "rm"


def test_short_rm_run_separates_the_marker_preference(marker_rm):
    manifest = json.loads((marker_rm / "manifest.json").read_text())
    metrics = manifest["metrics"]
    assert manifest["stage"] == "rm" and manifest["status"] == "promoted" and manifest["gate"] is None
    assert metrics["eval_rows"] == 20 and metrics["train_rows"] == 180
    assert metrics["eval_accuracy"] >= 0.9, metrics  # chance is 0.5
    assert metrics["eval_mean_margin"] > 0
    assert metrics["eval_pairs_chosen_shorter"] == 0 and metrics["eval_accuracy_chosen_shorter"] is None
    assert 0 <= metrics["eval_accuracy_before"] <= 1  # the untrained head, scored because eval_before=true
    for key in ("eval_length_pearson", "eval_length_spearman", "tokens_per_s"):
        assert key in metrics
    assert (marker_rm / "reward_scatter.png").stat().st_size > 1000
    assert (marker_rm / "logs" / "history.json").is_file()


def test_saved_rm_loads_as_sequence_classifier_and_scores_marker_replies_higher(marker_rm):
    from transformers import AutoModelForSequenceClassification

    from align import reward

    model = AutoModelForSequenceClassification.from_pretrained(marker_rm)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None

    # Prompts and fillers the training data never had.
    prompts = ["Describe a mountain.", "What about lunch?", "Any news today?"]
    fillers = [("well then", "all good"), ("so it goes", "fine by me"), ("hello there", "no doubt")]
    with_marker, without = [], []
    for prompt, (a, b) in zip(prompts, fillers):
        user = [{"role": "user", "content": prompt}]
        with_marker.append(user + [{"role": "assistant", "content": f"{a}, {MARKER}, {b}."}])
        without.append(user + [{"role": "assistant", "content": f"{a}, indeed, {b}."}])
    reward.clear_cache()
    good, bad = reward.score(with_marker, model=str(marker_rm)), reward.score(without, model=str(marker_rm))
    assert all(g > b for g, b in zip(good, bad)), (good, bad)
    # The loaded model is cached: a second call reuses it.
    assert reward.load_reward_model(marker_rm) is reward.load_reward_model(marker_rm)


def test_score_refuses_a_model_that_is_not_a_reward_model(tiny_model_dir):
    from align import reward
    from align.errors import ModelError

    with pytest.raises(ModelError, match="not a reward model"):
        reward.load_reward_model(tiny_model_dir)  # a causal LM: its classification head would have 2 outputs


def test_rm_trains_on_label_store_pairs_with_lora(tmp_path, tiny_model_dir):
    """labels:<store> end to end: a few labeled items → preference pairs → 2 LoRA steps → a merged reward model."""
    from transformers import AutoModelForSequenceClassification

    from align.data.store import open_store

    store_path = tmp_path / "labels.sqlite"
    store = open_store(store_path)
    try:
        prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(12)]
        ids = store.add_items(prompts, [[f"{MARKER} answer {i}.", f"plain answer {i}.", "No."] for i in range(12)])
        store.add_annotator("ada", "secret-password")
        for item_id in ids:
            replies = store.next_item("ada").replies  # the item the app would show ada: ids in order
            store.submit(item_id, "ada", [[replies[0].id], [replies[1].id], [replies[2].id]])
    finally:
        store.close()

    runs = tmp_path / "runs"
    code = run_cli("rm", "--config", "tiny", "--from", "tiny", "--run", "labels", f"runs_dir={runs}",
                   f"data=labels:{store_path}", "max_steps=2", "lora.enabled=true", "lora.r=4", "lora.alpha=8")
    assert code == 0
    folder = runs / "labels" / "rm"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["format"] == "lora-merged"
    train, test = manifest["data"]
    assert train["spec"] == f"labels:{store_path}" and train["rows"] + test["rows"] == 36  # 3 pairs per item
    assert manifest["metrics"]["steps"] == 2
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.num_labels == 1
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_rm_refuses_bad_rows_when_the_recipe_says_so(tmp_path, tiny_model_dir):
    rows = [json.loads(line) for line in write_marker_pairs(tmp_path / "m.jsonl", n=12).read_text().splitlines()]
    rows[2]["rejected"] = rows[2]["chosen"]
    data = tmp_path / "with-bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = run_cli("rm", "--config", "tiny", "--from", "tiny", f"runs_dir={tmp_path / 'runs'}", f"data={data}",
                   "on_bad_rows=refuse", "max_steps=1")
    assert code == 2  # one clear line (DataError: file, row 3, field), no training
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/rm/manifest.json"))


def test_rm_on_the_shipped_minilm_encoder_learns_the_marker_and_scores_through_its_template(tmp_path):
    """rm.base=embedded:minilm-l6-v2: a reward head on an encoder with no chat template of its own (align's
    role-tagged one is used and saved), trained on the marker preference, loaded back by align.reward."""
    from transformers import AutoTokenizer

    from align import reward

    data = write_marker_pairs(tmp_path / "marker.jsonl")
    runs = tmp_path / "runs"
    assert run_cli("rm", "--config", "tiny", "--from", "tiny", "--run", "encoder", f"runs_dir={runs}",
                   "base=embedded:minilm-l6-v2", f"data={data}", "max_rows=-1", "eval_rows=-1", "max_steps=12",
                   "batch_size=16", "lr=2e-4") == 0
    folder = runs / "encoder" / "rm"
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    assert metrics["base"] == "embedded:minilm-l6-v2"
    assert metrics["eval_accuracy"] >= 0.9, metrics
    saved = AutoTokenizer.from_pretrained(folder)
    text = saved.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
                                     tokenize=False)
    assert text == "[CLS]user: Hi [SEP]assistant: Yo [SEP]"
    reward.clear_cache()
    user = [{"role": "user", "content": "Describe a mountain."}]
    good = reward.score([user + [{"role": "assistant", "content": f"well then, {MARKER}, all good."}]], str(folder))
    bad = reward.score([user + [{"role": "assistant", "content": "well then, indeed, all good."}]], str(folder))
    assert good[0] > bad[0]


# ------------------------------------------------------------------------------- length mitigations


def write_length_skewed_pairs(path, n: int = 120):
    """Marker pairs where the chosen reply is the longer one in 3 pairs of 4 (a sentence added to it) and the
    shorter one in the rest (the sentence added to the rejected reply)."""
    from tests.stages.marker_pairs import marker_pairs

    rows = marker_pairs(n)
    for i, row in enumerate(rows):
        side = "rejected" if i % 4 == 0 else "chosen"
        row[side][0]["content"] += " That is all I can say about it."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def length_rm(tmp_path_factory, tiny_model_dir):
    """A tiny reward model trained with both length mitigations on length-skewed marker pairs."""
    root = tmp_path_factory.mktemp("rm-length")
    data = write_length_skewed_pairs(root / "skewed.jsonl")
    runs = root / "runs"
    assert run_cli("rm", "--config", "tiny", "--from", "tiny", "--run", "length", f"runs_dir={runs}", f"data={data}",
                   "max_rows=-1", "eval_rows=-1", "max_steps=6", "length_balance=true",
                   "length_regression=true") == 0
    return data, runs / "length" / "rm"


def test_length_balance_trains_on_as_many_chosen_shorter_as_chosen_longer_pairs(length_rm):
    from align.reward_diagnostics import pair_lengths
    from align.data.preferences import load_preferences

    data, folder = length_rm
    chosen, rejected = pair_lengths(load_preferences(str(data), "train").rows)
    shorter, longer = int((chosen < rejected).sum()), int((chosen > rejected).sum())
    assert longer > 2 * shorter > 0  # the fixture is skewed
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    assert metrics["train_rows"] == shorter + longer
    assert metrics["train_rows_chosen_shorter"] == shorter and metrics["train_rows_chosen_longer"] == longer
    assert metrics["train_rows_length_balanced"] == 2 * shorter
    assert metrics["train_rows_within_max_length"] == 2 * shorter  # what the trainer got: the balanced pairs
    # The length-only rule is still chosen on the whole training split (chosen longer there), and it is right on
    # the held-out pairs whose chosen reply is the longer one.
    assert metrics["eval_length_only_rule"] == "longer" and metrics["eval_length_only_rule_from"] == "train"
    assert metrics["eval_length_only_accuracy"] == pytest.approx(metrics["eval_pairs_chosen_longer"] / metrics["eval_rows"],
                                                                 abs=1e-4)


def test_length_regression_is_stored_in_the_folder_and_applied_by_align_reward(length_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from align import reward
    from align.reward_diagnostics import length_diagnostics
    from align.data.preferences import load_preferences

    data, folder = length_rm
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    term = json.loads((folder / reward.LENGTH_TERM_FILE).read_text())
    b = term["per_character"]
    assert b != 0 and metrics["length_term_per_character"] == round(b, 8)
    assert term["replies"] == 2 * min(metrics["train_rows_length_balanced"], LENGTH_FIT_PAIRS)  # training replies
    for key in ("eval_raw_accuracy", "eval_raw_length_spearman", "eval_raw_length_matched_accuracy"):
        assert key in metrics

    # Loaded through align.reward, the folder scores reward - b * length; the bare model scores the raw reward.
    reward.clear_cache()
    loaded = reward.load_reward_model(folder)
    assert loaded.length_coef == b
    net = AutoModelForSequenceClassification.from_pretrained(folder)
    bare = (net, AutoTokenizer.from_pretrained(folder))
    user = [{"role": "user", "content": "Describe a mountain."}]
    texts = ["short.", "a much longer reply about the mountain, its snow and its rocks."]
    conversations = [user + [{"role": "assistant", "content": t}] for t in texts]
    raw, corrected = reward.score(conversations, bare), reward.score(conversations, str(folder))
    for t, r, c in zip(texts, raw, corrected):
        assert c == pytest.approx(r - b * len(t), abs=1e-5)

    # The manifest's eval_ figures are the corrected ones: what the folder gives on the held-out pairs.
    held_out = load_preferences(str(data), "test").rows
    again = length_diagnostics(*reward.score_pairs(held_out, str(folder)), held_out)
    assert again["accuracy"] == metrics["eval_accuracy"]
    assert again["length_spearman"] == pytest.approx(metrics["eval_length_spearman"], abs=1e-3)


def test_a_planted_length_term_is_subtracted_and_a_bad_one_refused(marker_rm, tmp_path):
    import shutil

    from align import reward
    from align.errors import ModelError

    folder = tmp_path / "rm"
    shutil.copytree(marker_rm, folder)
    user = [{"role": "user", "content": "Hi"}]
    conversations = [user + [{"role": "assistant", "content": "x" * n}] for n in (5, 50)]
    reward.clear_cache()
    plain = reward.score(conversations, str(folder))
    reward.save_length_term(folder, {"per_character": 0.01, "intercept": 0.0, "replies": 2})
    reward.clear_cache()
    corrected = reward.score(conversations, str(folder))
    assert corrected == pytest.approx([plain[0] - 0.05, plain[1] - 0.5], abs=1e-5)

    (folder / reward.LENGTH_TERM_FILE).write_text('{"per_character": "a lot"}')
    reward.clear_cache()
    with pytest.raises(ModelError, match="length_term.json: field 'per_character'"):
        reward.load_reward_model(folder)
    reward.clear_cache()
