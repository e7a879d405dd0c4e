"""`serve` configured by the recipe's `serve:` section: `serve.log_requests` turns prompt/reply logging on (the run's
requests.jsonl, or a path a recipe file names) and is off by default (then no prompt reaches any file), the
command's flags override the section, and a bad value is one line with exit 2."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli
from tests.serving.support import client, command_args, serving_command

pytestmark = pytest.mark.timeout(300)
WHALES = [{"role": "user", "content": "Tell me about blue whales."}]


def ask(url):
    return client(url).chat.completions.create(model="demo/sft", messages=WHALES, max_tokens=6, seed=3)


def test_the_recipe_key_turns_prompt_logging_on_into_the_runs_folder(demo_runs):
    argv = ("--config", "tiny", "--run", "demo", "--runs-dir", demo_runs, "serve.log_requests=true")
    with serving_command(*argv) as (url, prepared):
        reply = ask(url)
    assert prepared.service.log_path == demo_runs / "demo" / "requests.jsonl"
    [record] = [json.loads(line) for line in (demo_runs / "demo" / "requests.jsonl").read_text().splitlines()]
    assert record["id"] == reply.id and record["model"] == "demo/sft"
    assert record["messages"] == WHALES and record["replies"] == [reply.choices[0].message.content]


def test_logging_is_off_by_default_so_no_prompt_reaches_a_file_and_a_recipe_file_can_name_the_log(demo_runs,
                                                                                                    tmp_path):
    with serving_command("--config", "tiny", "--run", "demo", "--runs-dir", demo_runs) as (url, prepared):
        ask(url)  # the defaults: no log, completions kept in memory only
    assert prepared.service.log_path is None
    written = [p for p in tmp_path.rglob("*") if p.is_file() and b"blue whales" in p.read_bytes()]
    assert written == []  # neither a log nor the label store holds the prompt
    log = tmp_path / "chat-log.jsonl"
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"base: tiny\nserve:\n  log_requests: {log}\n  max_batch: 4\n")
    with serving_command("--config", recipe, "--run", "demo", "--runs-dir", demo_runs) as (url, prepared):
        reply = ask(url)
    assert prepared.options.max_batch == 4 and prepared.service.models["demo/sft"].max_batch == 4
    assert json.loads(log.read_text())["id"] == reply.id


def test_the_flags_override_the_section_and_key_value_overrides_override_the_file(demo_runs, tmp_path):
    from align.serving.cli import prepare

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("base: tiny\nserve:\n  port: 9001\n  max_batch: 4\n  rate_limit: 30\n  log_requests: true\n")
    prepared = prepare(command_args("--config", recipe, "--run", "demo", "--runs-dir", demo_runs, "--port", "9002",
                                    "--log-requests", tmp_path / "flag.jsonl", "serve.max_batch=6"))
    try:
        options = prepared.options
        assert (options.port, options.max_batch, options.rate_limit) == (9002, 6, 30.0)
        assert prepared.service.log_path == tmp_path / "flag.jsonl"
        assert prepared.service.access.limiter.per_minute == 30.0
        assert "prompt logging " + str(tmp_path / "flag.jsonl") in prepared.describe()
    finally:
        prepared.service.store.close()


@pytest.mark.parametrize("argument, named", [
    ("serve.log_requests=7", "serve.log_requests=7 must be true, false or a file path"),
    ("serve.port=0", "command line: serve.port=0 must be at least 1"),
    ("serve.engine=tgi", "serve.engine='tgi' is not one of transformers, vllm"),
    ("--max-batch=0", "--max-batch: serve.max_batch=0 must be at least 1"),
    ("serve.keep_completions=disk", "serve.keep_completions='disk' is not one of store, memory"),
    ("serve.default_max_tokens=2048", "serve.default_max_tokens=2048 is over serve.max_tokens=1024"),
])
def test_a_bad_value_is_one_line_and_exit_2(demo_runs, capsys, argument, named):
    assert run_cli("serve", "--config", "tiny", "--run", "demo", "--runs-dir", demo_runs, argument) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: {lines[0][7:]}"] and named in lines[0], lines
    assert not (demo_runs / "demo" / "labels.sqlite").exists()  # refused before the store is opened
