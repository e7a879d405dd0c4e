"""`candidates` on the tiny model: replies land in the label store, a rerun skips stored prompts."""

from __future__ import annotations

import json

from align.data.store import open_store
from tests.helpers import run_cli


def write_prompts(path, texts):
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": t}]}) + "\n" for t in texts))


def test_candidates_fill_the_store_and_resume(tmp_path, tiny_model_dir):
    prompts, store_path = tmp_path / "prompts.jsonl", tmp_path / "labels.sqlite"
    write_prompts(prompts, ["one", "two", "three"])
    args = ["candidates", "--config", "tiny", "--from", "tiny", f"prompts={prompts}", "n=3",
            "max_new_tokens=4", "chunk=2", f"store={store_path}", f"runs_dir={tmp_path / 'runs'}"]
    assert run_cli(*args) == 0
    store = open_store(store_path)
    assert store.count_items() == 3
    first = store.item(1)
    assert first.prompt == [{"role": "user", "content": "one"}] and len(first.replies) == 3
    assert {r.model for r in first.replies} == {"tiny"}

    write_prompts(prompts, ["one", "two", "three", "four"])  # a rerun samples only the new prompt
    assert run_cli(*args) == 0
    assert store.count_items() == 4 and store.item(4).prompt[0]["content"] == "four"
    assert run_cli(*args[:-1], "n=1") == 2  # annotators need at least two replies to rank
    assert run_cli(*args[:3], "n=3") == 2  # no prompts=
