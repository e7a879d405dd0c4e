"""The output filter with a real (small) toxicity scorer: a reply above the threshold is replaced by the fixed
refusal (plain and streamed: the stream never shows the reply first) or flagged, and counted in /metrics."""

from __future__ import annotations

import httpx
import pytest

from align.serving.moderation import REFUSAL, OutputFilter
from align.data.store import open_store
from tests.serving.support import client, make_run, serving

pytestmark = pytest.mark.timeout(600)
HELLO = [{"role": "user", "content": "Say something about the sea."}]
ASK = dict(model="demo/sft", messages=HELLO, max_tokens=10, temperature=1.0, seed=4)


@pytest.fixture()
def run_and_store(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    make_run(runs, tiny_model_dir)
    store = open_store(tmp_path / "labels.sqlite")
    yield runs, store
    store.close()


def streamed_text(url) -> tuple[list[str], str]:
    pieces, finish = [], None
    for chunk in client(url).chat.completions.create(**ASK, stream=True):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return pieces, finish


def test_a_reply_over_the_threshold_is_refused_plain_and_streamed(run_and_store, small_scorer):
    runs, store = run_and_store
    with serving(runs, "demo", store) as (url, _):
        original = client(url).chat.completions.create(**ASK).choices[0].message.content
    score = OutputFilter(0.5, scorer=small_scorer).check(original, where="test").score
    below = max(0.0, score - 1e-3)  # a threshold this fixture reply crosses
    with serving(runs, "demo", store, output_filter=OutputFilter(below, "refuse", small_scorer)) as (url, _):
        reply = client(url).chat.completions.create(**ASK)
        choice = reply.choices[0]
        assert choice.message.content == REFUSAL and choice.finish_reason == "content_filter"
        assert choice.model_dump()["align_filter"]["filtered"] is True
        pieces, finish = streamed_text(url)
        assert "".join(pieces) == REFUSAL and finish == "content_filter"
        assert original not in pieces and not any(p and p in original for p in pieces if len(p) > 3)
        refused = httpx.post(url + "/v1/feedback", json={"completion_id": reply.id, "rating": "up"})
        assert refused.status_code == 400  # a withheld reply takes no feedback
        assert 'align_filtered_replies_total{action="refuse"} 2' in httpx.get(url + "/metrics").text
    with serving(runs, "demo", store, output_filter=OutputFilter(min(1.0, score + 1e-3), "refuse",
                                                                 small_scorer)) as (url, _):
        assert client(url).chat.completions.create(**ASK).choices[0].message.content == original


def test_flag_passes_the_reply_on_marked(run_and_store, small_scorer):
    runs, store = run_and_store
    with serving(runs, "demo", store, output_filter=OutputFilter(0.0, "flag", small_scorer)) as (url, _):
        plain = client(url).chat.completions.create(**ASK).choices[0]
        assert plain.message.content != REFUSAL and plain.finish_reason == "length"
        assert plain.model_dump()["align_filter"] == {**plain.model_dump()["align_filter"], "filtered": True,
                                                      "action": "flag"}
        pieces, _ = streamed_text(url)
        assert "".join(pieces) == plain.message.content
        assert 'align_filtered_replies_total{action="flag"} 2' in httpx.get(url + "/metrics").text
