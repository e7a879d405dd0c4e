"""`serve`: the real API server on 127.0.0.1 over the tiny model, talked to with the official openai client —
models, completions (plain, streamed, stop sequences, n > 1), OpenAI-shaped errors with their statuses, API keys,
the rate limit, feedback into the label store and its export as preference pairs, /metrics and /health."""

from __future__ import annotations

import httpx
import openai
import pytest

from align.data.store import open_store
from tests.serving.support import client, make_run, serving

pytestmark = pytest.mark.timeout(300)
HELLO = [{"role": "user", "content": "Say something about the sea."}]


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_model_dir):
    """(url, service, store) of one server for the module's tests."""
    root = tmp_path_factory.mktemp("serve")
    runs = root / "runs"
    make_run(runs, tiny_model_dir)
    store = open_store(root / "labels.sqlite")
    with serving(runs, "demo", store, max_tokens=64, default_max_tokens=12, max_request_bytes=20_000) as (url, service):
        yield url, service, store
    store.close()


def ask(url, **extra):
    params = dict(model="demo/sft", messages=HELLO, max_tokens=12, temperature=1.0, seed=7)
    params.update(extra)
    return client(url).chat.completions.create(**params)


def test_models_lists_the_runs_promoted_stage_with_its_gate(api):
    url, _, _ = api
    models = client(url).models.list().data
    assert [m.id for m in models] == ["demo/sft"]
    card = models[0].model_dump()
    assert card["stage"] == "sft" and card["status"] == "promoted" and card["gate"] == "pass"
    assert client(url).models.retrieve("demo/sft").id == "demo/sft"


def test_a_completion_has_text_and_usage(api):
    url, _, _ = api
    reply = ask(url)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == "demo/sft"
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert ask(url).choices[0].message.content == choice.message.content  # same seed, same reply
    assert ask(url, seed=8).choices[0].message.content != choice.message.content


