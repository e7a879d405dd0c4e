"""Unpaired examples for KTO (data/unpaired.py): the accepted shapes, bad rows named by file, row and field, the
shipped demo, pairs split in two, and the label store's export (thumbs, compare choices, best/worst-ranked)."""

from __future__ import annotations

import json

import pytest

from align.data.labels import RankedLabel, consensus_unpaired
from align.data.preferences import load_preferences
from align.data.store import open_store
from align.data.unpaired import balanced_weights, check_unpaired_row, load_unpaired
from align.errors import DataError

USER = [{"role": "user", "content": "Hi?"}]


def reply(text):
    return [{"role": "assistant", "content": text}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_every_accepted_shape_becomes_the_conversational_unpaired_row():
    assert check_unpaired_row({"prompt": "Hi?", "completion": "Hello.", "label": True}, "f", 1) == \
        {"prompt": USER, "completion": reply("Hello."), "label": True}
    assert check_unpaired_row({"prompt": USER, "completion": reply("No."), "label": "false"}, "f", 1)["label"] is False
    assert check_unpaired_row({"messages": USER + reply("Yes."), "label": 1}, "f", 1) == \
        {"prompt": USER, "completion": reply("Yes."), "label": True}
    assert check_unpaired_row({"prompt": USER, "chosen": reply("Good."), "rejected": reply("Bad.")}, "f", 1) == [
        {"prompt": USER, "completion": reply("Good."), "label": True},
        {"prompt": USER, "completion": reply("Bad."), "label": False}]


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": USER, "completion": reply("x")}, "label", "missing"),
    ({"prompt": USER, "completion": reply("x"), "label": "maybe"}, "label", "true (desirable) or false"),
    ({"prompt": USER, "completion": "  ", "label": True}, "completion", "empty reply"),
    ({"prompt": USER, "completion": [{"role": "user", "content": "x"}], "label": True}, "completion[0].role",
     "assistant's"),
    ({"prompt": USER + reply("a"), "completion": reply("x"), "label": True}, "prompt[1].role", "user's turn"),
    ({"prompt": USER, "chosen": reply("Same."), "rejected": reply("Same.")}, "rejected", "identical"),
])
def test_a_bad_row_names_its_field(row, field, message):
    with pytest.raises(DataError) as error:
        check_unpaired_row(row, "f.jsonl", 7)
    assert (error.value.row, error.value.field) == (7, field) and message in error.value.message


def test_bad_rows_are_dropped_with_their_numbers_or_refused(tmp_path):
    rows = [{"prompt": f"Q{i}?", "completion": f"A{i}.", "label": i % 3 == 0} for i in range(1, 13)]
    rows[2]["label"] = "perhaps"  # line 3
    rows[4]["completion"] = ""  # line 5
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    loaded = load_unpaired(str(path), "train")
    assert len(loaded.rows) == 11 - 2  # row 10 is held out
    assert [line.split(",")[0] for line in loaded.dropped] == ["row 3", "row 5"]
    assert loaded.counts == {"desirable": sum(r["label"] for r in loaded.rows), "undesirable": 9 - loaded.counts["desirable"]}
    assert loaded.manifest_entry()["desirable"] == loaded.counts["desirable"]
    with pytest.raises(DataError) as error:
        load_unpaired(str(path), "train", on_bad="refuse")
    assert (error.value.row, error.value.field) == (3, "label") and "1 more bad rows: 5" in error.value.message


def test_the_shipped_demo_and_pairs_load_as_unpaired_but_pairs_stages_refuse_the_demo():
    demo = load_unpaired("llamafactory-kto-en-demo", "test")
    assert len(demo.rows) == 30 and demo.counts == {"desirable": 14, "undesirable": 16}
    pairs = load_unpaired("llamafactory-dpo-en-demo", "test", limit=5)
    assert [row["label"] for row in pairs.rows] == [True, False] * 5
    with pytest.raises(DataError, match="is an unpaired dataset, this stage needs preference data"):
        load_preferences("llamafactory-kto-en-demo", "train")


