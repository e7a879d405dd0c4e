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
