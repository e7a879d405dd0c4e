"""Kill the labeling server (SIGKILL) while an annotator is submitting, restart it: every acknowledged
label is still there exactly once, the file is intact, and items held by the dead server's users are
released at restart (not only when their hold expires). On a SQLite file and on a PostgreSQL server."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.ui.label_support import free_port, make_store, password_of

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]


def start_server(store_path: str, port: int, log: Path) -> subprocess.Popen:
    """`python -m align.run label` in its own process; returns once it answers."""
    command = [sys.executable, "-m", "align.run", "label", "--store", str(store_path), "--port", str(port),
               "--hold-minutes", "10"]
    process = subprocess.Popen(command, cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    import httpx

    deadline = time.time() + 150
    while time.time() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code < 500:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"server did not start:\n{log.read_text()[-2000:]}")


def client(port: int, name: str):
    from gradio_client import Client

    return Client(f"http://127.0.0.1:{port}/", auth=(name, password_of(name)), verbose=False,
                  httpx_kwargs={"timeout": 60})


def test_a_killed_server_loses_no_committed_label_and_releases_holds_on_restart(tmp_path, label_db):
    path = label_db  # a SQLite file, or a database on the session's PostgreSQL server
    items = [(f"prompt {n}", [f"reply {n}a", f"reply {n}b"]) for n in range(8)]
    make_store(path, items=items, admins=()).close()
    log, port = tmp_path / "server.log", free_port()

    server = start_server(path, port, log)
    try:
        bob = client(port, "bob")
        held_by_bob = bob.predict(api_name="/next_item")["item_id"]  # bob opens an item and walks away
        ada = client(port, "ada")
        acked, stop = [], threading.Event()

        def keep_labeling():
            try:
                while not stop.is_set():
                    item = ada.predict(api_name="/next_item")
                    if item["item_id"] is None:
                        return
                    ranking = [[reply["id"]] for reply in item["replies"]]
                    ada.predict(item["item_id"], ranking, False, {}, api_name="/submit")
                    acked.append(item["item_id"])
            except Exception:  # noqa: BLE001 - the server dies under it; that is the test
                return

        worker = threading.Thread(target=keep_labeling)
        worker.start()
        deadline = time.time() + 60
        while len(acked) < 3 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)  # mid-session: ada is still submitting
        server.wait(timeout=30)
        stop.set()
        worker.join(timeout=90)
        assert len(acked) >= 3
    finally:
        if server.poll() is None:
            server.kill()

    if "://" not in path:  # the SQLite file is intact (PostgreSQL keeps its own files)
        with sqlite3.connect(path) as raw:
            assert raw.execute("pragma integrity_check").fetchone() == ("ok",)
    from align.data.store import open_store

    store = open_store(path)
    labeled = [label.item_id for label in store.labels() if label.annotator == "ada"]
    assert set(acked) <= set(labeled) and len(labeled) == len(set(labeled))  # nothing lost, nothing doubled
    assert held_by_bob not in labeled
    assert (held_by_bob, "bob") in [(item, name) for item, name, _ in store.active_holds()]

    server = start_server(path, port, log)
    try:
        assert store.active_holds() == []  # released at start, long before the 10-minute hold lapses
        ada = client(port, "ada")
        while (item := ada.predict(api_name="/next_item"))["item_id"] is not None:
            ada.predict(item["item_id"], [[r["id"]] for r in item["replies"]], False, {}, api_name="/submit")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    final = sorted(label.item_id for label in store.labels())
    assert final == list(range(1, len(items) + 1))  # bob's abandoned item went to ada after the restart
