"""Feedback on a completion made before the server restarted: with `serve.keep_completions=store` the
completion waits in the label store (SQLite or PostgreSQL), so the feedback lands and exports as the chat app's;
with `memory` (the default: prompts and replies reach the disk only when the recipe
says so) nothing of it reaches the store and a restart forgets it (a 404 in OpenAI's shape)."""

from __future__ import annotations

import httpx
import pytest

from tests.serving.support import client, serving_command

pytestmark = pytest.mark.timeout(300)
SEA = [{"role": "user", "content": "Say something about the sea."}]


def two_replies(url):
    return client(url).chat.completions.create(model="demo/sft", messages=SEA, max_tokens=8, temperature=1.0, seed=11,
                                               n=2)


def feedback(url, **body):
    return httpx.post(url + "/v1/feedback", json=body, timeout=60)


def test_feedback_after_a_restart_lands_in_the_store_and_exports(demo_runs, label_db):
    argv = ("--config", "tiny", "--run", "demo", "--runs-dir", demo_runs, "--store", label_db,
            "serve.keep_completions=store")
    with serving_command(*argv) as (url, _):
        reply = two_replies(url)
    first, second = (choice.message.content for choice in reply.choices)
    assert first != second
    with serving_command(*argv) as (url, prepared):  # a new server: nothing of the first in memory
        thumb = feedback(url, completion_id=reply.id, choice=0, rating="up")
        pair = feedback(url, completion_id=reply.id, choice=1, preferred=0)
        again = feedback(url, completion_id=reply.id, choice=0, rating="down")
        store = prepared.service.store
        rows, exported = store.feedback()[-2:], store.export_preferences()
    assert thumb.status_code == 200 and pair.status_code == 200, (thumb.text, pair.text)
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_exists"
    assert (rows[0]["conversation"], rows[0]["reply"], rows[0]["rating"]) == (SEA, first, "up")
    assert rows[0]["model"] == str(demo_runs / "demo" / "sft") and rows[0]["auth"] == "none"
    assert {"prompt": SEA, "chosen": [{"role": "assistant", "content": first}],
            "rejected": [{"role": "assistant", "content": second}]} in exported


def test_completions_kept_in_memory_never_reach_the_store_and_a_restart_forgets_them(demo_runs, tmp_path):
    argv = ("--config", "tiny", "--run", "demo", "--runs-dir", demo_runs, "--store", tmp_path / "labels.sqlite",
            "serve.keep_completions=memory")
    with serving_command(*argv) as (url, prepared):
        reply = two_replies(url)
        assert feedback(url, completion_id=reply.id, choice=0, rating="up").status_code == 200
        assert prepared.service.store.count_completions() == 0
    with serving_command(*argv) as (url, prepared):
        gone = feedback(url, completion_id=reply.id, choice=1, rating="down")
        assert len(prepared.service.store.feedback()) == 1
    assert gone.status_code == 404
    error = gone.json()["error"]
    assert error["code"] == "completion_not_found" and error["param"] == "completion_id"
    assert reply.id in error["message"] and "keep_completions=memory" in error["message"]


def test_a_stored_completion_takes_feedback_from_the_key_that_made_it_only_also_after_a_restart(label_db):
    from align.data.store import open_store
    from align.serving.feedback import Kept, StoredCompletions, record_feedback
    from align.serving.protocol import ApiError, FeedbackRequest

    store = open_store(label_db)
    StoredCompletions(store).keep("chatcmpl-ci", Kept("m", SEA, ["a", "b"], [False, False], owner="ci"))
    StoredCompletions(store).keep("chatcmpl-open", Kept("m", SEA, ["a"], [False]))  # a server without keys
    store.close()
    store = open_store(label_db)  # the restarted server's store
    kept = StoredCompletions(store)
    rate = lambda cid, user: record_feedback(store, kept, FeedbackRequest(completion_id=cid, rating="up"),  # noqa: E731
                                             user, "login")
    with pytest.raises(ApiError) as caught:
        rate("chatcmpl-ci", "eve")
    assert caught.value.status == 404 and "chatcmpl-ci" in str(caught.value)
    rate("chatcmpl-ci", "ci")
    rate("chatcmpl-open", "anyone")
    assert [(f["user"], f["reply"]) for f in store.feedback()] == [("ci", "a"), ("anyone", "a")]
    store.close()
