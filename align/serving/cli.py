"""`python -m align.run serve`: align's models behind OpenAI's chat-completions API (see align/serving/app.py).

    python -m align.run serve                               # the latest promoted chat model under runs/
    python -m align.run serve --run demo --port 8000        # every promoted ppo/dpo/sft stage of run demo
    python -m align.run serve --add-key ci-bot              # a new API key (printed once); --list-keys, --revoke-key
    python -m align.run serve --host 0.0.0.0                # off loopback: API keys are required
    python -m align.run serve --config my.yaml serve.log_requests=true   # any key of the recipe's serve: section

The flags below are shortcuts for keys of the recipe's `serve:` section (align/serving/options.py) and override it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from align.errors import AlignError

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from align.serving.options import ENGINES, FILTER_ACTIONS, KEEP_COMPLETIONS

    parser.add_argument("--config", default="default", help="recipe whose serve: section applies (default: default)")
    parser.add_argument("--run", help="serve this run's promoted chat stages (ppo, dpo, sft; the best is the default)")
    parser.add_argument("--model", help="serve one model: a stage folder, a run folder, a model folder, a hub id or "
                                        "embedded:... (default: the latest promoted chat model under --runs-dir)")
    parser.add_argument("--runs-dir", help="where runs live (default: the recipe's runs_dir)")
    parser.add_argument("--store", help="label store path or database URL for feedback and API keys (default: the "
                                        "run's labels.sqlite)")
    parser.add_argument("--allow-ungated", action="store_true",
                        help="serve a model whose gate did not pass, or that has no gate verdict")
    shortcuts = parser.add_argument_group("shortcuts for serve.* keys (they override the recipe)")
    shortcuts.add_argument("--host", help="serve.host: address to bind (127.0.0.1; any other needs API keys)")
    shortcuts.add_argument("--port", type=int, help="serve.port (8000)")
    shortcuts.add_argument("--engine", choices=ENGINES, help="serve.engine: transformers (dynamic batching, CPU or "
                                                             "GPU) or vllm (a GPU machine with vllm)")
    shortcuts.add_argument("--max-batch", type=int, help="serve.max_batch: rows (choices) decoding together (32)")
    shortcuts.add_argument("--max-tokens", type=int, help="serve.max_tokens: the most max_tokens a request may ask")
    shortcuts.add_argument("--default-max-tokens", type=int, help="serve.default_max_tokens: when a request gives none")
    shortcuts.add_argument("--max-request-bytes", type=int, help="serve.max_request_bytes: request body limit")
    shortcuts.add_argument("--filter-toxicity", dest="filter_threshold", type=float, metavar="T",
                           help="serve.filter_threshold: score every reply with the gates' toxicity scorer; above T "
                                "it is refused or flagged")
    shortcuts.add_argument("--filter-action", choices=FILTER_ACTIONS, help="serve.filter_action: refuse or flag")
    shortcuts.add_argument("--scorer", dest="filter_scorer", help="serve.filter_scorer (offline)")
    shortcuts.add_argument("--require-keys", action="store_true", default=None,
                           help="serve.require_keys: API keys on loopback too")
    shortcuts.add_argument("--rate-limit", type=float, metavar="N",
                           help="serve.rate_limit: requests per minute per API key (per address without keys)")
    shortcuts.add_argument("--log-requests", metavar="FILE",
                           help="serve.log_requests: append every prompt and reply to FILE (off by default)")
    shortcuts.add_argument("--keep-completions", choices=KEEP_COMPLETIONS,
                           help="serve.keep_completions: where completions wait for feedback (store)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--add-key", metavar="NAME", help="make an API key named NAME in the store, print it, exit")
    keys.add_argument("--list-keys", action="store_true", help="list the store's API keys (names, dates), exit")
    keys.add_argument("--revoke-key", metavar="NAME", help="revoke the API key NAME, exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. serve.port=8001")


def _keys_command(args, keys) -> int:
    import datetime

    if args.add_key:
        key = keys.add(args.add_key)
        print(f"API key {args.add_key!r} (shown once, keep it secret; the store keeps its hash only):\n{key}")
    elif args.revoke_key:
        keys.revoke(args.revoke_key)
        print(f"API key {args.revoke_key!r} revoked")
    else:
        for row in keys.list():
            made = datetime.datetime.fromtimestamp(row["created_at"]).isoformat(timespec="seconds")
            state = "active" if row["revoked_at"] is None else "revoked " + datetime.datetime.fromtimestamp(
                row["revoked_at"]).isoformat(timespec="seconds")
            print(f"{row['name']:<32} made {made}  {state}")
    return 0


@dataclass
class Serving:
    """What `serve` serves, resolved from the recipe and the flags: the service (models, store, access, filter,
    limits, logging, kept completions), its options and where to bind."""

    service: object
    options: object
    need_keys: bool

    def describe(self) -> str:
        service, options = self.service, self.options
        models = ", ".join(f"{m.id} ({m.chat_model.verdict})" for m in service.models.values())
        return (f"align serve: {models}; engine {options.engine}; feedback to {self.store_name}, completions kept "
                f"in {service.completions.where}; API keys {'required' if self.need_keys else 'off (loopback)'}; "
                f"output filter {service.filter.describe() if service.filter else 'off'}; prompt logging "
                f"{service.log_path or 'off'}; http://{options.host}:{options.port}/v1")

    @property
    def store_name(self) -> str:
        from align.ui.chat import store_name

        return store_name(self.service.store)


def prepare(args) -> Serving | int:
    """The recipe and flags resolved and checked, the models found, the store opened: a Serving (not yet loaded),
    or the exit code of a key command (--add-key, --list-keys, --revoke-key)."""
    from align.config import load_recipe
    from align.data.store import open_store
    from align.serving.access import Access, RateLimiter
    from align.serving.app import Limits, ServedModel, Service
    from align.serving.feedback import completions_keeper
    from align.serving.keys import ApiKeys
    from align.serving.options import FLAG_KEYS, requests_log, serve_options
    from align.serving.resolve import model_id, served_models
    from align.ui.access import is_loopback
    from align.ui.chat import default_store_path, store_name

    cfg = load_recipe(args.config, args.overrides, command="serve")
    options = serve_options(cfg, {key: getattr(args, key, None) for key in FLAG_KEYS})
    keys_command = args.add_key or args.list_keys or args.revoke_key
    if options.engine == "vllm" and not keys_command:
        from align.serving.vllm_engine import check_vllm

        check_vllm()
    runs_dir = args.runs_dir or cfg.runs_dir
    chat_models = served_models(run=args.run, model=args.model, runs_dir=runs_dir, allow_ungated=args.allow_ungated)
    store_location = args.store or default_store_path(chat_models[0], runs_dir)
    store = open_store(store_location)
    keys = ApiKeys(store)
    if keys_command:
        return _keys_command(args, keys)
    need_keys = options.require_keys or not is_loopback(options.host)
    if need_keys and not keys.active():
        raise AlignError(f"serving on {options.host} needs API keys and store {store_name(store)} has none: make one "
                         f"with `python -m align.run serve --store {store_location} --add-key NAME`")
    output_filter = None
    if options.filter_threshold is not None:
        from align.serving.moderation import OutputFilter

        output_filter = OutputFilter(options.filter_threshold, options.filter_action, options.filter_scorer)
        output_filter.load()
    models = {model_id(m): ServedModel(model_id(m), m, max_batch=options.max_batch, engine_name=options.engine)
              for m in chat_models}
    service = Service(models, store=store, access=Access(keys if need_keys else None, RateLimiter(options.rate_limit)),
                      output_filter=output_filter, log_requests=requests_log(options, chat_models[0].run_dir, runs_dir),
                      limits=Limits(options.max_request_bytes, options.max_tokens, options.default_max_tokens),
                      completions=completions_keeper(options.keep_completions, store, options.keep_max,
                                                     options.keep_days))
    return Serving(service, options, need_keys)


def main(args) -> int:
    from align.serving.app import build_app
    from align.serving.server import serve_forever

    serving = prepare(args)
    if isinstance(serving, int):
        return serving
    service = serving.service
    try:
        next(iter(service.models.values())).engine()  # load now, not on the first request
        print(serving.describe(), flush=True)
        serve_forever(build_app(service), serving.options.host, serving.options.port)
    finally:
        service.close()
    return 0