def test_a_streamed_completion_joins_to_the_same_text_at_the_same_seed(api):
    url, _, _ = api
    plain = ask(url, n=2)
    chunks = list(client(url).chat.completions.create(model="demo/sft", messages=HELLO, max_tokens=12,
                                                      temperature=1.0, seed=7, n=2, stream=True,
                                                      stream_options={"include_usage": True}))
    texts, finish = ["", ""], [None, None]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    assert len([c for c in chunks if c.choices]) > 4  # token by token, not one piece
    assert texts == [c.message.content for c in plain.choices]
    assert finish == [c.finish_reason for c in plain.choices]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_the_stream_is_server_sent_events_ending_with_done(api):
    url, _, _ = api
    with httpx.stream("POST", url + "/v1/chat/completions", json={"model": "demo/sft", "messages": HELLO,
                                                                  "max_tokens": 3, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_a_stop_sequence_ends_the_reply_before_it(api):
    url, _, _ = api
    full = ask(url, max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = ask(url, max_tokens=24, stop=[stop, "never-there"]).choices[0]
    assert cut.message.content == full[:full.find(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client(url).chat.completions.create(
        model="demo/sft", messages=HELLO, max_tokens=24, temperature=1.0, seed=7, stop=stop, stream=True) if c.choices)
    assert streamed == cut.message.content


def test_n_gives_that_many_different_choices(api):
    url, _, _ = api
    reply = ask(url, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) == 3
    assert reply.choices[0].message.content == ask(url).choices[0].message.content  # choice 0 as with n=1


@pytest.mark.parametrize("change, status, param, code", [
    ({"model": "no-such-model"}, 404, "model", "model_not_found"),
    ({"messages": []}, 400, "messages", None),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role", None),
    ({"messages": [{"role": "user"}]}, 400, "messages.0.content", "missing_required_parameter"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages", None),
    ({"temperature": "hot"}, 400, "temperature", "invalid_value"),
    ({"temperature": 3}, 400, "temperature", "invalid_value"),
    ({"n": "two"}, 400, "n", "invalid_value"),
    ({"max_tokens": 65}, 400, "max_tokens", "invalid_value"),
    ({"max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ({"stop": ["", "x"]}, 400, "stop", "invalid_value"),
    ({"messages": [{"role": "user", "content": "sea " * 1100}]}, 400, "messages", "context_length_exceeded"),
])
def test_each_bad_request_gets_an_openai_error_and_status(api, change, status, param, code):
    url, _, _ = api
    body = {"model": "demo/sft", "messages": HELLO, "max_tokens": 4, **change}
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(**body)
    assert caught.value.status_code == status
    error = caught.value.body  # the client hands over the "error" object
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and (code is None or error["code"] == code)


def test_a_body_over_the_size_limit_is_413_and_bad_json_400(api):
    url, _, _ = api
    with pytest.raises(openai.APIStatusError) as caught:
        client(url).chat.completions.create(model="demo/sft", messages=[{"role": "user", "content": "x" * 30_000}])
    assert caught.value.status_code == 413 and caught.value.body["code"] == "request_too_large"
    response = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert httpx.get(url + "/v1/nowhere").json()["error"]["type"] == "invalid_request_error"


def test_feedback_is_stored_once_and_a_preferred_choice_exports_as_a_pair(api):
    url, _, store = api
    before = len(store.feedback())
    reply = ask(url, n=2, seed=11)
    post = lambda **body: httpx.post(url + "/v1/feedback", json={"completion_id": reply.id, **body})  # noqa: E731
    first = post(choice=0, rating="up")
    assert first.status_code == 200, first.text
    again = post(choice=0, rating="down")
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_exists"
    assert post(choice=1, preferred=0).status_code == 200
    rows = store.feedback()[before:]
    assert len(rows) == 2
    assert rows[0]["rating"] == "up" and rows[0]["reply"] == reply.choices[0].message.content
    assert rows[0]["conversation"] == HELLO and rows[0]["auth"] == "none" and rows[0]["model"].endswith("demo/sft")
    pair = {"prompt": HELLO, "chosen": [{"role": "assistant", "content": reply.choices[0].message.content}],
            "rejected": [{"role": "assistant", "content": reply.choices[1].message.content}]}
    assert store.export_preferences().count(pair) == 1
    assert post(choice=1, preferred="A better reply, written by the user.").status_code == 409
    unknown = httpx.post(url + "/v1/feedback", json={"completion_id": "chatcmpl-nope", "rating": "up"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "completion_id"
    neither = post(choice=0)
    assert neither.status_code == 400
    assert len(store.feedback()) == before + 2


def test_health_and_prometheus_metrics(api):
    url, _, _ = api
    assert httpx.get(url + "/health").json()["status"] == "ok"
    ask(url)
    text = httpx.get(url + "/metrics").text
    for name in ("align_requests_total", "align_completion_tokens_total", "align_queue_length",
                 "align_request_latency_seconds_bucket", "align_time_to_first_token_seconds_count",
                 "align_filtered_replies_total"):
        assert name in text
    assert 'align_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    tokens = [line for line in text.splitlines() if line.startswith("align_completion_tokens_total ")]
    assert int(tokens[0].split()[1]) > 0


def test_keys_when_on_refuse_missing_unknown_and_revoked_keys(tmp_path, tiny_model_dir):
    from align.serving.keys import ApiKeys

    runs = tmp_path / "runs"
    make_run(runs, tiny_model_dir)
    store = open_store(tmp_path / "labels.sqlite")
    keys = ApiKeys(store)
    good, other, eve = keys.add("ci"), keys.add("old"), keys.add("eve")
    keys.revoke("old")
    with serving(runs, "demo", store, keys=keys) as (url, _):
        assert client(url, good).models.list().data[0].id == "demo/sft"
        for key in ("align-not-a-key", other, "sk-something"):
            with pytest.raises(openai.AuthenticationError) as caught:
                client(url, key).models.list()
            assert caught.value.body["code"] == "invalid_api_key"
        missing = httpx.post(url + "/v1/chat/completions", json={"model": "demo/sft", "messages": HELLO})
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
        assert httpx.get(url + "/metrics").status_code == 401
        reply = client(url, good).chat.completions.create(model="demo/sft", messages=HELLO, max_tokens=3)
        rate = lambda key, rating: httpx.post(url + "/v1/feedback", headers={"Authorization": f"Bearer {key}"},  # noqa: E731
                                              json={"completion_id": reply.id, "rating": rating})
        stranger = rate(eve, "up")  # another valid key that learnt the id: as if it did not exist
        assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "completion_not_found"
        rated = rate(good, "down")  # the owner's one feedback was not pre-empted
        assert rated.status_code == 200, rated.text
    assert [(f["user"], f["rating"], f["auth"]) for f in store.feedback()] == [("ci", "down", "login")]
    assert [k["name"] for k in keys.list()] == ["ci", "eve", "old"] and "align-" not in str(keys.list())
    store.close()


def test_the_rate_limit_answers_429_per_key(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    make_run(runs, tiny_model_dir)
    store = open_store(tmp_path / "labels.sqlite")
    with serving(runs, "demo", store, rate_limit=2) as (url, _):
        client(url).models.list()
        client(url).models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            client(url).models.list()
        assert caught.value.body["code"] == "rate_limit_exceeded"
        assert int(caught.value.response.headers["retry-after"]) >= 1
    store.close()
