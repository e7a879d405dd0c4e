"""Who may write to the label store (on SQLite and on PostgreSQL, through the `label_db` fixture): a submit
only from the annotator an item was given to and within its quota, also when submits race; passwords of 8
characters at least; unknown names as slow to check as known ones; a new store file readable by its owner only."""

from __future__ import annotations

import os
import statistics
import stat
import threading
import time

import pytest

from align.errors import AlignError
from align.data.store import MIN_PASSWORD_LENGTH, AssignmentError, open_store


def user(text):
    return [{"role": "user", "content": text}]


def ranking_of(store, item_id):
    return [[reply.id] for reply in store.item(item_id).replies]


def seeded(location, n_items=2, people=("ada", "bob", "cy"), **options):
    store = open_store(location, **options)
    store.add_items([user(f"prompt {n}") for n in range(n_items)], [["a", "b"]] * n_items)
    for name in people:
        store.add_annotator(name, f"password-of-{name}")
    return store


def test_only_the_holder_or_an_earlier_labeler_may_submit(label_db):
    store = seeded(label_db)
    assert store.next_item("ada").id == 1
    with pytest.raises(AssignmentError, match="item 1 is not held by 'bob'"):
        store.submit(1, "bob", ranking_of(store, 1))  # held by someone else
    with pytest.raises(AssignmentError, match="item 2 is not held by 'bob'"):
        store.submit(2, "bob", ranking_of(store, 2))  # never given to anyone
    first = store.submit(1, "ada", ranking_of(store, 1))
    assert store.submit(1, "ada", ranking_of(store, 1)[::-1]) == first  # her own label: a resubmit replaces it
    assert store.next_item("bob").id == 2
    store.submit(2, "bob", ranking_of(store, 2))
    assert [(label.item_id, label.annotator) for label in store.labels()] == [(1, "ada"), (2, "bob")]


def test_a_hold_that_lapsed_and_went_to_someone_else_no_longer_counts(label_db):
    store = seeded(label_db, n_items=1, hold_seconds=60)
    t = 1000.0
    assert store.next_item("ada", now=t).id == 1
    assert store.next_item("bob", now=t + 61).id == 1  # ada's hold lapsed; the item went to bob
    with pytest.raises(AssignmentError, match="not held by 'ada'"):
        store.submit(1, "ada", ranking_of(store, 1), now=t + 62)
    store.submit(1, "bob", ranking_of(store, 1), now=t + 63)
    assert [label.annotator for label in store.labels()] == ["bob"]


def test_concurrent_submits_never_exceed_the_items_quota(label_db):
    """Three annotators hold item 1 (served while the quota was 3); with the quota now 1, their submits race
    from three separate store connections (three server processes): exactly one label lands."""
    wide = seeded(label_db, n_items=1, annotators_per_item=3)
    people = ["ada", "bob", "cy"]
    assert [wide.next_item(name).id for name in people] == [1, 1, 1]
    ranking = ranking_of(wide, 1)
    stores = [open_store(label_db, annotators_per_item=1) for _ in people]
    start, accepted, refused = threading.Barrier(len(people)), [], []

    def submit(store, name):
        start.wait()
        try:
            accepted.append(store.submit(1, name, ranking))
        except AssignmentError as error:
            refused.append(str(error))

    threads = [threading.Thread(target=submit, args=pair) for pair in zip(stores, people)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(accepted) == 1 and len(refused) == 2
    assert all("has all the 1 label(s) it needs" in message for message in refused)
    assert len(wide.labels()) == 1
    for store in stores:
        store.close()


def test_passwords_need_eight_characters(label_db):
    store = open_store(label_db)
    with pytest.raises(AlignError, match=f"at least {MIN_PASSWORD_LENGTH} characters"):
        store.add_annotator("ada", "1234567")
    assert store.annotator_names() == []
    store.add_annotator("ada", "12345678")
    with pytest.raises(AlignError, match="at least 8 characters"):
        store.update_annotator("ada", password="x")
    assert store.check_password("ada", "12345678")


def test_an_unknown_name_takes_as_long_to_check_as_a_known_one(label_db):
    store = seeded(label_db, n_items=0, people=("ada",))

    def median_seconds(name):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            assert not store.check_password(name, "not the password")
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    median_seconds("nobody")  # warm-up: the dummy hash is made on first use
    known, unknown = median_seconds("ada"), median_seconds("nobody")
    assert 0.5 < unknown / known < 2, (known, unknown)


def test_a_new_store_file_and_its_wal_and_shm_are_private(tmp_path):
    path = tmp_path / "labels.sqlite"
    old_umask = os.umask(0o022)  # the usual umask, under which files come out world-readable
    try:
        store = open_store(path)
        store.add_annotator("ada", "password-of-ada")  # a write: the -wal and -shm files exist now
        modes = {suffix: stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) for suffix in ("", "-wal", "-shm")}
        store.close()
    finally:
        os.umask(old_umask)
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
