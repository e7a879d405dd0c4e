"""The label store on a real SQLite file and on a real PostgreSQL server (the `label_db` fixture runs each
test on both): schema migrations, assignment and holds, idempotent submits, the consensus export, and
agreement figures checked against hand-computed values."""

from __future__ import annotations

import math
import threading

import pytest
import sqlalchemy as sa

from align.errors import AlignError, DataError
from align.data.labels import RankingError
from align.data.store import SCHEMA_VERSION, FeedbackExists, LabelStore, create_store_engine, open_store


def user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture
def store(label_db):
    s = open_store(label_db)
    yield s
    s.close()


def raw_rows(location, sql):
    """Rows read straight from the database, past the store's API."""
    engine = create_store_engine(location)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def add_people(store, *names):
    for name in names:
        store.add_annotator(name, f"pw-{name}-secret")


def imported(store, item_id, name, ranking, **options):
    """A label set down directly, as an import of labels collected elsewhere would (no hold, no quota)."""
    return store.submit(item_id, name, ranking, assigned_only=False, **options)


def reply_ids(store, item_id):
    return [r.id for r in store.item(item_id).replies]


def test_sqlite_file_is_tuned(tmp_path):
    store = open_store(tmp_path / "labels.sqlite")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    assert store.version() == SCHEMA_VERSION


def test_opening_an_older_version_migrates_it_and_keeps_its_rows(label_db):
    path = label_db
    old = LabelStore(create_store_engine(path))
    assert old.migrate(target=1) == 1  # a file made by the first release: no feedback table
    [item_id] = old.add_items([user("hello")], [["a", "b"]], model="m")
    old.add_annotator("ada", "pw-ada-secret")
    old.submit(old.next_item("ada").id, "ada", [[r] for r in reply_ids(old, item_id)])
    old.close()
    assert raw_rows(path, "select version from schema_version") == [(1,)]
    engine = create_store_engine(path)
    assert not sa.inspect(engine).has_table("feedback")
    engine.dispose()

    store = open_store(path)
    assert store.version() == SCHEMA_VERSION == 5
    assert len(store.labels()) == 1 and store.check_password("ada", "pw-ada-secret")
    store.add_feedback(user("hi"), "hello!", rating="up", user="ada", auth="login")
    assert (store.feedback()[0]["rating"], store.feedback()[0]["auth"]) == ("up", "login")
    assert open_store(path).version() == 5  # opening again is a no-op


def test_version_4_adds_kept_completions_to_a_version_3_store_with_its_feedback(label_db):
    old = LabelStore(create_store_engine(label_db))
    assert old.migrate(target=3) == 3
    old.add_feedback(user("hi"), "hello!", rating="down", user="ada", auth="none")
    old.close()
    store = open_store(label_db)
    assert store.version() == SCHEMA_VERSION and store.feedback()[0]["rating"] == "down"
    store.add_feedback(user("hi"), "hello!", rating="up", completion_id="chatcmpl-1", choice=0)
    with pytest.raises(FeedbackExists, match="choice 0 of chatcmpl-1"):
        store.add_feedback(user("hi"), "hey", rejected="hello!", completion_id="chatcmpl-1", choice=0)
    store.add_feedback(user("hi"), "hello!", rating="up", completion_id="chatcmpl-1", choice=1)
    store.add_feedback(user("hi"), "hello!", rating="up")  # chat-UI rows name no completion: never collide
    assert len(store.feedback()) == 4


def test_version_5_gives_kept_completions_an_owner_and_keeps_the_older_ones_open(label_db):
    old = LabelStore(create_store_engine(label_db))
    assert old.migrate(target=4) == 4
    old.keep_completion("before", user("q"), ["a"], [False], model="m")  # a version-4 server: no owner column
    old.close()
    store = open_store(label_db)
    assert store.version() == 5 and store.completion("before")["owner"] is None
    store.keep_completion("after", user("q"), ["a"], [False], model="m", owner="ci")
    assert store.completion("after")["owner"] == "ci"


def test_kept_completions_are_bounded_by_count_and_age(store):
    for i in range(5):
        store.keep_completion(f"c{i}", user(f"q{i}"), [f"a{i}", f"b{i}"], [False, True], model="m", keep_max=3,
                              keep_seconds=100.0, now=1000.0 + i)
    assert store.count_completions() == 3 and store.completion("c1") is None
    kept = store.completion("c4")
    assert (kept["conversation"], kept["replies"], kept["withheld"], kept["model"]) == (
        user("q4"), ["a4", "b4"], [False, True], "m")
    assert store.completion("c4", since=1004.5) is None  # older than asked for
    store.keep_completion("late", user("q"), ["a"], [False], keep_max=3, keep_seconds=100.0, now=1103.5)
    assert [store.completion(c) is not None for c in ("c2", "c3", "c4", "late")] == [False, False, True, True]


def test_a_newer_schema_is_refused(label_db):
    path = label_db
    store = open_store(path)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("update schema_version set version = 99")
    store.close()
    with pytest.raises(AlignError, match="newer than this align"):
        open_store(path)