def test_weights_balance_the_counts_as_the_kto_paper_suggests():
    assert balanced_weights(10, 10) == (1.0, 1.0)
    assert balanced_weights(10, 30) == (3.0, 1.0)
    assert balanced_weights(30, 9) == (1.0, 3.33)
    for counts in ((7, 3), (3, 7), (30, 9), (9, 30), (100, 1)):
        desirable, undesirable = balanced_weights(*counts)
        assert 1.0 <= (counts[0] * desirable) / (counts[1] * undesirable) <= 4 / 3, counts
    assert balanced_weights(0, 5) == (1.0, 1.0)


def test_consensus_unpaired_takes_what_most_annotators_rank_first_or_last():
    one = [RankedLabel("ada", [[1], [2], [3]])]
    assert consensus_unpaired(one, [1, 2, 3]) == [(1, True), (3, False)]
    assert consensus_unpaired([RankedLabel("ada", [[1, 2, 3]])], [1, 2, 3]) == []  # all tied: no signal
    assert consensus_unpaired([RankedLabel("ada", [], all_unacceptable=True)], [1, 2]) == [(1, False), (2, False)]
    split = [RankedLabel("ada", [[1], [2]]), RankedLabel("bob", [[2], [1]])]
    assert consensus_unpaired(split, [1, 2]) == []  # one vote each way is no majority
    agree = split + [RankedLabel("cy", [[1], [2]])]
    assert consensus_unpaired(agree, [1, 2]) == [(1, True), (2, False)]


def test_the_label_store_exports_thumbs_compare_choices_and_ranked_replies(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = open_store(path)
    try:
        store.add_annotator("ada", "password-of-ada")
        [item] = store.add_items([USER], [["Best.", "Middle.", "Worst."]], model="m")
        held = store.next_item("ada")
        ids = {r.text: r.id for r in held.replies}
        store.submit(item, "ada", [[ids["Best."]], [ids["Middle."]], [ids["Worst."]]])
        store.add_feedback(USER, "Nice.", rating="up", user="ada", auth="login")
        store.add_feedback(USER, "Rude.", rating="down", user="ada", auth="login")
        store.add_feedback(USER, "Chosen.", rejected="Other.", user="ada", auth="login")
        rows = store.export_kto()
    finally:
        store.close()
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("Best.", True), ("Worst.", False), ("Nice.", True), ("Rude.", False), ("Chosen.", True), ("Other.", False)]
    loaded = load_unpaired(f"labels:{path}", "train")  # 6 rows: none is a 10th, none held out
    assert loaded.rows == rows and loaded.counts == {"desirable": 3, "undesirable": 3}
    assert load_unpaired(f"labels:{path}", "train", limit=3).counts == {"desirable": 2, "undesirable": 1}

    from tests.helpers import run_cli  # the same rows from the command line, a file kto reads as data=

    exported = tmp_path / "out" / "thumbs.jsonl"
    assert run_cli("label", "--store", path, "--export", exported, "--export-kind", "unpaired") == 0
    assert [json.loads(line) for line in exported.read_text().splitlines()] == rows
    assert load_unpaired(str(exported), "train").counts == {"desirable": 3, "undesirable": 3}
    assert not list(exported.parent.glob("*.partial"))
    pairs = tmp_path / "out" / "pairs.jsonl"
    assert run_cli("label", "--store", path, "--export", pairs) == 0  # the default: preference pairs
    assert len(pairs.read_text().splitlines()) == len(load_preferences(f"labels:{path}", "train").rows) > 0


def test_a_mixed_in_store_too_small_for_a_test_split_leaves_it_to_the_other_part(tmp_path):
    path = tmp_path / "labels.sqlite"
    store = open_store(path)
    try:
        store.add_feedback(USER, "Nice.", rating="up")
        store.add_feedback(USER, "Rude.", rating="down")
    finally:
        store.close()
    spec = f"llamafactory-kto-en-demo,labels:{path}"
    assert len(load_unpaired(spec, "train").rows) == 270 + 2
    assert len(load_unpaired(spec, "test").rows) == 30  # two thumbs hold out no 10th row
    with pytest.raises(DataError, match="no rows"):
        load_unpaired(f"labels:{path}", "test")
