"""One model measured on an evaluation's units: what depends on the model, computed once and cached.

- the summed log-probability (and token count) of the chosen and the rejected reply of every held-out preference
  pair (align.compare.pair_logprobs);
- one sampled reply to every harmful, benign and reference prompt (align.generate.generate_replies, seeded by
  `eval.seed`: a reply's random numbers depend only on the seed and the prompt's position, so two models get the
  same draws, and identical models give identical replies);
- the assistant perplexity of every reference conversation (align.evaluate.assistant_perplexity, one
  conversation at a time, so each has its own value to pair).

Prompts lose their earliest turns to `eval.max_prompt_length` under the model's own tokenizer. The result is a
plain dict cached as JSON under `cache_dir("eval", "models")`, keyed by the model's identity (the sha256 of its
manifest, else its files' names, sizes and times), the model options, the measuring options and the units, so a
base model measured for one evaluation is not measured again for the next.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from align.paths import cache_dir
from align.log import get

VERSION = "v1"
#: The eval options that change a measurement (the rest only change how it is summarised).
MEASURING = ("seed", "max_new_tokens", "temperature", "top_p", "max_prompt_length", "max_length")


log = get("eval")  # [align] eval: …


def model_identity(source: str) -> str:
    """The sha256 of a stage folder's manifest; for another folder its files' names, sizes and mtimes; else the
    source itself (a hub id or embedded:...)."""
    from align.runs import MANIFEST, sha256_file

    path = Path(source).expanduser()
    if (path / MANIFEST).is_file():
        return "manifest:" + sha256_file(path / MANIFEST)
    if path.is_dir():
        stamps = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file())
        return "folder:" + hashlib.sha256(json.dumps([str(path.resolve()), stamps]).encode()).hexdigest()
    return "source:" + source


def measurement_key(source: str, units, options, model_options) -> str:
    from omegaconf import OmegaConf

    model_opts = OmegaConf.to_container(model_options, resolve=True) if model_options is not None else None
    data = [VERSION, model_identity(source), model_opts, {k: getattr(options, k) for k in MEASURING},
            units.digest()]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def measure_cached(source: str, units, options, model_options=None, device: str = "auto",
                   progress: bool = True) -> dict:
    """The model's measurement from align's cache, or measured now and cached."""
    key = measurement_key(source, units, options, model_options)
    path = cache_dir("eval", "models") / f"{key[:32]}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                log.info(f"{source}: measured earlier with the same settings (cached)")
                return cached
        except (OSError, json.JSONDecodeError):
            pass
    measurement = {"key": key, **measure(source, units, options, model_options, device, progress)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(measurement), encoding="utf-8")
    tmp.replace(path)
    return measurement


class _Clock:
    """Wall and CPU seconds of each part of a measurement."""

    def __init__(self):
        self.timing: dict[str, float] = {}

    def part(self, name: str):
        clock = self

        class _Part:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.timing[f"{name}_s"] = round(time.perf_counter() - self.wall, 1)
                clock.timing[f"{name}_cpu_s"] = round(time.process_time() - self.cpu, 1)

        return _Part()


def measure(source: str, units, options, model_options=None, device: str = "auto", progress: bool = True) -> dict:
    """Every model-dependent figure of the module docstring for one model."""
    import gc

    from tqdm.auto import tqdm

    from align import models
    from align.compare import pair_logprobs
    from align.evaluate import assistant_perplexity
    from align.generate import generate_replies
    from align.data.preferences import trim_prompt

    clock = _Clock()
    with clock.part("load"):
        tokenizer = models.load_tokenizer(source, model_options)
        model = models.load_causal_lm(source, model_options, device=device)
    limit = options.max_prompt_length
    result: dict = {"source": source, "preference": {}, "replies": {}, "perplexity": {}}
    try:
        with clock.part("preference"):
            for name, pairs in units.preference.items():
                log.info(f"{source}: log-probabilities of {len(pairs)} held-out {name} pairs")
                trimmed = [{**p, "prompt": trim_prompt(p["prompt"], tokenizer, limit)} for p in pairs]
                result["preference"][name] = {"ids": [p["id"] for p in pairs],
                                              **pair_logprobs(model, tokenizer, trimmed, options.max_length,
                                                              options.batch_size)}
        with clock.part("generation"):
            todo = units.generation()
            prompts = [trim_prompt(unit["prompt"], tokenizer, limit) for _, unit in todo]
            replies = generate_replies(model, tokenizer, prompts, n=1, max_new_tokens=options.max_new_tokens,
                                       temperature=options.temperature, top_p=options.top_p, do_sample=True,
                                       batch_size=options.generation_batch_size, seed=options.seed,
                                       progress=progress, desc=f"eval: replies of {Path(source).name or source}")
            result["replies"] = {unit["id"]: reply[0] for (_, unit), reply in zip(todo, replies)}
        with clock.part("perplexity"):
            template = models.training_chat_template(tokenizer, model_options)
            values = {}
            for unit in tqdm(units.reference, desc="eval: perplexity", unit="conversation", disable=not progress,
                             leave=False):
                values[unit["id"]] = assistant_perplexity(model, tokenizer, [unit["conversation"]],
                                                          chat_template=template, max_length=options.max_length,
                                                          batch_size=1)
            result["perplexity"] = values
    finally:
        del model
        gc.collect()
    result["timing"] = clock.timing
    result["timing"]["total_s"] = round(sum(v for k, v in clock.timing.items() if not k.endswith("cpu_s")), 1)
    result["timing"]["total_cpu_s"] = round(sum(v for k, v in clock.timing.items() if k.endswith("cpu_s")), 1)
    return result