def test_passwords_are_stored_as_salted_hashes(store, label_db):
    store.add_annotator("ada", "correct horse")
    store.add_annotator("bob", "correct horse", role="admin")
    hashes = [h for (h,) in raw_rows(label_db, "select password_hash from annotators order by id")]
    assert all(h.startswith("scrypt$") and "correct horse" not in h for h in hashes)
    assert hashes[0] != hashes[1]  # salted
    assert store.check_password("ada", "correct horse") and not store.check_password("ada", "wrong")
    assert not store.check_password("nobody", "correct horse")
    assert store.role("bob") == "admin"
    with pytest.raises(AlignError, match="exists already"):
        store.add_annotator("ada", "another password", role="admin")
    assert store.check_password("ada", "correct horse") and store.role("ada") == "annotator"  # untouched
    store.update_annotator("ada", password="battery staple")
    assert store.check_password("ada", "battery staple") and store.role("ada") == "annotator"
    store.update_annotator("bob", role="annotator")
    assert store.check_password("bob", "correct horse") and store.role("bob") == "annotator"
    with pytest.raises(AlignError, match="no annotator 'nobody'"):
        store.update_annotator("nobody", role="admin")


def test_add_items_is_resumable_and_checks_rows(store):
    prompts = [user("one"), user("two")]
    assert store.add_items(prompts, [["a", "b"], ["c", "d"]], model="m") == [1, 2]
    assert store.add_items(prompts + [user("three")], [["a", "b"], ["c", "d"], ["e", "f"]], model="m") == [3]
    assert store.missing_prompts(prompts + [user("four")], model="m") == [2]
    assert store.missing_prompts(prompts, model="other") == [0, 1]  # a different model is a new round
    with pytest.raises(DataError, match=r"prompts.jsonl, row 2, field 'prompt'"):
        store.add_items([user("x"), [{"role": "bot", "content": "?"}]], [["a", "b"], ["a", "b"]],
                        source="prompts.jsonl")
    with pytest.raises(DataError, match="field 'replies'"):
        store.add_items([user("x")], [["only one"]])
    assert store.count_items() == 3  # the failed batch added nothing


def test_assignment_holds_and_annotators_per_item(label_db):
    store = open_store(label_db, annotators_per_item=2, hold_seconds=60)
    store.add_items([user("one"), user("two")], [["a", "b"], ["c", "d"]])
    add_people(store, "ada", "bob", "cy")
    t = 1000.0
    assert store.next_item("ada", now=t).id == 1
    assert store.next_item("ada", now=t + 1).id == 1  # own hold: same item again (a reload)
    assert store.next_item("bob", now=t).id == 1  # second of two annotators
    assert store.next_item("cy", now=t).id == 2  # item 1 is fully held
    # ada's and bob's holds expire; cy keeps hers by asking again
    assert store.next_item("cy", now=t + 59).id == 2
    assert [h[0] for h in store.active_holds(now=t + 61)] == [2]
    ids = reply_ids(store, 1)
    store.submit(1, "ada", [[ids[0]], [ids[1]]], now=t + 70)
    assert store.next_item("ada", now=t + 71).id == 2  # never item 1 again; item 2 has one free slot
    assert store.next_item("bob", now=t + 71).id == 1
    store.submit(1, "bob", [[ids[1]], [ids[0]]], now=t + 72)
    assert store.next_item("bob", now=t + 200).id == 2  # holds on 2 expired
    assert store.release_holds("bob") == 1
    assert store.release_holds() == 0


def test_submit_is_idempotent_per_item_and_annotator(store):
    store.add_items([user("q")], [["a", "b", "c"]])
    add_people(store, "ada")
    a, b, c = reply_ids(store, 1)
    assert store.next_item("ada").id == 1
    first = store.submit(1, "ada", [[a], [b, c]], flags={c: ["toxic", "unsafe"]})
    second = store.submit(1, "ada", [[c], [b], [a]], flags={b: ["factually wrong"]})
    assert first == second
    [label] = store.labels()
    assert label.ranking == [[c], [b], [a]] and label.flags == {b: ["factually wrong"]}
    assert [f["flag"] for f in store.flagged_replies()] == ["factually wrong"]


def test_concurrent_resubmits_store_one_label(store):
    store.add_items([user("q")], [["a", "b"]])
    add_people(store, "ada")
    a, b = reply_ids(store, 1)
    store.next_item("ada")
    errors = []

    def submit():
        try:
            for _ in range(5):
                store.submit(1, "ada", [[a], [b]])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(store.labels()) == 1


def test_bad_rankings_are_refused_and_store_nothing(store):
    store.add_items([user("q")], [["a", "b", "c"]])
    add_people(store, "ada")
    a, b, c = reply_ids(store, 1)
    store.next_item("ada")
    for ranking, message in [([[a], [b]], "missing"), ([[a], [b], [c], [a]], "twice"), ([[a], [b], [99]], "unknown")]:
        with pytest.raises(RankingError, match=message):
            store.submit(1, "ada", ranking)
    with pytest.raises(RankingError, match="unknown flag"):
        store.submit(1, "ada", [[a], [b], [c]], flags={a: ["boring"]})
    with pytest.raises(RankingError, match="not a reply"):
        store.submit(1, "ada", [[a], [b], [c]], flags={99: ["toxic"]})
    with pytest.raises(AlignError, match="no annotator"):
        store.submit(1, "nobody", [[a], [b], [c]])
    assert store.labels() == []
    store.submit(1, "ada", [], all_unacceptable=True)  # all unacceptable needs no ranking
    assert store.labels()[0].all_unacceptable


