"""Preference rows: the accepted shapes, bad rows caught with their row numbers (drop vs refuse), label-store pairs."""

from __future__ import annotations

import json

import pytest

from align.errors import ConfigError, DataError
from align.data.preferences import load_preferences, trim_prompt, write_dropped

PROMPT = [{"role": "user", "content": "Name a colour."}]


def reply(text):
    return [{"role": "assistant", "content": text}]


GOOD = {"prompt": PROMPT, "chosen": reply("Blue."), "rejected": reply("I will not.")}

# (row, expected reason in the report, expected field) — file line numbers are 1-based.
BAD = [
    ({"prompt": PROMPT, "chosen": reply("Blue."), "rejected": reply("Red."), "tie": True}, "a tie", "chosen"),
    ({"prompt": PROMPT, "chosen": reply("Blue."), "rejected": reply("  Blue. ")}, "identical", "rejected"),
    ({"prompt": PROMPT, "chosen": reply("Blue."), "rejected": reply("   ")}, "empty reply", "rejected[0].content"),
    ({"prompt": PROMPT, "chosen": [{"role": "narrator", "content": "Blue."}], "rejected": reply("Red.")},
     "cannot be rendered", "chosen[0].role"),
    ({"prompt": PROMPT + reply("Hm."), "chosen": reply("Blue."), "rejected": reply("Red.")},
     "must end with the user's turn", "prompt[1].role"),
    ({"prompt": PROMPT, "chosen": reply("Blue.")}, "missing", "rejected"),
    ({"prompt": PROMPT, "chosen": "Blue.", "rejected": "Red.", "score_chosen": 7, "score_rejected": 7}, "a tie", "chosen"),
    ({"prompt": PROMPT, "chosen": [{"role": "user", "content": "Blue."}], "rejected": reply("Red.")},
     "must be the assistant's", "chosen[0].role"),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def mixed_file(tmp_path):
    """Row 1 good, rows 2..9 bad (in BAD's order); fewer than 10 rows, so every row is in the train split."""
    return write_jsonl(tmp_path / "pairs.jsonl", [GOOD] + [row for row, _, _ in BAD])


def test_bad_rows_are_dropped_and_reported_with_their_row_numbers(mixed_file, tmp_path, capsys):
    rows = load_preferences(str(mixed_file), "train", on_bad="drop")
    assert rows.rows == [GOOD]
    assert len(rows.dropped) == len(BAD)
    for number, (dropped, (_, reason, field)) in enumerate(zip(rows.dropped, BAD), start=2):
        assert dropped.startswith(f"row {number}, field '{field}': "), dropped
        assert reason in dropped
    assert rows.manifest_entry()["dropped"] == len(BAD)
    assert f"dropped {len(BAD)} of {len(BAD) + 1} preference rows" in capsys.readouterr().out
    write_dropped(rows, tmp_path)
    listed = (tmp_path / "dropped_rows.txt").read_text().splitlines()
    assert listed[1:] == rows.dropped


def test_refuse_stops_at_the_first_bad_row_and_counts_the_rest(mixed_file):
    with pytest.raises(DataError) as caught:
        load_preferences(str(mixed_file), "train", on_bad="refuse")
    error = caught.value
    assert (error.row, error.field) == (2, "chosen")
    assert "a tie" in str(error)
    assert f"{len(BAD) - 1} more bad rows: 3, 4, 5, 6, 7, 8, 9" in str(error)


def test_a_clean_file_passes_under_refuse(tmp_path):
    path = write_jsonl(tmp_path / "clean.jsonl", [GOOD, GOOD])
    assert load_preferences(str(path), "train", on_bad="refuse").rows == [GOOD, GOOD]


def test_unknown_policy_is_a_config_error(mixed_file):
    with pytest.raises(ConfigError, match="drop or refuse"):
        load_preferences(str(mixed_file), on_bad="ignore")


def test_all_rows_bad_is_an_error_not_an_empty_run(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [row for row, _, _ in BAD[:3]])
    with pytest.raises(DataError, match="no usable preference rows"):
        load_preferences(str(path), "train")


def test_plain_strings_and_implicit_prompts_become_conversational(tmp_path):
    conversation = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Name a colour."}]
    rows = [
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."},
        {"chosen": conversation + reply("Blue."), "rejected": conversation + reply("No.")},
    ]
    loaded = load_preferences(str(write_jsonl(tmp_path / "shapes.jsonl", rows)), "train", on_bad="refuse").rows
    assert loaded[0] == {"prompt": PROMPT, "chosen": reply("Blue."), "rejected": reply("No.")}
    assert loaded[1] == {"prompt": conversation, "chosen": reply("Blue."), "rejected": reply("No.")}


def test_held_out_rows_keep_their_file_row_numbers(tmp_path):
    """A user's file is split every 10th row: a bad row in the test split is reported with its line number."""
    rows = [GOOD] * 19 + [BAD[1][0]]  # row 20 is bad and held out
    path = write_jsonl(tmp_path / "twenty.jsonl", rows)
    assert len(load_preferences(str(path), "train", on_bad="refuse").rows) == 18
    test = load_preferences(str(path), "test", on_bad="drop")
    assert len(test.rows) == 1 and test.dropped == ["row 20, field 'rejected': chosen and rejected are identical"]


def test_a_bad_csv_row_is_named_by_the_file_line_it_starts_on(tmp_path):
    """Blank lines and a quoted reply spanning three lines move the row numbers: errors still name editor lines."""
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected\n'
                    'Name a colour.,"Blue,\nor green,\nor red.",No.\n'   # lines 2-4
                    '\n'                                                   # line 5, blank
                    'Say hi.,Hi!,Hi!\n', encoding="utf-8")                 # line 6: chosen == rejected
    with pytest.raises(DataError) as error:
        load_preferences(str(path), "train", on_bad="refuse")
    assert str(error.value).startswith(f"{path}, row 6, field 'rejected'")
    path.write_bytes(b"prompt,chosen,rejected\nA,B,C\nD,\xff,F\n")
    with pytest.raises(DataError, match=r"row 3: not UTF-8 text"):
        load_preferences(str(path), "train", on_bad="refuse")


