"""The label store's engines and their errors: PostgreSQL URLs go through psycopg 3, a database that cannot be
reached is one clear line (in Python and from `python -m align.run label`, exit 2), and write transactions on
PostgreSQL are serialized as on SQLite. Runs against the session's real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from align.errors import AlignError
from align.data.store import open_store, store_url

REPO = Path(__file__).resolve().parents[2]


def one_line_error(location) -> str:
    with pytest.raises(AlignError) as caught:
        open_store(location)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_postgresql_urls_use_psycopg_3():
    assert store_url("postgresql://ada@db.example/align") == "postgresql+psycopg://ada@db.example/align"
    assert store_url("postgres://ada@db.example/align") == "postgresql+psycopg://ada@db.example/align"
    assert store_url("postgresql+psycopg://ada@h/x") == "postgresql+psycopg://ada@h/x"


@pytest.mark.postgres
@pytest.mark.parametrize("wrong, reason", [
    ("password", "password authentication failed"),
    ("database", 'database "no_such_db" does not exist'),
    ("port", "Connection refused"),
    ("host", "no-such-host.invalid"),
])
def test_a_database_that_cannot_be_reached_is_one_clear_line(postgres_server, wrong, reason):
    url = {"password": postgres_server.url(password="not-the-password"),
           "database": postgres_server.url("no_such_db"),
           "port": postgres_server.url(port=1),
           "host": "postgresql://align:secret-pw@no-such-host.invalid/align"}[wrong]
    message = one_line_error(url)
    assert message.startswith("label store postgresql+psycopg://align:***@") and "cannot connect" in message
    assert reason in message
    assert "not-the-password" not in message and "secret-pw" not in message  # the password is never shown


def test_a_missing_driver_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    message = one_line_error("postgresql://ada:pw@127.0.0.1:5432/align")
    assert 'pip install "align[postgres]"' in message and "***" in message and ":pw@" not in message


def test_a_store_path_that_cannot_be_created_is_one_clear_line(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    message = one_line_error(tmp_path / "a-file" / "labels.sqlite")
    assert "a-file" in message


def run_label(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", "align.run", "label", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.postgres
def test_the_label_command_exits_2_with_one_line_for_a_bad_database(postgres_server, tmp_path):
    result = run_label("--store", postgres_server.url(password="not-the-password"), "--port", "1", tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "password authentication failed" in lines[0], result.stderr[-2000:]
    assert "not-the-password" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.postgres
def test_postgres_write_transactions_wait_for_each_other(postgres_server):
    """The counterpart of SQLite's BEGIN IMMEDIATE: a write waits while another write transaction is open."""
    store = open_store(postgres_server.new_database())
    done = []
    try:
        with store._write():
            writer = threading.Thread(target=lambda: done.append(
                store.add_items([[{"role": "user", "content": "q"}]], [["a", "b"]])))
            writer.start()
            time.sleep(1.0)
            assert done == []  # blocked behind the open transaction
        writer.join(timeout=30)
        assert done == [[1]] and store.count_items() == 1
    finally:
        store.close()


@pytest.mark.postgres
def test_a_value_postgresql_refuses_is_one_clear_line_and_stores_nothing(postgres_server):
    store = open_store(postgres_server.new_database())
    try:
        with pytest.raises(AlignError, match=r"^label store postgresql\+psycopg://.*refused a value: .*NUL") as caught:
            store.add_items([[{"role": "user", "content": "q"}]], [["fine", "a NUL \x00 byte"]])
        assert "\n" not in str(caught.value)
        assert store.count_items() == 0  # the whole batch rolled back
    finally:
        store.close()


def test_without_postgresql_binaries_the_tests_skip_unless_required(monkeypatch, tmp_path):
    from tests import postgres

    monkeypatch.setenv(postgres.BIN_ENV, str(tmp_path))  # a folder without initdb
    reason = postgres.unavailable_reason()
    assert reason and "binaries not found" in reason
    monkeypatch.delenv(postgres.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="binaries not found"):
        postgres.skip_or_fail(reason)
    monkeypatch.setenv(postgres.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="ALIGN_REQUIRE_POSTGRES=1 but .*binaries not found"):
        postgres.skip_or_fail(reason)
