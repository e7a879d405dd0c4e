"""The reward-model stage on the tiny model: it learns an obvious preference, saves a loadable reward model, and
trains on the label store's pairs."""

from __future__ import annotations

import json

import pytest

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

    from data.store import open_store

    store_path = tmp_path / "labels.sqlite"
    store = open_store(store_path)
    try:
        prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(12)]
        ids = store.add_items(prompts, [[f"{MARKER} answer {i}.", f"plain answer {i}.", "No."] for i in range(12)])
        store.add_annotator("ada", "secret")
        for item_id in ids:
            replies = store.item(item_id).replies
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