def test_shipped_preference_sets_load_clean():
    for name in ("hh-harmless", "oasst-ranked", "llamafactory-dpo-en-demo"):
        rows = load_preferences(name, "test", limit=50, on_bad="refuse")
        assert rows.rows and not rows.dropped
        assert all(r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == "assistant" for r in rows.rows)


def test_a_chat_dataset_is_refused_as_preference_data():
    with pytest.raises(DataError, match="needs preference data"):
        load_preferences("hh-harmless-chosen", "test")


def test_label_store_pairs_load_through_the_labels_spec(tmp_path):
    """The labeling UI's export is read as it is: a ranking of three replies gives three pairs, a tie none."""
    from align.data.store import open_store

    path = tmp_path / "labels.sqlite"
    store = open_store(path)
    try:
        ids = store.add_items([PROMPT, [{"role": "user", "content": "Say hi."}]],
                              [["Blue.", "Green.", "No."], ["Hi!", "Hello!"]], model="test")
        store.add_annotator("ada", "secret-password")
        first, second = store.item(ids[0]), store.item(ids[1])
        store.submit(first.id, "ada", [[first.replies[0].id], [first.replies[1].id], [first.replies[2].id]],
                     assigned_only=False)
        store.submit(second.id, "ada", [[r.id for r in second.replies]], assigned_only=False)  # a tie: no pair
    finally:
        store.close()
    rows = load_preferences(f"labels:{path}", "train", on_bad="refuse")
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows.rows] == [
        ("Blue.", "Green."), ("Blue.", "No."), ("Green.", "No.")]
    assert all(r["prompt"] == PROMPT for r in rows.rows)
    assert rows.source == str(path)


def test_trim_prompt_leaves_out_the_earliest_turns_only_as_far_as_needed(tiny_model_dir):
    from align.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    system = [{"role": "system", "content": "Be brief."}]
    turns = []
    for i in range(4):
        turns += [{"role": "user", "content": f"question {i} " + "word " * 10}, *reply(f"answer {i} " + "word " * 10)]
    prompt = system + turns + [{"role": "user", "content": "last question"}]

    def length(messages):
        return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                 return_dict=True)["input_ids"])

    assert trim_prompt(prompt, tokenizer, -1) == prompt
    assert trim_prompt(prompt, tokenizer, length(prompt)) == prompt
    # A budget that fits the system message and the last two exchanges (plus the final question) exactly.
    budget = length(system + turns[4:] + prompt[-1:])
    trimmed = trim_prompt(prompt, tokenizer, budget)
    assert trimmed == system + turns[4:] + prompt[-1:]
    assert length(trimmed) <= budget < length(system + turns[2:] + prompt[-1:])
    # A budget below the last turn alone keeps the system message and the last user turn.
    assert trim_prompt(prompt, tokenizer, 3) == system + prompt[-1:]
