"""The labeling app's trust boundaries through the real server on 127.0.0.1 and real gradio_client calls: no
call without an account, a submit only for the item given to the caller; and `label --add-user`, which refuses
to touch an existing account unless told what to change."""

from __future__ import annotations

import stat

import pytest

from align.data.store import open_store
from tests.helpers import run_cli
from tests.ui.label_support import make_store, password_of, running_app

pytestmark = pytest.mark.timeout(300)

ITEMS = [("one", ["a", "b"]), ("two", ["c", "d"])]


def signed_in(url, name):
    from gradio_client import Client

    return Client(url, auth=(name, password_of(name)), verbose=False)


def test_the_api_needs_an_account_and_a_submit_needs_the_item_given_to_the_caller(tmp_path):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    store = make_store(tmp_path / "labels.sqlite", items=ITEMS)
    with running_app(store) as url:
        with pytest.raises(Exception, match="login|auth|401"):  # unauthenticated: not even the app's config
            Client(url, verbose=False)
        assert httpx.post(f"{url}/gradio_api/call/submit", json={"data": [1, [], False, {}]}).status_code == 401
        with pytest.raises(Exception, match="Could not login"):
            Client(url, auth=("ada", "a wrong password"), verbose=False)

        ada, bob = signed_in(url, "ada"), signed_in(url, "bob")
        item = ada.predict(api_name="/next_item")
        ranking = [[reply["id"]] for reply in item["replies"]]
        with pytest.raises(AppError, match=f"item {item['item_id']} is not held by 'bob'"):
            bob.predict(item["item_id"], ranking, False, {}, api_name="/submit")  # ada's item
        with pytest.raises(AppError, match="item 2 is not held by 'bob'"):
            bob.predict(2, [[3], [4]], False, {}, api_name="/submit")  # an item never given out
        ada.predict(item["item_id"], ranking, False, {}, api_name="/submit")
        assert bob.predict(api_name="/next_item")["item_id"] == 2
        bob.predict(2, [[4], [3]], False, {}, api_name="/submit")
    assert [(label.item_id, label.annotator) for label in store.labels()] == [(1, "ada"), (2, "bob")]


def test_add_user_refuses_an_existing_account_unless_told_what_to_change(tmp_path, monkeypatch, capsys):
    path = tmp_path / "labels.sqlite"
    label = ["label", "--store", path]
    monkeypatch.setenv("ALIGN_PASSWORD", "first password")
    assert run_cli(*label, "--add-user", "lead", "--role", "admin") == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    monkeypatch.setenv("ALIGN_PASSWORD", "second password")
    assert run_cli(*label, "--add-user", "lead") == 2
    assert "account 'lead' exists already" in capsys.readouterr().err
    store = open_store(path)
    assert store.role("lead") == "admin" and store.check_password("lead", "first password")  # untouched

    assert run_cli(*label, "--add-user", "lead", "--reset-password") == 0
    assert store.role("lead") == "admin" and store.check_password("lead", "second password")
    monkeypatch.setenv("ALIGN_PASSWORD", "a third password")  # --set-role alone asks for no password
    assert run_cli(*label, "--add-user", "lead", "--set-role", "annotator") == 0
    assert store.role("lead") == "annotator" and store.check_password("lead", "second password")

    monkeypatch.setenv("ALIGN_PASSWORD", "short")
    capsys.readouterr()
    assert run_cli(*label, "--add-user", "ada") == 2
    assert "at least 8 characters" in capsys.readouterr().err and store.role("ada") is None
    assert run_cli(*label, "--reset-password") == 2
    assert "--add-user NAME" in capsys.readouterr().err
