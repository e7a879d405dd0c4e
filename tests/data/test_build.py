"""Tests of data/build.py: the converters on hand-written fixtures, and the shipped files against catalog.json."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from align.data import build
from align.data.build import (Dropped, alpaca_to_chat, hh_pair_to_preference, jsonl_bytes, oasst_ranked_pairs,
                        oasst_top_path, parse_hh_dialogue, sharegpt_to_preference, split_by_group)

DATA_DIR = build.DATA_DIR
CATALOG = json.loads((DATA_DIR / "catalog.json").read_text(encoding="utf-8"))


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------------------------------- HH-RLHF


def test_hh_dialogue_is_split_into_stripped_alternating_turns():
    text = "\n\nHuman:  Hi there \n\nAssistant: Hello!\n\nHow can I help?\n\nHuman: Tell me a joke.\n\nAssistant: No."
    assert parse_hh_dialogue(text) == [user("Hi there"), assistant("Hello!\n\nHow can I help?"),
                                       user("Tell me a joke."), assistant("No.")]


@pytest.mark.parametrize("text, reason", [
    ("\n\nHuman: hi\n\nAssistant: one\n\nAssistant: two", "roles do not alternate user/assistant"),
    ("\n\nAssistant: hi\n\nHuman: hello", "roles do not alternate user/assistant"),
    ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye", "last turn is not the assistant's"),
    ("\n\nHuman: hi\n\nAssistant:", "empty turn"),
    ("\n\nHuman: hi\n\nAssistant: Human: so what do you think?", "speaker tag inside a turn"),
    ("preamble\n\nHuman: hi\n\nAssistant: hello", "text before the first turn"),
    ("no turns at all", "text before the first turn"),
])
def test_malformed_hh_dialogue_is_dropped_with_its_reason(text, reason):
    with pytest.raises(Dropped) as caught:
        parse_hh_dialogue(text)
    assert caught.value.reason == reason


HH_PROMPT = "\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you ask?\n\nHuman: I'm locked out."


def test_hh_pair_shares_every_turn_but_the_last_reply():
    row = hh_pair_to_preference(HH_PROMPT + "\n\nAssistant: Call a locksmith.",
                                HH_PROMPT + "\n\nAssistant: Use a bobby pin.")
    assert row == {"prompt": [user("How do I pick a lock?"), assistant("Why do you ask?"), user("I'm locked out.")],
                   "chosen": [assistant("Call a locksmith.")], "rejected": [assistant("Use a bobby pin.")]}


@pytest.mark.parametrize("chosen, rejected, reason", [
    (HH_PROMPT + "\n\nAssistant: A.", HH_PROMPT.replace("Why do you ask?", "Why?") + "\n\nAssistant: B.",
     "chosen and rejected differ before the last reply"),
    (HH_PROMPT + "\n\nAssistant: A.", "\n\nHuman: How do I pick a lock?\n\nAssistant: B.",
     "chosen and rejected differ before the last reply"),
    (HH_PROMPT + "\n\nAssistant: Same.", HH_PROMPT + "\n\nAssistant:  Same. ",
     "chosen and rejected replies are identical"),
    (HH_PROMPT + "\n\nAssistant: A.", HH_PROMPT + "\n\nAssistant: ", "rejected dialogue malformed: empty turn"),
    (HH_PROMPT + "\n\nAssistant: Human: A.", HH_PROMPT + "\n\nAssistant: B.",
     "chosen dialogue malformed: speaker tag inside a turn"),
])
def test_hh_pair_that_is_not_a_clean_comparison_is_dropped(chosen, rejected, reason):
    with pytest.raises(Dropped) as caught:
        hh_pair_to_preference(chosen, rejected)
    assert caught.value.reason == reason


# ------------------------------------------------------------------------------------- OpenAssistant


def node(role, text, rank=None, replies=(), **extra):
    return {"role": "prompter" if role == "user" else "assistant", "text": text, "rank": rank,
            "deleted": False, "review_result": True, "replies": list(replies), **extra}


def oasst_tree():
    """A root question with three ranked answers listed out of rank order and one unranked answer; the
    best answer has two user follow-ups (the first has no reply), the second has two ranked answers."""
    follow_up = node("user", "And after that?", replies=[
        node("assistant", "Second-level worse", rank=1),
        node("assistant", "Second-level best", rank=0),
    ])
    best = node("assistant", "Best answer", rank=0, replies=[node("user", "Dead end"), follow_up])
    return node("user", " Root question ", replies=[
        node("assistant", "Worst answer", rank=2),
        best,
        node("assistant", "Middle answer", rank=1),
        node("assistant", "Unranked answer"),
        node("assistant", "Deleted answer", rank=3, deleted=True),
    ])


def test_three_ranked_siblings_give_three_pairs_best_first_and_nested_levels_add_theirs():
    pairs = {(row["chosen"][0]["content"], row["rejected"][0]["content"]): row["prompt"]
             for row in oasst_ranked_pairs(oasst_tree())}
    root_prompt = [user("Root question")]
    assert pairs == {
        ("Best answer", "Middle answer"): root_prompt,
        ("Best answer", "Worst answer"): root_prompt,
        ("Middle answer", "Worst answer"): root_prompt,
        ("Second-level best", "Second-level worse"):
            [user("Root question"), assistant("Best answer"), user("And after that?")],
    }


def test_identical_ranked_siblings_are_dropped_and_counted():
    tree = node("user", "Q", replies=[node("assistant", "Same", rank=0), node("assistant", "Same", rank=1)])
    dropped = Counter()
    assert oasst_ranked_pairs(tree, dropped) == []
    assert dropped == {"chosen and rejected replies are identical": 1}


def test_top_path_follows_the_best_ranked_replies_and_ends_with_an_assistant_turn():
    assert oasst_top_path(oasst_tree()) == [
        user("Root question"), assistant("Best answer"), user("And after that?"), assistant("Second-level best")]


def test_top_path_of_a_tree_without_answers_is_none():
    assert oasst_top_path(node("user", "Q", replies=[node("assistant", "gone", deleted=True)])) is None


# ----------------------------------------------------------------------------------- Alpaca, ShareGPT


def test_alpaca_row_becomes_a_two_turn_chat_with_the_input_after_the_instruction():
    assert alpaca_to_chat({"instruction": "Translate.", "input": " Bonjour ", "output": "Hello"}) == {
        "messages": [user("Translate.\n\nBonjour"), assistant("Hello")]}
    assert alpaca_to_chat({"instruction": "Say hi.", "input": "", "output": "Hi"})["messages"][0] == user("Say hi.")
    with pytest.raises(Dropped):
        alpaca_to_chat({"instruction": "Say hi.", "input": "", "output": "  "})


def test_sharegpt_preference_maps_speakers_and_keeps_the_system_message():
    row = sharegpt_to_preference({
        "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                          {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}],
        "chosen": {"from": "gpt", "value": "Goodbye"}, "rejected": {"from": "gpt", "value": "No"}})
    assert row == {"prompt": [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello"), user("Bye")],
                   "chosen": [assistant("Goodbye")], "rejected": [assistant("No")]}


@pytest.mark.parametrize("conversations", [
    [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],  # ends with the assistant
    [{"from": "robot", "value": "Hi"}],  # unknown speaker
])
def test_sharegpt_preference_with_a_bad_prompt_is_dropped(conversations):
    with pytest.raises(Dropped):
        sharegpt_to_preference({"conversations": conversations, "chosen": {"from": "gpt", "value": "a"},
                                "rejected": {"from": "gpt", "value": "b"}})


# --------------------------------------------------------------------------------- splits and output


def test_split_keeps_groups_together_is_seeded_and_holds_about_a_tenth():
    keys = [f"group{i // 3}" for i in range(300)]
    splits = split_by_group(keys)
    assert splits == split_by_group(keys)
    assert splits != split_by_group(keys, seed=build.SPLIT_SEED + 1)
    assert 30 <= splits.count("test") <= 32
    for key in set(keys):
        assert len({split for k, split in zip(keys, splits) if k == key}) == 1


def test_gzipped_json_lines_are_reproducible_bytes():
    rows = [{"messages": [user("é"), assistant("ok")]}]
    first, second = jsonl_bytes(rows, compress=True), jsonl_bytes(rows, compress=True)
    assert first == second
    assert first[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert gzip.decompress(first).decode("utf-8") == '{"messages": [{"role": "user", "content": "é"}, ' \
                                                     '{"role": "assistant", "content": "ok"}]}\n'


# ----------------------------------------------------------------------------------- shipped files


def read_rows(relative: str) -> list[dict]:
    path = DATA_DIR / relative
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def assert_messages(messages, last_role):
    assert isinstance(messages, list) and messages
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    assert [m["role"] for m in turns] == ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    assert turns[-1]["role"] == last_role
    for m in messages:
        assert set(m) == {"role", "content"} and isinstance(m["content"], str) and m["content"].strip()


def assert_well_formed(row, kind):
    if kind == "chat":
        assert set(row) == {"messages"}
        assert_messages(row["messages"], last_role="assistant")
    elif kind == "unpaired":
        assert set(row) == {"prompt", "completion", "label"} and isinstance(row["label"], bool)
        assert_messages(row["prompt"], last_role="user")
        assert len(row["completion"]) == 1 and row["completion"][0]["role"] == "assistant"
        assert row["completion"][0]["content"].strip()
    else:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert_messages(row["prompt"], last_role="user")
        for reply in (row["chosen"], row["rejected"]):
            assert len(reply) == 1 and reply[0]["role"] == "assistant" and reply[0]["content"].strip()
        assert row["chosen"] != row["rejected"]


def test_catalog_names_the_seven_shipped_datasets():
    assert [(entry["name"], entry["kind"]) for entry in CATALOG] == [
        ("hh-harmless-chosen", "chat"), ("oasst-top", "chat"), ("alpaca-en-demo", "chat"),
        ("hh-harmless", "preference"), ("oasst-ranked", "preference"), ("llamafactory-dpo-en-demo", "preference"),
        ("llamafactory-kto-en-demo", "unpaired")]
    for entry in CATALOG:
        assert set(entry) == {"name", "kind", "files", "rows", "license", "source", "notes"}
        assert entry["files"] == {split: f"{'chat' if entry['kind'] == 'chat' else 'preferences'}/"
                                         f"{entry['name']}.{split}.jsonl" + (".gz" if entry["name"].startswith("hh")
                                                                             else "")
                                  for split in ("train", "test")}
        for license_file in (word for word in entry["notes"].replace(",", " ").split() if word.startswith("licenses/")):
            assert (DATA_DIR / license_file.rstrip(".")).is_file(), license_file


@pytest.mark.parametrize("entry", CATALOG, ids=[entry["name"] for entry in CATALOG])
def test_shipped_files_match_the_catalog_and_every_row_is_well_formed(entry):
    for split, relative in entry["files"].items():
        rows = read_rows(relative)
        assert len(rows) == entry["rows"][split] > 0
        for row in rows:
            assert_well_formed(row, entry["kind"])
    total = entry["rows"]["train"] + entry["rows"]["test"]
    assert 0.07 <= entry["rows"]["test"] / total <= 0.13


def test_no_hh_prompt_is_in_both_the_chat_train_split_and_the_preference_test_split():
    chat_train = read_rows("chat/hh-harmless-chosen.train.jsonl.gz")
    preference_test = read_rows("preferences/hh-harmless.test.jsonl.gz")
    trained_dialogues = {json.dumps(row["messages"][:k]) for row in chat_train for k in range(1, len(row["messages"]))}
    trained_openings = {row["messages"][0]["content"] for row in chat_train}
    for row in preference_test:
        assert json.dumps(row["prompt"]) not in trained_dialogues
        assert row["prompt"][0]["content"] not in trained_openings


def test_the_kto_demo_keeps_both_labels_in_both_splits():
    for split in ("train", "test"):
        labels = [row["label"] for row in read_rows(f"preferences/llamafactory-kto-en-demo.{split}.jsonl")]
        assert 0.3 < sum(labels) / len(labels) < 0.7, split


def test_no_oasst_tree_is_in_both_splits():
    top_train = {row["messages"][0]["content"] for row in read_rows("chat/oasst-top.train.jsonl")}
    ranked_train = {row["prompt"][0]["content"] for row in read_rows("preferences/oasst-ranked.train.jsonl")}
    for row in read_rows("preferences/oasst-ranked.test.jsonl"):
        assert row["prompt"][0]["content"] not in top_train | ranked_train


def test_readme_credits_every_dataset_with_its_row_counts():
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    for entry in CATALOG:
        assert entry["name"] in readme
        assert f"{entry['rows']['train']:,}" in readme and f"{entry['rows']['test']:,}" in readme


SHARED = build.DEFAULT_SHARED


@pytest.mark.skipif(not (SHARED / "README.md").is_file(), reason="needs ../shared/datasets")
def test_rebuilding_from_the_shared_sources_reproduces_the_shipped_bytes(tmp_path: Path):
    build.write_all(build.build_all(SHARED), data_dir=tmp_path)
    for entry in CATALOG:
        for relative in entry["files"].values():
            assert (tmp_path / relative).read_bytes() == (DATA_DIR / relative).read_bytes(), relative
    assert (tmp_path / "catalog.json").read_bytes() == (DATA_DIR / "catalog.json").read_bytes()