def test_export_applies_the_consensus_rule(store):
    store.add_items([user("three annotators"), user("a tie"), user("one annotator"), user("rejected all")],
                    [["x", "y", "z"], ["p", "q"], ["u", "v", "w"], ["s", "t"]])
    add_people(store, "ada", "bob", "cy")
    x, y, z = reply_ids(store, 1)
    imported(store, 1, "ada", [[x], [y], [z]])
    imported(store, 1, "bob", [[x], [z], [y]])
    imported(store, 1, "cy", [], all_unacceptable=True)  # counts as no preference on every pair
    p, q = reply_ids(store, 2)
    imported(store, 2, "ada", [[p], [q]])
    imported(store, 2, "bob", [[p, q]])  # a tie: p>q has 1 of 2 votes, not a majority
    u, v, w = reply_ids(store, 3)
    imported(store, 3, "cy", [[v], [u, w]])
    s, t = reply_ids(store, 4)
    imported(store, 4, "ada", [[s], [t]], all_unacceptable=True)

    rows = store.export_preferences()
    pairs = [(r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows]
    assert pairs == [("three annotators", "x", "y"), ("three annotators", "x", "z"),
                     ("one annotator", "v", "u"), ("one annotator", "v", "w")]
    assert rows[0] == {"prompt": [{"role": "user", "content": "three annotators"}],
                       "chosen": [{"role": "assistant", "content": "x"}],
                       "rejected": [{"role": "assistant", "content": "y"}]}


def test_agreement_matches_hand_computed_values(store):
    store.add_items([user("1"), user("2"), user("3")], [["a", "b", "c"], ["d", "e", "f"], ["g", "h"]])
    add_people(store, "ada", "bob", "cy")
    a, b, c = reply_ids(store, 1)
    imported(store, 1, "ada", [[a], [b], [c]])
    imported(store, 1, "bob", [[a], [c], [b]])  # agree on a>b, a>c; disagree on b vs c → 2/3; tau = (2-1)/3
    imported(store, 1, "cy", [], all_unacceptable=True)  # not a ranking: left out
    d, e, f = reply_ids(store, 2)
    imported(store, 2, "ada", [[d], [e, f]])
    imported(store, 2, "bob", [[d], [e], [f]])  # agree d>e, d>f; tie vs e>f disagrees → 2/3
    g, h = reply_ids(store, 3)
    imported(store, 3, "ada", [[g], [h]])  # one annotator only: left out

    figures = store.agreement()
    assert figures["items"] == 2 and figures["comparisons"] == 6
    assert figures["pairwise_agreement"] == pytest.approx(4 / 6)
    # tau-b for (1,2,2) vs (1,2,3): 2 concordant, 0 discordant, 1 tie in x → 2 / sqrt((3-1) * 3)
    assert figures["kendall_tau"] == pytest.approx((1 / 3 + 2 / math.sqrt(6)) / 2)
    assert figures["tau_pairs"] == 2
    assert figures["per_annotator"] == {"ada": pytest.approx(4 / 6), "bob": pytest.approx(4 / 6)}


def test_progress_counts(label_db):
    store = open_store(label_db, annotators_per_item=2)
    store.add_items([user("1"), user("2")], [["a", "b"], ["c", "d"]])
    add_people(store, "ada", "bob")
    a, b = reply_ids(store, 1)
    imported(store, 1, "ada", [[a], [b]])
    imported(store, 1, "bob", [], all_unacceptable=True)
    c, d = reply_ids(store, 2)
    imported(store, 2, "ada", [[d], [c]])
    figures = store.progress()
    assert (figures["items"], figures["items_started"], figures["items_complete"], figures["labels"],
            figures["labels_needed"]) == (2, 2, 1, 3, 4)
    assert [(p["annotator"], p["labels"], p["all_unacceptable"]) for p in figures["per_annotator"]] == [
        ("ada", 2, 0), ("bob", 1, 1)]


def test_feedback_rows_and_compare_pairs(store):
    conversation = user("hi")
    store.add_feedback(conversation, "hello", rating="down", user="ada", model="runs/x/dpo")
    store.add_feedback(conversation, "good", rejected="bad")
    with pytest.raises(AlignError):
        store.add_feedback(conversation, "hello", rating="meh")
    with pytest.raises(AlignError):
        store.add_feedback(conversation, "hello")
    assert [f["rating"] for f in store.feedback()] == ["down", None]
    assert store.feedback_preferences() == [{"prompt": conversation,
                                             "chosen": [{"role": "assistant", "content": "good"}],
                                             "rejected": [{"role": "assistant", "content": "bad"}]}]
