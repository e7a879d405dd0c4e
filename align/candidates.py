"""`python -m align.run candidates`: sample k replies per prompt from a model into the label store.

    python -m align.run candidates --from runs/demo/sft prompts=hh-harmless n=4 limit=200
    python -m align.run label --store runs/demo/labels.sqlite      # then annotators rank them

The model is `--from` (a run stage folder, a model folder, a hub id or embedded:...), else the
latest promoted sft stage, else the recipe's `model.source`. Prompts come from any dataset spec
the registry reads (the conversation up to the assistant's turn). The store defaults to
``<run>/labels.sqlite`` next to the stage folder, else ``<runs_dir>/labels.sqlite``.

Resumable: a (model, prompt) already in the store is skipped, and replies are stored after every
chunk of prompts, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from align.config import load_recipe, opt, recipe_schema
from align.errors import ConfigError
from align.log import log

SECTION = "candidates"


@dataclass
class Options:
    prompts: Optional[str] = opt(None, "prompt dataset spec: a shipped name, a JSONL/JSON/Parquet/CSV file, a hub id")
    split: str = opt("train", "split of the prompt dataset")
    limit: int = opt(-1, "use at most this many prompts (-1: all)", min=1, also=(-1,))
    n: int = opt(4, "replies sampled per prompt (the k an annotator ranks, 2 to 8)", min=2, max=8)
    max_new_tokens: int = opt(128, "longest reply, in tokens", min=1)
    temperature: float = opt(0.9, "sampling temperature (higher: more varied candidates)", above=0.0)
    top_p: float = opt(0.95, "nucleus sampling threshold", above=0.0, max=1.0)
    batch_size: int = opt(8, "sequences generated together", min=1)
    chunk: int = opt(16, "prompts generated between two writes to the store (the resume granularity)", min=1)
    store: Optional[str] = opt(None, "label store: a SQLite file or a database URL (default: <run>/labels.sqlite)")


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Separate this command's own keys (`n=4`, `candidates.n=4`) from recipe keys (`model.dtype=...`)."""
    own_keys = {f.name for f in fields(Options)}
    own, recipe = [], []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith(SECTION + "."):
            key = key[len(SECTION) + 1:]
            item = key + "=" + item.split("=", 1)[1] if "=" in item else item
        (own if key in own_keys else recipe).append(item)
    return own, recipe


def load_settings(config: str, overrides: list[str]):
    """(recipe, options): the recipe's `candidates` section when it has one, with key=value overrides on top."""
    from omegaconf import OmegaConf

    from align.config import parse_overrides

    own, recipe_overrides = _split_overrides(overrides)
    if SECTION in OmegaConf.structured(recipe_schema()):
        cfg = load_recipe(config, recipe_overrides + [f"{SECTION}.{o}" for o in own])
        return cfg, cfg[SECTION]
    cfg = load_recipe(config, recipe_overrides)
    schema = OmegaConf.structured(Options)
    tree = parse_overrides(own, None, schema)
    try:
        options = OmegaConf.merge(schema, tree)
    except Exception as exc:  # OmegaConf validation: wrong type for a key
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"command line: {key + ': ' if key else ''}{exc}".splitlines()[0]) from None
    return cfg, options


def default_store_for(parent, runs_dir: str) -> Path:
    run_dir = parent.run_dir
    return (run_dir if run_dir is not None else Path(runs_dir)) / "labels.sqlite"


def collect(store, model, tokenizer, prompts: list[list[dict]], options, *, model_name: str, source: str,
            seed: int = 0) -> int:
    """Sample `options.n` replies for each prompt not yet in `store`; store them chunk by chunk.

    Returns the number of items added.
    """
    from tqdm.auto import tqdm

    from align.generate import generate_replies

    todo = store.missing_prompts(prompts, model=model_name)
    if len(todo) < len(prompts):
        log.info(f"{len(prompts) - len(todo)} of {len(prompts)} prompts already in the store: skipped")
    added = 0
    with tqdm(total=len(todo), desc="candidates", unit="prompt") as bar:
        for start in range(0, len(todo), options.chunk):
            batch = [prompts[i] for i in todo[start:start + options.chunk]]
            replies = generate_replies(model, tokenizer, batch, n=options.n, max_new_tokens=options.max_new_tokens,
                                       temperature=options.temperature, top_p=options.top_p,
                                       batch_size=options.batch_size, seed=seed + todo[start], progress=False)
            added += len(store.add_items(batch, replies, model=model_name, source=source))
            bar.update(len(batch))
    return added


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from align.config import describe_options

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    rows = describe_options(Options)
    parser.description = (__doc__.split("\n\n")[0] + "\n\noptions (key=value):\n"
                          + "\n".join(f"  {k:<15} {h} (default: {d})" for k, d, h in rows))
    parser.add_argument("--config", default="default", help="recipe name or YAML path (model, seed, device)")
    parser.add_argument("--from", dest="parent", metavar="ARTIFACT",
                        help="model to sample from: a run stage folder, a model folder, a hub id or embedded:...")
    parser.add_argument("--override-gate", metavar="REASON", help="sample from a parent whose gate failed")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="prompts=SPEC n=4 store=PATH ...")


def main(args: argparse.Namespace) -> int:
    from align.models import load_causal_lm, load_tokenizer
    from align.runs import resolve_parent
    from align.data.registry import load_prompts
    from align.data.store import open_store

    cfg, options = load_settings(args.config, args.overrides)
    if not options.prompts:
        raise ConfigError("candidates needs prompts=<dataset spec> (a shipped name, a file, or a hub id)")
    if not 2 <= options.n <= 8:
        raise ConfigError(f"n={options.n}: annotators rank 2 to 8 replies per prompt")
    parent = resolve_parent(args.parent, ("sft",), Path(cfg.runs_dir), cfg.model.source, args.override_gate)
    rows = load_prompts(options.prompts, options.split, options.limit)
    store_location = options.store or default_store_for(parent, cfg.runs_dir)
    store = open_store(store_location)
    model_name = os.path.normpath(parent.source) if Path(parent.source).exists() else parent.source
    prompts = [row["prompt"] for row in rows.rows]
    if not store.missing_prompts(prompts, model=model_name):
        log.info(f"all {len(prompts)} prompts already have candidates from {model_name} in {store.url}")
        return 0
    tokenizer = load_tokenizer(parent.source, cfg.model)
    model = load_causal_lm(parent.source, cfg.model, device=cfg.device)
    added = collect(store, model, tokenizer, prompts, options, model_name=model_name, source=rows.source,
                    seed=cfg.seed)
    log.info(f"stored {added} prompts x {options.n} replies from {model_name} in {store.url} "
             f"({store.count_items()} items in all). Next: python -m align.run label --store {store_location}")
    return 0
