"""Dataset specs and bad input: every problem names the file, the row and the field; nothing is half-written."""

from __future__ import annotations

import json

import pytest

from align.errors import DataError
from align.data.registry import load_chat, load_prompts
from tests.helpers import run_cli

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_shipped_chat_data_loads_with_a_fixed_split():
    train = load_chat("hh-harmless-chosen", "train", limit=5)
    test = load_chat("hh-harmless-chosen", "test", limit=5)
    assert len(train.rows) == 5 and train.rows[0]["messages"][-1]["role"] == "assistant"
    assert train.sha256 != test.sha256
    assert train.rows == load_chat("hh-harmless-chosen", "train", limit=5).rows


def test_user_files_in_every_format(tmp_path):
    import pandas as pd

    rows = [GOOD] * 20
    paths = [_jsonl(tmp_path / "a.jsonl", rows)]
    (tmp_path / "b.json").write_text(json.dumps(rows))
    paths.append(tmp_path / "b.json")
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")
    paths.append(tmp_path / "c.parquet")
    for path in paths:
        assert len(load_chat(str(path), "train").rows) == 18  # every 10th row is held out
        assert len(load_chat(str(path), "test").rows) == 2


def test_prompts_come_from_chat_rows():
    prompts = load_prompts("hh-harmless-chosen", "test", limit=3).rows
    assert all(p["prompt"][-1]["role"] == "user" for p in prompts)


@pytest.mark.parametrize("rows, row, field, words", [
    ([GOOD, {"text": "no messages"}], 2, "messages", "missing"),
    ([GOOD, GOOD, {"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}],
     3, "messages[1].role", "role 'bot' cannot be rendered"),
    ([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 5}]}],
     1, "messages[1].content", "must be a string"),
    ([{"messages": [{"role": "user", "content": "x"}]}], 1, "messages[0].role", "last message must be the assistant"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, rows, row, field, words):
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError) as caught:
        load_chat(str(path), "all")
    error = caught.value
    assert (error.file, error.row, error.field) == (str(path), row, field)
    assert words in str(error)


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(DataError, match=r"chat.jsonl, row 2: not valid JSON"):
        load_chat(str(path), "all")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_chat(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="has no rows"):
        load_chat(str(tmp_path / "empty.jsonl"))


def test_preference_data_is_refused_for_sft():
    with pytest.raises(DataError, match="is a preference dataset"):
        load_chat("hh-harmless")


@pytest.mark.parametrize("case", ["missing", "no-messages", "bad-role", "empty"])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, tiny_model_dir, case):
    data = tmp_path / "in.jsonl"
    if case == "no-messages":
        _jsonl(data, [GOOD, {"prompt": "x"}])
    elif case == "bad-role":
        _jsonl(data, [{"messages": [{"role": "human", "content": "x"}, {"role": "assistant", "content": "y"}]}])
    elif case == "empty":
        data.write_text("")
    runs = tmp_path / "runs"
    code = run_cli("sft", "--config", "tiny", f"runs_dir={runs}", f"data={data}", "--run", "bad")
    err = capsys.readouterr().err
    assert code == 2
    assert str(data) in err
    assert {"no-messages": "row 2, field 'messages'", "bad-role": "row 1, field 'messages[0].role'",
            "missing": "file not found", "empty": "no rows"}[case] in err
    assert not (runs / "bad").exists(), "nothing may be left behind"


def test_manifest_entries_never_show_a_database_password():
    from align.data.registry import Rows, shown_spec

    spec = "hh-harmless,labels:postgresql://align:s3cret-pw@db.example:5432/labels"
    assert shown_spec(spec) == "hh-harmless,labels:postgresql://align:***@db.example:5432/labels"
    assert shown_spec("labels:runs/x/labels.sqlite") == "labels:runs/x/labels.sqlite"
    entry = Rows(spec=spec, split="train", rows=[], source="postgresql://align:s3cret-pw@db.example/labels",
                 sha256="0").manifest_entry()
    assert "s3cret" not in json.dumps(entry) and entry["spec"].endswith("align:***@db.example:5432/labels")
