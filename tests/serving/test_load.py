"""`python -m align.bench serve-load --quick`: the real server in its own process, streamed clients on loopback,
and every figure the report needs."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(300)


def test_serve_load_reports_throughput_latency_and_the_batching_ratio(tmp_path, capsys):
    from align.bench import cli

    out = tmp_path / "serve-load.json"
    assert cli(["serve-load", "--quick", "--clients", "3", "--requests", "1", "--serial-requests", "2",
                "--max-tokens", "6", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    batched, serial = results["batched"], results["one_at_a_time"]
    assert batched["requests"] == 3 and serial["requests"] == 2 and serial["clients"] == 1
    assert 0 < batched["output_tokens"] <= 18 and batched["output_tokens_per_s"] > 0
    assert 0 < batched["ttft_p50_s"] <= batched["ttft_p95_s"] <= batched["latency_p95_s"]
    assert results["throughput_ratio"] == pytest.approx(batched["output_tokens_per_s"] / serial["output_tokens_per_s"])
    assert "batched ÷ one-at-a-time output tokens/s" in capsys.readouterr().out


def test_serve_load_refuses_a_bad_count_in_one_line(capsys):
    from align.bench import cli

    assert cli(["serve-load", "--clients", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --clients must be at least 1, got 0"


def test_serve_load_with_vllm_is_refused_in_one_line_where_vllm_cannot_run(capsys):
    from align.bench import cli

    assert cli(["serve-load", "--quick", "--engine", "vllm"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: serve.engine=vllm needs the vllm package")
