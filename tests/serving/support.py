"""Shared pieces of the serving tests: a run around the tiny model and the real API server on 127.0.0.1."""

from __future__ import annotations

import contextlib

from tests.ui.chat_support import make_stage


def make_run(runs_dir, model_dir, run: str = "demo", **stage) -> str:
    """runs/<run>/sft: the tiny model with a manifest (promoted, gate passed unless `stage` says otherwise)."""
    make_stage(runs_dir, run, "sft", model_dir, **stage)
    return run


@contextlib.contextmanager
def serving(runs_dir, run: str, store, *, keys=None, output_filter=None, rate_limit: float = 0.0, **limits):
    """The API over `run`'s models on a free loopback port; yields (url, service)."""
    from align.serving.access import Access, RateLimiter
    from align.serving.app import Limits, ServedModel, Service, build_app
    from align.serving.resolve import model_id, served_models
    from align.serving.server import Running

    models = {model_id(m): ServedModel(model_id(m), m, max_batch=8)
              for m in served_models(run=run, runs_dir=runs_dir)}
    service = Service(models, store=store, access=Access(keys, RateLimiter(rate_limit)), output_filter=output_filter,
                      limits=Limits(**limits))
    try:
        with Running(build_app(service)) as server:
            yield server.url, service
    finally:
        service.close()


def client(url: str, key: str = "unused"):
    """The official openai client on `url`, retrying nothing (a 429 must reach the test)."""
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def command_args(*argv):
    """The arguments `python -m align.run serve ARGV...` hands to the serve command (align.serving.cli)."""
    from align.run import build_parser

    args, extra = build_parser("serve").parse_known_args(["serve", *map(str, argv)])
    args.overrides = list(args.overrides) + extra
    return args


@contextlib.contextmanager
def serving_command(*argv):
    """What `python -m align.run serve ARGV...` would serve (its recipe, flags, store and models: `prepare`), behind
    the real API server on a free loopback port (the port in the recipe is not used); yields (url, Serving). Leaving
    the block stops the server, its engine and its store, as a killed process would."""
    from align.serving.app import build_app
    from align.serving.cli import prepare
    from align.serving.server import Running

    prepared = prepare(command_args(*argv))
    try:
        with Running(build_app(prepared.service)) as server:
            yield server.url, prepared
    finally:
        prepared.service.close()
        prepared.service.store.close()
