"""The batching engine on the tiny model: requests that arrive together decode together, a request arriving
mid-way joins the running batch, a finished one leaves it, and each reply is the one it gets alone (same seed)."""

from __future__ import annotations

import threading

import pytest

from align.serving.engine import GenerationRequest, TransformersEngine, find_stop, stop_hold

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from align.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(tiny_model_dir), device="cpu").eval()
    steps: list[int] = []
    engine = TransformersEngine(model, load_tokenizer(str(tiny_model_dir)), max_batch=16,
                                on_step=lambda rows, waiting: steps.append(rows))
    engine.steps = steps
    yield engine
    engine.close()


class Reply:
    """Collects one request's events; `wait()` until every choice is done."""

    def __init__(self, engine, text: str, *, n: int = 1, max_tokens: int = 10, seed: int = 3,
                 temperature: float = 1.0):
        self.texts, self.finish, self.left = [""] * n, [None] * n, n
        self.done, self.started = threading.Event(), threading.Event()
        self.request = GenerationRequest(engine.encode([{"role": "user", "content": text}]), self.emit, n=n,
                                         max_tokens=max_tokens, temperature=temperature, top_p=0.9, seed=seed)

    def emit(self, event):
        if event[0] == "text":
            self.texts[event[1]] += event[2]
            self.started.set()
        elif event[0] == "done":
            self.finish[event[1]] = event[2]
            self.left -= 1
            if not self.left:
                self.done.set()
        else:
            raise AssertionError(event)

    def wait(self):
        assert self.done.wait(120)
        return self.texts


def alone(engine, *args, **kwargs):
    reply = Reply(engine, *args, **kwargs)
    engine.submit(reply.request)
    return reply.wait()


def test_requests_that_arrive_together_decode_together_as_they_would_alone(engine):
    prompts = ["Tell me about cats.", "A much longer question about the history of the sea and ships?", "Hi"]
    solo = [alone(engine, p, n=2 if i == 0 else 1, seed=i) for i, p in enumerate(prompts)]
    engine.steps.clear()
    replies = [Reply(engine, p, n=2 if i == 0 else 1, seed=i) for i, p in enumerate(prompts)]
    for reply in replies:  # queued before the engine takes any: one batch of 4 rows
        engine.waiting.put(reply.request)
    assert [r.wait() for r in replies] == solo
    assert max(engine.steps) == 4


def test_a_late_request_joins_the_running_batch_and_a_finished_one_leaves(engine):
    expected_long = alone(engine, "Write a long story.", max_tokens=40, seed=5)
    expected_short = alone(engine, "Short?", max_tokens=3, seed=6)
    engine.steps.clear()
    long = Reply(engine, "Write a long story.", max_tokens=40, seed=5)
    engine.submit(long.request)
    assert long.started.wait(60)
    short = Reply(engine, "Short?", max_tokens=3, seed=6)
    engine.submit(short.request)
    assert short.wait() == expected_short
    assert not long.done.is_set() or long.finish == ["length"]
    assert long.wait() == expected_long
    rows = [r for r in engine.steps if r]  # the step that empties the batch reports 0 rows, maybe after long.wait()
    assert 2 in rows and rows[-1] == 1 and rows.index(2) < len(rows) - 1 - rows[::-1].index(2)
    assert sum(1 for r in rows if r == 2) <= 4  # the short one left after its 3 tokens (a step or so to join)


def test_greedy_is_deterministic_and_a_cancelled_request_leaves(engine):
    assert alone(engine, "Hi", temperature=0.0, seed=1) == alone(engine, "Hi", temperature=0.0, seed=2)
    reply = Reply(engine, "Write a long story.", max_tokens=500)
    engine.submit(reply.request)
    assert reply.started.wait(60)
    reply.request.cancelled = True
    follow = alone(engine, "Hi", max_tokens=2)
    assert follow and not reply.done.is_set()


def test_stop_sequences_are_held_back_until_they_can_no_longer_begin():
    assert stop_hold("hello wor", ["world"]) == 3 and stop_hold("hello", ["xyz"]) == 0
    assert stop_hold("caf\ufffd", []) == 1
    assert find_stop("one two three", ["three", "two"]) == 4 and find_stop("abc", ["x"]) is None
