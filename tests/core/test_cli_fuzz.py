"""Malformed recipes, override values and data files through real `python -m align.run` processes: each one gets
exit code 2, exactly one line naming the file/row/field or key/source, no traceback, and nothing in the runs folder.

The cases run concurrently once (a module fixture), then one parametrized test checks each. Recipe and override
cases fail before any model loads (their stdout stays empty); data files go through `data --check` (the rows
checked as a stage checks them, no model) and, for a few, through `sft` itself.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
PAIR = {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}]}


@dataclass
class Case:
    id: str
    args: list[str]  # after `python -m align.run`; {dir} is the cases' folder
    names: tuple[str, ...]  # what the one error line must name
    files: dict[str, object] | None = None  # file name → text (str) or bytes, written into {dir}
    quiet: bool = True  # fails before any model loads: nothing else on stdout or stderr


def _recipe(name: str, text: str, *names: str, command: str = "sft", base: str = "tiny") -> Case:
    body = (f"base: {base}\n" if base else "") + text
    return Case(f"recipe-{name}", [command, "--config", f"{{dir}}/{name}.yaml"], (f"{name}.yaml", *names),
                {f"{name}.yaml": body})


def _override(name: str, override: str, *names: str, command: str = "sft") -> Case:
    return Case(f"override-{name}", [command, "--config", "tiny", override], ("command line", *names))


def _data(name: str, filename: str, content, *names: str, kind: str = "chat") -> Case:
    return Case(f"data-{name}", ["data", "--check", f"{{dir}}/{filename}", "--kind", kind],
                (filename, *names), {filename: content})


def _jsonl(*rows) -> str:
    return "".join((json.dumps(row) if not isinstance(row, str) else row) + "\n" for row in rows)


TRUNCATED_GZ = gzip.compress(_jsonl(*[CHAT] * 300).encode())[:120]

CASES = [
    # Recipe files: wrong shapes, types, ranges, enum values, encodings, syntax.
    _recipe("section-list", "sft: [1, 2]\n", "'sft' is a section"),
    _recipe("section-scalar", "model: 5\n", "'model' is a section"),
    _recipe("value-section", "seed: {a: 1}\n", "'seed' is a single value"),
    _recipe("batch-zero", "sft:\n  batch_size: 0\n", "sft.batch_size=0", "at least 1"),
    _recipe("lr-negative", "sft:\n  lr: -0.1\n", "sft.lr=-0.1", "greater than 0"),
    _recipe("ratio-high", "sft:\n  warmup_ratio: 2\n", "sft.warmup_ratio=2.0", "at most 1"),
    _recipe("dtype", "model:\n  dtype: fp8\n", "model.dtype='fp8'", "not one of"),
    _recipe("device", "device: tpu\n", "device='tpu'"),
    _recipe("loss-type", "dpo:\n  loss_type: sigmoid,bogus\n", "dpo.loss_type", "'bogus'", command="dpo"),
    _recipe("gate-rule", "gate:\n  rule: maybe\n", "gate.rule='maybe'"),
    _recipe("int-word", "sft:\n  max_steps: lots\n", "sft.max_steps", "Integer"),
    _recipe("unknown-key", "sft:\n  learning_rate: 0.1\n", "unknown key 'sft.learning_rate'"),
    _recipe("bad-yaml", "sft: {lr: 1\n", "not valid YAML", "line"),
    _recipe("not-mapping", "- a\n- b\n", "a recipe must be a mapping", base=""),
    _recipe("base-unknown", "", "base: unknown recipe 'no-such-recipe'", base="no-such-recipe"),
    _recipe("base-missing-file", "", "base: recipe file not found", base="/nonexistent/parent.yaml"),
    _recipe("interpolation", "sft:\n  lr: ${nowhere}\n", "sft.lr", "nowhere"),
    _recipe("lora-save", "lora:\n  save: zip\n", "lora.save='zip'"),
    _recipe("pipeline-shape", "pipeline: [sft]\n", "'pipeline' is a section", command="pipeline"),
    Case("recipe-not-utf8", ["sft", "--config", "{dir}/latin.yaml"], ("latin.yaml", "not UTF-8"),
         {"latin.yaml": "base: tiny\nname: caf\xe9\n".encode("latin-1")}),
    # A bad value in a base recipe is blamed on that file, not on the recipe that names it as its base.
    Case("recipe-base-blamed", ["sft", "--config", "{dir}/child.yaml"], ("parent.yaml: sft.batch_size=0",),
         {"parent.yaml": "base: tiny\nsft:\n  batch_size: 0\n", "child.yaml": "base: {dir}/parent.yaml\nseed: 1\n"}),
    # Command-line overrides: blamed on the command line, even where the recipe file sets the same section.
    _override("batch-zero", "batch_size=0", "sft.batch_size=0"),
    _override("lr-zero", "lr=0", "sft.lr=0.0", "greater than 0"),
    _override("grad-accum", "grad_accum=-3", "sft.grad_accum=-3"),
    _override("int-word", "max_steps=lots", "sft.max_steps"),
    _override("section-scalar", "sft=5", "'sft' is a section"),
    _override("list-for-float", "lr=[1,2]", "sft.lr"),
    _override("nan", "warmup_ratio=nan", "sft.warmup_ratio", "finite"),
    _override("max-rows-zero", "max_rows=0", "sft.max_rows=0", "or -1"),
    _override("dtype", "model.dtype=fp8", "model.dtype='fp8'"),
    _override("lora-rank", "lora.r=0", "lora.r=0"),
    _override("top-p", "gate.top_p=1.5", "gate.top_p=1.5"),
    _override("seed", "seed=-1", "seed=-1"),
    _override("unknown", "lrr=1", "unknown key 'lrr'"),
    _override("no-equals", "lr", "'lr' is not key=value"),
    _override("loss-type", "loss_type=nope", "dpo.loss_type='nope'", command="dpo"),
    _override("gamma", "gamma=2", "ppo.gamma=2.0", command="ppo"),
    _override("on-bad-rows", "on_bad_rows=ignore", "rm.on_bad_rows='ignore'", command="rm"),
    _override("stages-shape", "pipeline.stages=sft", "pipeline.stages", command="pipeline"),
    _override("serve-port", "serve.port=70000", "serve.port=70000", "at most 65535", command="serve"),
    Case("override-serve-log-requests", ["serve", "--config", "tiny", "log_requests=[a]"],
         ("serve.log_requests=['a']", "true, false or a file path")),
    _recipe("serve-engine", "serve:\n  engine: tgi\n", "serve.engine='tgi'", "not one of", command="serve"),
    # Data files: the row is the file's line (blank lines counted) whatever the kind of error.
    _data("blank-then-bad-role", "roles.jsonl",
          _jsonl(CHAT, "", {"messages": [{"role": "bot", "content": "x"}, CHAT["messages"][1]]}),
          "row 3", "field 'messages[0].role'"),
    _data("blank-then-bad-json", "json.jsonl", _jsonl(CHAT, "", '{"messages": '), "row 3", "not valid JSON"),
    _data("not-utf8", "latin.jsonl", _jsonl(CHAT).encode() + b'{"messages": "caf\xe9"}\n', "row 2", "not UTF-8"),
    _data("truncated-gz", "cut.jsonl.gz", TRUNCATED_GZ, "cut off"),
    _data("not-gz", "fake.jsonl.gz", b"plain text", "cannot read"),
    _data("row-not-object", "list.jsonl", _jsonl(CHAT, [1, 2]), "row 2"),
    _data("messages-string", "string.jsonl", _jsonl({"messages": "hello"}), "row 1", "field 'messages'"),
    _data("empty", "empty.jsonl", "", "no rows"),
    _data("json-not-list", "dict.json", json.dumps({"rows": []}), "must be a list"),
    _data("unknown-type", "chats.txt", "hello\n", "unknown file type"),
    _data("tie", "tie.jsonl", _jsonl(PAIR, {**PAIR, "tie": True}), "row 2", "field 'chosen'", kind="preference"),
    _data("identical", "same.jsonl", _jsonl(PAIR, "", {**PAIR, "rejected": PAIR["chosen"]}), "row 3", "identical",
          kind="preference"),
    Case("data-missing", ["data", "--check", "{dir}/nowhere.jsonl"], ("nowhere.jsonl", "file not found")),
    # Through a stage itself: the same lines, and the run folder it opened is removed again.
    Case("sft-blank-then-bad-role", ["sft", "--config", "tiny", "data={dir}/roles.jsonl"],
         ("roles.jsonl, row 3, field 'messages[0].role'",), quiet=False),
    Case("sft-truncated-gz", ["sft", "--config", "tiny", "data={dir}/cut.jsonl.gz"], ("cut.jsonl.gz", "cut off"),
         quiet=False),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_model_dir) -> dict[str, tuple[subprocess.CompletedProcess, Path, Path]]:
    """Every case run once, two at a time: (process, its runs_dir, its working directory)."""
    folder = tmp_path_factory.mktemp("fuzz")
    for case in CASES:
        for name, content in (case.files or {}).items():
            content = content.replace("{dir}", str(folder)) if isinstance(content, str) else content
            (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(case: Case):
        cwd = folder / f"cwd-{case.id}"
        cwd.mkdir()
        runs = folder / f"runs-{case.id}"
        args = [arg.replace("{dir}", str(folder)) for arg in case.args]
        if args[0] != "data":
            args.append(f"runs_dir={runs}")
        process = subprocess.run([sys.executable, "-m", "align.run", *args], cwd=cwd, env=env, capture_output=True,
                                 text=True, timeout=300)
        return case.id, (process, runs, cwd)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CASES))


def test_there_are_at_least_30_cases():
    assert len({case.id for case in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_exit_2_and_one_clear_line(case: Case, outcomes):
    process, runs, cwd = outcomes[case.id]
    output = process.stdout + process.stderr
    assert process.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, process.stderr
    for name in case.names:
        assert name.replace("{dir}", str(runs.parent)) in errors[0], errors[0]
    if case.quiet:
        assert process.stderr.strip() == errors[0] and process.stdout == "", output
    assert not runs.exists() or not any(runs.iterdir()), sorted(runs.rglob("*"))
    assert not any(cwd.iterdir())  # nothing written where it ran either (no stray runs/)
