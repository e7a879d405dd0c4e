"""curate at scale: streaming (rows read lazily, curated chunk by chunk) and datatrove's local executor over shards
both give exactly what curating in memory gives, on a mix with planted duplicates, PII and contamination."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from align.bench.curate import WORDS

from tests.data.test_curate import VOCAB, chat, write_jsonl
from tests.helpers import run_cli

COMPARED = ("train.jsonl", "test.jsonl", "removed.jsonl")


def _story(seed: int, n: int = 60) -> list[str]:
    """n English words, a different sequence for each seed (rows of different seeds share no 3-word shingle)."""
    rng = random.Random(seed)
    return rng.choices(WORDS, k=n)


def _mix(tmp_path: Path) -> str:
    """Two parts (a JSONL file and a Parquet file); every 10th row of each is its held-out split."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from align.gates.bias import load_crows_pairs

    rows = [chat(f"Question {i}: how should I water a {VOCAB[i]} plant?", " ".join(_story(i)) + ".")
            for i in range(26)]
    near = _story(2)
    near[30] = "zzplanted"
    rows[7] = chat(rows[2]["messages"][0]["content"], " ".join(near) + ".")  # near copy of line 3
    rows[12] = rows[4]  # an exact copy
    rows[14] = chat("Mail me at jane.doe@example.org, please.", "I will write to you tomorrow morning.")
    rows[15] = chat(f"Continue this: {load_crows_pairs()[3].sent_more}", "I would rather not.")  # a benchmark prompt
    rows[16] = chat(rows[9]["messages"][0]["content"], "Another answer to the held-out question.")  # line 10: test
    rows[17] = chat("Comment arroser une plante en été quand il fait très chaud ?", "Le matin, un jour sur deux.")
    rows[18] = chat("An empty reply follows.", "")
    rows[19] = chat("List three fruits.", "Apples, pears,")
    for i in (21, 22, 23):  # one first turn three times: balance keeps two
        rows[i] = chat("What should I cook tonight?", f"Try the {VOCAB[40 + i]} soup with {VOCAB[50 + i]} bread.")
    first = write_jsonl(tmp_path / "chats.jsonl", rows)
    second = [chat(f"Second part {i}: what is a {VOCAB[60 + i]}?", " ".join(_story(100 + i)) + ".")
              for i in range(12)]
    second[9] = rows[6]  # its held-out row repeats the first part's training row (line 7): that one goes
    pq.write_table(pa.Table.from_pylist(second), tmp_path / "more.parquet")
    return f"{first},{tmp_path / 'more.parquet'}"


def _curate(tmp_path: Path, data: str, run: str, *extra: str) -> Path:
    runs = tmp_path / "runs"
    assert run_cli("curate", "--config", "tiny", f"runs_dir={runs}", f"data={data}", "toxicity.enabled=false",
                   "balance.enabled=true", "balance.max_per_first_turn=2", "decontaminate.ngram=8",
                   "language.low_accuracy=true", "progress=false", "--run", run, *extra) == 0
    return runs / run / "curate"


def _report(folder: Path) -> dict:
    report = json.loads((folder / "curate_report.json").read_text())
    for step in report["steps"]:
        for key in ("wall_s", "cpu_s", "rows_per_s"):
            step.pop(key)
    return {key: report[key] for key in ("rows_in", "rows_out", "rows_read", "rows_out_by_split", "removed",
                                         "steps", "examples", "kind")}


@pytest.fixture(scope="module")
def in_memory(tmp_path_factory, tiny_model_dir):
    tmp_path = tmp_path_factory.mktemp("scale")
    data = _mix(tmp_path)
    return tmp_path, data, _curate(tmp_path, data, "memory")


def test_the_fixture_plants_what_it_says(in_memory):
    _, data, folder = in_memory
    chats, more = data.split(",")
    removed = {(r["id"], r["reason"]) for r in map(json.loads, (folder / "removed.jsonl").read_text().splitlines())}
    assert removed == {
        (f"{chats}:8", "near_duplicate"), (f"{chats}:13", "exact_duplicate"), (f"{chats}:7", "exact_duplicate"),
        (f"{chats}:16", "benchmark_overlap"), (f"{chats}:17", "held_out_overlap"), (f"{chats}:18", "language"),
        (f"{chats}:19", "empty_turn"), (f"{chats}:20", "truncated_turn"), (f"{chats}:24", "first_turn_cap")}
    assert f"{more}:10" not in {i for i, _ in removed}  # the held-out copy stays, the training one went
    assert "[EMAIL]" in (folder / "train.jsonl").read_text()
    report = json.loads((folder / "curate_report.json").read_text())
    assert report["mode"] == "in memory" and report["rows_in"] == 38 and report["rows_out"] == 29


