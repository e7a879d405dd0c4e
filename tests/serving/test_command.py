"""`python -m align.run serve`: what it refuses (an ungated model, another address without keys, vllm where it is
not installed or torch sees no GPU), its key commands, and the real command in a subprocess answering the openai
client (configured by a recipe key), and taking feedback on a completion made before it was killed (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import run_cli
from tests.serving.support import client, make_run
from tests.ui.chat_support import FAILED_GATE
from tests.ui.label_support import free_port

pytestmark = pytest.mark.timeout(300)


@pytest.fixture()
def runs(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    make_run(runs, tiny_model_dir, "demo")
    make_run(runs, tiny_model_dir, "failed", status="gate_failed", gate=FAILED_GATE)
    make_run(runs, tiny_model_dir, "nogate", status="ungated", gate=None)
    return runs


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("target", ["--model={runs}/failed/sft", "--model={runs}/nogate/sft", "--run=failed",
                                    "--model=tiny"])
def test_a_model_without_a_passed_gate_is_not_served(runs, capsys, target):
    assert run_cli("serve", "--runs-dir", runs, target.format(runs=runs), "--port", free_port()) == 2
    line = one_error_line(capsys)
    assert "--allow-ungated" in line or "no promoted chat model" in line


def test_the_gate_rule_lets_allow_ungated_through(runs):
    from align.serving.resolve import served_models

    assert served_models(model=str(runs / "failed" / "sft"), runs_dir=runs, allow_ungated=True)[0].manifest[
        "status"] == "gate_failed"
    assert [m.manifest["stage"] for m in served_models(run="demo", runs_dir=runs)] == ["sft"]


def test_another_address_needs_keys_and_vllm_needs_vllm(runs, capsys, tmp_path):
    store = tmp_path / "keys.sqlite"
    assert run_cli("serve", "--runs-dir", runs, "--run", "demo", "--host", "0.0.0.0", "--store", store) == 2
    assert "--add-key" in one_error_line(capsys)
    assert run_cli("serve", "--runs-dir", runs, "--run", "demo", "--engine", "vllm", "--store", store) == 2
    assert "vllm" in one_error_line(capsys)
    assert run_cli("serve", "--runs-dir", runs, "--run", "demo", "--max-batch", "0") == 2
    assert "--max-batch" in one_error_line(capsys)


def test_vllm_without_cuda_is_refused_before_vllm_or_any_model_loads(runs, capsys, monkeypatch, tmp_path):
    """An installed vllm (here a package that fails if imported) on a machine whose torch sees no GPU."""
    package = tmp_path / "site" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('vllm was imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    store = tmp_path / "labels.sqlite"
    assert run_cli("serve", "--runs-dir", runs, "--run", "demo", "--store", store, "serve.engine=vllm") == 2
    assert one_error_line(capsys) == ("error: serve.engine=vllm needs a CUDA GPU, and torch sees none here; serve "
                                      "with engine=transformers (CPU or GPU)")
    assert not store.exists()  # refused before the store opens, let alone a model


def test_keys_are_made_listed_and_revoked_and_only_their_hash_is_kept(runs, capsys, tmp_path):
    store = tmp_path / "keys.sqlite"
    assert run_cli("serve", "--run", "demo", "--runs-dir", runs, "--store", store, "--add-key", "bot") == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("align-") and len(key) > 40
    assert key.encode() not in store.read_bytes()
    assert run_cli("serve", "--run", "demo", "--runs-dir", runs, "--store", store, "--add-key", "bot") == 2
    assert "exists already" in one_error_line(capsys)
    assert run_cli("serve", "--run", "demo", "--runs-dir", runs, "--store", store, "--revoke-key", "bot") == 0
    assert run_cli("serve", "--run", "demo", "--runs-dir", runs, "--store", store, "--list-keys") == 0
    assert "revoked" in capsys.readouterr().out
    assert run_cli("serve", "--run", "demo", "--runs-dir", runs, "--store", store, "--revoke-key", "bot") == 2


def _start(runs, tmp_path, port: int, *extra: str) -> subprocess.Popen:
    """The real command in its own process, answering /health."""
    process = subprocess.Popen(
        [sys.executable, "-m", "align.run", "serve", "--run", "demo", "--runs-dir", str(runs), "--port", str(port),
         "--store", str(tmp_path / "labels.sqlite"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.5)


def _kill(process: subprocess.Popen) -> str:
    process.kill()
    return process.communicate(timeout=30)[0]


def _hello(url: str):
    reply = client(url).chat.completions.create(model="demo/sft", max_tokens=4,
                                                messages=[{"role": "user", "content": "Hello?"}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 4
    return reply


def test_the_command_serves_the_openai_client_until_killed(runs, tmp_path):
    port = free_port()
    log = tmp_path / "requests.jsonl"
    process = _start(runs, tmp_path, port, f"serve.log_requests={log}")
    try:
        reply = _hello(f"http://127.0.0.1:{port}")
        assert reply.id in log.read_text()
    finally:
        out = _kill(process)
    assert "align serve: demo/sft" in out and f"prompt logging {log}" in out and "completions kept in memory" in out


@pytest.mark.slow  # two server processes: about 80 s on the shared 2 cores (tests/serving/test_restart.py restarts
def test_feedback_after_the_command_was_killed_and_started_again(runs, tmp_path):  # the server in-process, quicker)
    from align.data.store import open_store

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start(runs, tmp_path, port, "serve.keep_completions=store")
    try:
        reply = _hello(url)
    finally:
        _kill(process)
    process = _start(runs, tmp_path, port, "serve.keep_completions=store")
    try:
        rated = httpx.post(url + "/v1/feedback", json={"completion_id": reply.id, "rating": "up"}, timeout=60)
    finally:
        out = _kill(process)
    assert rated.status_code == 200, (rated.text, out)
    store = open_store(tmp_path / "labels.sqlite")
    try:
        assert [(f["reply"], f["rating"]) for f in store.feedback()] == [(reply.choices[0].message.content, "up")]
    finally:
        store.close()


def test_api_keys_work_on_each_database(label_db):
    from align.serving.keys import ApiKeys
    from align.data.store import open_store

    store = open_store(label_db)
    try:
        keys = ApiKeys(store)
        key = keys.add("bot")
        assert keys.check(key) == "bot" and keys.check(key + "x") is None and keys.check(None) is None
        assert ApiKeys(store).active() == 1  # the table is made once, then found
        keys.revoke("bot")
        assert keys.check(key) is None and keys.active() == 0
    finally:
        store.close()
