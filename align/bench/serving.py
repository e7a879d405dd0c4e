"""The gate's two costs (replies generated per second, texts scored per second) and the label store's submit
latency, each measured the way align runs it: the gate's own prompts, sampling settings and scorer, and the
store's real SQLite file (WAL, synchronous=FULL)."""

from __future__ import annotations

import time
from pathlib import Path


def measure_gate(spec: dict) -> dict:
    """Replies/s of align.generate.generate_replies on the gate's toxicity prompts (the recipe's gate sizes), then
    texts/s of the toxicity scorer (align.gates.toxicity) on those replies."""
    import torch

    from align import models
    from align.bench.trainers import bench_recipe
    from align.gates.toxicity import load_scorer
    from align.gates.toxicity_eval import prompt_sources, sample_prompts
    from align.generate import generate_replies

    torch.set_num_threads(spec["threads"])
    options = bench_recipe({**spec, "stage": "sft"}).gate
    source = spec["model"]
    tokenizer = models.load_tokenizer(source)
    model = models.load_causal_lm(source, device="cpu")
    prompts = sample_prompts(prompt_sources(list(options.toxicity_sources)), options.toxicity_prompts, options.seed)
    conversations = [p.messages(options.continuation_template) for p in prompts]
    started = time.perf_counter()
    replies = generate_replies(model, tokenizer, conversations, n=options.samples_per_prompt,
                               max_new_tokens=options.max_new_tokens, temperature=options.temperature,
                               top_p=options.top_p, batch_size=options.batch_size, seed=options.seed, progress=False)
    generate_s = time.perf_counter() - started
    texts = [reply for group in replies for reply in group]
    scorer = load_scorer(spec.get("scorer") or options.scorer)
    scorer.score(texts[:2], progress=False)  # warm-up: the first batch pays for lazy initialisation
    started = time.perf_counter()
    scorer.score(texts, progress=False)
    score_s = time.perf_counter() - started
    return {
        "replies": len(texts), "max_new_tokens": options.max_new_tokens, "batch_size": options.batch_size,
        "generate_s": generate_s, "replies_per_s": len(texts) / generate_s,
        "scorer": scorer.spec, "texts_scored": len(texts), "score_s": score_s, "texts_per_s": len(texts) / score_s,
    }


def percentile(values: list[float], share: float) -> float:
    """The value at `share` (0..1) of the sorted values, linearly interpolated."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_store(spec: dict) -> dict:
    """Latency of LabelStore.submit over `submits` labels, each on an item fetched with next_item (not timed)."""
    from align.data.store import open_store

    count = spec["submits"]
    store = open_store(Path(spec["work_dir"]) / "labels.sqlite")
    try:
        prompts = [[{"role": "user", "content": f"Benchmark question number {i}?"}] for i in range(count)]
        store.add_items(prompts, [[f"First reply {i}.", f"Second reply {i}.", f"Third reply {i}."]
                                  for i in range(count)], model="bench")
        store.add_annotator("bench", "bench-password")
        latencies = []
        for _ in range(count):
            item = store.next_item("bench")
            best, *rest = [reply.id for reply in item.replies]
            started = time.perf_counter()
            store.submit(item.id, "bench", [[best], rest])
            latencies.append(time.perf_counter() - started)
    finally:
        store.close()
    milliseconds = [1000 * s for s in latencies]
    return {"submits": count, "p50_ms": percentile(milliseconds, 0.50), "p95_ms": percentile(milliseconds, 0.95),
            "mean_ms": sum(milliseconds) / count, "max_ms": max(milliseconds)}