def test_streaming_in_chunks_writes_the_same_files_and_counts(in_memory):
    tmp_path, data, memory = in_memory
    streamed = _curate(tmp_path, data, "streamed", "streaming=true", "chunk_rows=4")
    for name in COMPARED:
        assert (streamed / name).read_bytes() == (memory / name).read_bytes(), name
    assert _report(streamed) == _report(memory)
    assert json.loads((streamed / "curate_report.json").read_text())["mode"] == "streaming"
    manifest = lambda folder: json.loads((folder / "manifest.json").read_text())  # noqa: E731
    assert manifest(streamed)["data"] == manifest(memory)["data"]  # the same rows, sources and hashes per split


def test_streaming_starts_by_itself_above_the_size_threshold(in_memory, caplog):
    tmp_path, data, memory = in_memory
    auto = _curate(tmp_path, data, "auto", "stream_above_mb=0", "chunk_rows=7")
    assert json.loads((auto / "curate_report.json").read_text())["mode"] == "streaming"
    assert (auto / "removed.jsonl").read_bytes() == (memory / "removed.jsonl").read_bytes()


def test_streaming_stops_at_a_bad_line_with_nothing_written(tmp_path, capsys):
    rows = [chat(f"Question {i} about {w}?", f"Answer {i} about {w}.") for i, w in enumerate(VOCAB[:30])]
    data = write_jsonl(tmp_path / "late.jsonl", [*rows, "{not json"])
    runs = tmp_path / "runs"
    assert run_cli("curate", "--config", "tiny", f"runs_dir={runs}", f"data={data}", "streaming=true",
                   "chunk_rows=5", "toxicity.enabled=false", "language.enabled=false", "length.enabled=false") == 2
    assert f"{data}, row 31: not valid JSON" in capsys.readouterr().err
    assert not runs.exists()  # the chunks curated before it are gone with the work folder


def test_datatrove_local_executor_with_two_workers_matches_one_process(in_memory):
    tmp_path, data, memory = in_memory
    sharded = _curate(tmp_path, data, "sharded", "executor=local", "tasks=3", "workers=2", "chunk_rows=5")
    kept = lambda folder: (folder / "train.jsonl").read_text()  # noqa: E731
    assert kept(sharded) == kept(memory)
    for name in COMPARED:
        assert (sharded / name).read_bytes() == (memory / name).read_bytes(), name
    assert _report(sharded) == _report(memory)
    # line 3 of the first file is row 6 in curation's order (the 3 held-out rows first), its near copy on line 8
    # row 11: shards 2 and 1 of 3 (row n goes to shard (n - 1) % 3), and dedup still found the copy
    work_logs = sorted((tmp_path / "runs" / "sharded").glob("**/segment-*"))
    assert not work_logs  # the shards' files went with the work folder
    removed = [json.loads(line) for line in (sharded / "removed.jsonl").read_text().splitlines()]
    assert any(r["reason"] == "near_duplicate" and r["detail"].endswith("chats.jsonl:3") for r in removed)


@pytest.mark.timeout(300)
def test_datatrove_bad_line_in_a_shard_is_one_error_line_with_nothing_written(tmp_path, capsys):
    rows = [chat(f"Question {i} about {w}?", f"Answer {i} about {w}.") for i, w in enumerate(VOCAB[:20])]
    data = write_jsonl(tmp_path / "late.jsonl", [*rows, "{not json"])
    runs = tmp_path / "runs"
    assert run_cli("curate", "--config", "tiny", f"runs_dir={runs}", f"data={data}", "executor=local", "tasks=2",
                   "workers=2", "toxicity.enabled=false", "language.enabled=false", "length.enabled=false",
                   "progress=false") == 2
    assert f"error: {data}, row 21: not valid JSON" in capsys.readouterr().err
    assert not runs.exists()
