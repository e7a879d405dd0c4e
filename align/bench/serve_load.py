"""`python -m align.bench serve-load`: a bounded load test of `python -m align.run serve` on loopback.

The server runs as the real command in its own process (`--allow-ungated`: it measures the engine, not a run). Then:
1. batched: `--clients` streamed clients at once, each sending `--requests` completions one after another
   (`max_tokens`, temperature 1, a seed per request, prompts from a fixed list), so the engine batches them;
2. one at a time: a single client sending `--serial-requests` completions in sequence (a batch of one).
For each phase: requests/s, output tokens/s (the usage counts of the streams), p50/p95 time to first token and
latency; and the ratio of the batched phase's output tokens/s to the one-at-a-time phase's.

    python -m align.bench serve-load --clients 32                 # the embedded model (a quiet machine!)
    python -m align.bench serve-load --quick                      # the tiny model, 4 clients: a check, seconds
    python -m align.bench serve-load --engine vllm --model runs/demo/dpo --clients 64   # on a GPU machine with vllm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from align.bench.serving import percentile
from align.errors import AlignError
from align.serving.options import ENGINES

PROMPTS = [
    "What is the capital of France, and why is it famous?",
    "Give me three tips for sleeping better.",
    "Explain what a reward model is in one paragraph.",
    "Write a short poem about the sea.",
    "How do I boil an egg?",
    "What should I pack for a weekend hiking trip?",
    "Summarise the plot of Romeo and Juliet.",
    "Why is the sky blue?",
]
QUICK = {"model": "tiny", "clients": 4, "requests": 2, "serial_requests": 4, "max_tokens": 16}
FULL = {"model": "embedded:smollm2-135m-instruct", "clients": 32, "requests": 2, "serial_requests": 8,
        "max_tokens": 64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"what the server serves (default: {FULL['model']}; --quick: tiny)")
    parser.add_argument("--clients", type=int, help=f"concurrent streamed clients (default: {FULL['clients']})")
    parser.add_argument("--requests", type=int, help=f"completions per client, one after another "
                                                     f"(default: {FULL['requests']})")
    parser.add_argument("--serial-requests", type=int, help=f"completions of the one-at-a-time phase "
                                                            f"(default: {FULL['serial_requests']})")
    parser.add_argument("--max-tokens", type=int, help=f"max_tokens per completion (default: {FULL['max_tokens']})")
    parser.add_argument("--max-batch", type=int, help="the server's --max-batch (default: --clients)")
    parser.add_argument("--engine", default="transformers", choices=ENGINES,
                        help="the server's --engine: transformers (default) or vllm (a GPU machine with vllm)")
    parser.add_argument("--quick", action="store_true", help="the tiny model and a few clients (a check)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serve-load.json"),
                        help="JSON results (default: runs/bench/serve-load.json; the server's log beside it)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _one(client, url: str, body: dict) -> dict:
    """One streamed completion: time to first text, latency, completion tokens."""
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise AlignError(f"the server answered {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise AlignError(f"the server failed a completion: {event['error']['message']}")
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if first is None and any(c["delta"].get("content") for c in event["choices"]):
                first = time.perf_counter() - started
    return {"ttft_s": first if first is not None else time.perf_counter() - started,
            "latency_s": time.perf_counter() - started, "tokens": tokens}


async def _phase(base: str, model: str, clients: int, requests: int, max_tokens: int, offset: int) -> dict:
    import httpx

    url = base + "/v1/chat/completions"

    async def client_loop(client, c: int) -> list[dict]:
        results = []
        for r in range(requests):
            k = offset + c * requests + r
            body = {"model": model, "max_tokens": max_tokens, "temperature": 1.0, "top_p": 0.9, "seed": k,
                    "stream": True, "stream_options": {"include_usage": True},
                    "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}]}
            results.append(await _one(client, url, body))
        return results

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800.0), limits=limits) as client:
        started = time.perf_counter()
        done = await asyncio.gather(*(client_loop(client, c) for c in range(clients)))
        wall = time.perf_counter() - started
    rows = [row for rows in done for row in rows]
    tokens = sum(r["tokens"] for r in rows)
    return {"clients": clients, "requests": len(rows), "wall_s": wall, "requests_per_s": len(rows) / wall,
            "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
            "ttft_p50_s": percentile([r["ttft_s"] for r in rows], 0.5),
            "ttft_p95_s": percentile([r["ttft_s"] for r in rows], 0.95),
            "latency_p50_s": percentile([r["latency_s"] for r in rows], 0.5),
            "latency_p95_s": percentile([r["latency_s"] for r in rows], 0.95)}


def _start_server(spec: dict, port: int, work: Path, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "align.run", "serve", "--model", spec["model"], "--allow-ungated",
               "--port", str(port), "--store", str(work / "labels.sqlite"), "--max-batch", str(spec["max_batch"]),
               "--engine", spec["engine"],
               "--max-tokens", str(max(spec["max_tokens"], 1)), "--default-max-tokens", str(spec["max_tokens"])]
    log = log_path.open("w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))


def _wait_healthy(process: subprocess.Popen, base: str, log_path: Path, timeout_s: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise AlignError(f"the server exited with {process.returncode}: {tail[0]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AlignError(f"the server did not answer /health within {timeout_s:.0f} s (log: {log_path})")


def run(spec: dict) -> dict:
    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".server.log")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="align-serve-load-") as work:
        process = _start_server(spec, port, Path(work), log_path)
        try:
            _wait_healthy(process, base, log_path)
            import httpx

            model = httpx.get(base + "/v1/models").json()["data"][0]["id"]
            asyncio.run(_phase(base, model, 1, 1, spec["max_tokens"], offset=10_000))  # warm-up
            batched = asyncio.run(_phase(base, model, spec["clients"], spec["requests"], spec["max_tokens"], 0))
            serial = asyncio.run(_phase(base, model, 1, spec["serial_requests"], spec["max_tokens"], 0))
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return {"spec": spec, "batched": batched, "one_at_a_time": serial,
            "throughput_ratio": batched["output_tokens_per_s"] / max(serial["output_tokens_per_s"], 1e-9)}


def table(results: dict) -> str:
    rows = [("phase", "clients", "requests", "req/s", "out tok/s", "TTFT p50", "TTFT p95", "lat p50", "lat p95")]
    for name in ("batched", "one_at_a_time"):
        p = results[name]
        rows.append((name.replace("_", " "), str(p["clients"]), str(p["requests"]), f"{p['requests_per_s']:.2f}",
                     f"{p['output_tokens_per_s']:.1f}", f"{p['ttft_p50_s']:.2f}s", f"{p['ttft_p95_s']:.2f}s",
                     f"{p['latency_p50_s']:.2f}s", f"{p['latency_p95_s']:.2f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines) + f"\nbatched ÷ one-at-a-time output tokens/s: {results['throughput_ratio']:.2f}x"


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m align.bench serve-load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    spec = {key: getattr(args, key) if getattr(args, key, None) is not None else value for key, value in base.items()}
    spec["max_batch"] = args.max_batch or spec["clients"]
    spec["out"] = str(args.out)
    spec["engine"] = args.engine
    try:
        for key in ("clients", "requests", "serial_requests", "max_tokens", "max_batch"):
            if spec[key] < 1:
                raise AlignError(f"--{key.replace('_', '-')} must be at least 1, got {spec[key]}")
        if spec["engine"] == "vllm":
            from align.serving.vllm_engine import check_vllm

            check_vllm()  # here, before a server process starts
        print(f"[serve-load] {spec['model']} ({spec['engine']}): {spec['clients']} clients x {spec['requests']} streamed completions of "
              f"{spec['max_tokens']} tokens, then {spec['serial_requests']} one at a time", flush=True)
        results = run(spec)
    except AlignError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    Path(spec["out"]).write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"results: {spec['out']}")
    return 0
