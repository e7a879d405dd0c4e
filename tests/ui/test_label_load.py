"""Load test on loopback: 20 annotators at once label through the app's API (gradio_client); every
submission is stored exactly once, each item gets exactly its quota, and the submit latency is printed.
Runs on a SQLite file and on the session's PostgreSQL server (the `label_db` fixture)."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter

import pytest

from tests.ui.label_support import make_store, password_of, running_app

pytestmark = pytest.mark.timeout(240)

ANNOTATORS = [f"annotator{i:02d}" for i in range(20)]
PER_ITEM = 2
ITEMS = [(f"prompt {n}", [f"reply {n}.{k}" for k in range(3)]) for n in range(30)]


def log_in(url, name):
    from gradio_client import Client

    return Client(url, auth=(name, password_of(name)), verbose=False, httpx_kwargs={"timeout": 60})


def label_until_done(client, name, acked, latencies, errors):
    """One simulated annotator: take the next item, rank it, submit; resubmit the first one once."""
    try:
        first = None
        while True:
            item = client.predict(api_name="/next_item")
            if item["item_id"] is None:
                break
            ranking = [[reply["id"]] for reply in item["replies"]]
            started = time.perf_counter()
            client.predict(item["item_id"], ranking, False, {}, api_name="/submit")
            latencies.append(time.perf_counter() - started)
            acked.append((item["item_id"], name))
            first = first or (item["item_id"], ranking)
        if first:  # a retry of an acknowledged submit must not add a row
            client.predict(first[0], first[1][::-1], False, {}, api_name="/submit")
    except Exception as error:  # noqa: BLE001 - collected and reported by the test
        errors.append(f"{name}: {error!r}")


def test_twenty_concurrent_annotators_store_every_submission_once(label_db):
    store = make_store(label_db, annotators=ANNOTATORS, admins=(), items=ITEMS,
                       annotators_per_item=PER_ITEM)
    acked, latencies, errors = [], [], []
    with running_app(store) as url:
        from gradio_client import Client

        with pytest.raises(Exception):  # the API is behind the login too
            Client(url, verbose=False).predict(api_name="/next_item")
        clients = {name: log_in(url, name) for name in ANNOTATORS}  # people arrive one by one
        threads = [threading.Thread(target=label_until_done, args=(clients[name], name, acked, latencies, errors))
                   for name in ANNOTATORS]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=200)
        wall = time.perf_counter() - started

    assert not errors, errors[:3]
    stored = [(label.item_id, label.annotator) for label in store.labels()]
    assert len(acked) == len(ITEMS) * PER_ITEM == len(stored)
    assert Counter(stored) == Counter(acked)  # every acknowledged submission once, nothing else
    assert set(Counter(item for item, _ in stored).values()) == {PER_ITEM}
    assert store.active_holds() == []
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(f"\nsubmit latency over {len(latencies)} submits by {len(ANNOTATORS)} concurrent annotators: "
          f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms (wall {wall:.1f} s, {store.engine.dialect.name})")
